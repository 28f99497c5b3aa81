"""``jscopes attribute-dataset`` runs that go on: an empty or invalid entry of the source
is that prompt's error record (its reason and line) and the run goes on; a refused resume
names only the settings that differ; records.jsonl and summary.json cover every record
of the folder, whatever slices made them; the estimate is said before the first prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import WORDS, save_checkpoint

from captum_jscopes.cli.main import main
from captum_jscopes.runs.dataset import attribute_dataset, read_results, select_prompts
from captum_jscopes.runs.prompts import Prompt, load_prompts
from captum_jscopes.runs.runner import read_records, settings_difference

PLAIN = [w for w in WORDS if w.isalpha()]


def words(n: int, start: int = 0) -> str:
    return " ".join(PLAIN[(start + k) % len(PLAIN)] for k in range(n))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = main(["attribute-dataset", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_empty_or_invalid_entry_is_its_prompts_error_and_the_run_goes_on(model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join([
        json.dumps({"text": words(4)}),
        json.dumps({"text": "   "}),              # line 2: empty
        "",                                        # a blank line is no entry
        "{not json",                               # line 4
        json.dumps({"body": words(3)}),            # line 5: no text field
        json.dumps({"text": words(5, 3)}),
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli([source, "--model", model_dir, "--out", out, "--scope", "semantic"], capsys)
    assert code == 0, stderr
    records = read_records(out)
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"]  # ids: positions among the entries
    assert "results" in records[0] and "results" in records[4]
    assert records[1]["error"] == f"invalid prompt: {source}, line 2: empty text" and records[1]["invalid"] is True
    assert records[2]["error"].startswith(f"invalid prompt: {source}, line 4: not valid JSON")
    assert records[3]["error"] == f"invalid prompt: {source}, line 5: missing a string 'text' field"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_errors"] == 3 and summary["n_invalid"] == 3 and summary["n_prompts"] == 5
    assert "5 prompts computed, 0 resumed from an earlier run, 3 could not be explained (3 empty or invalid " \
           "entries of the source)" in stdout
    assert f"warning: 3 of 5 prompts could not be explained (first: prompt '1': invalid prompt: {source}, line 2" in stderr
    assert list(read_results(out)) == ["0", "4"]
    # a rerun resumes them all: the invalid ones are not retried
    code, stdout, _ = run_cli([source, "--model", model_dir, "--out", out, "--scope", "semantic"], capsys)
    assert code == 0 and "0 prompts computed, 5 resumed" in stdout


def test_a_source_without_any_prompt_is_still_a_usage_error(tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"body": "the cat"}) + "\n", encoding="utf-8")
    code, _, stderr = run_cli([source, "--model", tmp_path / "no-such-model", "--out", tmp_path / "out"], capsys)
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "line 1: empty text (and so is every other entry, 2 in all)" in stderr
    assert not (tmp_path / "out").exists()


def test_load_prompts_keeps_invalid_entries_only_when_asked(tmp_path):
    source = tmp_path / "p.json"
    source.write_text(json.dumps([{"text": "a"}, {"text": ""}, ["b"], {"text": "c", "id": "x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="entry 1: empty text"):
        load_prompts(source)
    kept = load_prompts(source, invalid="keep")
    assert [(p.id, p.text, p.error) for p in kept] == [
        ("0", "a", None), ("1", "", f"{source}, entry 1: empty text"),
        ("2", "", f"{source}, entry 2: expected an object with a 'text' field, got list"), ("x", "c", None)]
    assert [p.error is None for p in select_prompts(source, start=0, stop=2)] == [True, False]
    with pytest.raises(ValueError, match="entry 1: empty text .and so is every other entry, 2 in all."):
        select_prompts(source, start=1, stop=3)


def test_a_refused_resume_names_only_the_settings_that_differ(model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"text": words(4)}) + "\n", encoding="utf-8")
    common = [source, "--model", model_dir, "--out", tmp_path / "out", "--scope", "fisher"]
    assert run_cli([*common, "--fisher-estimator", "eig"], capsys)[0] == 0
    code, _, stderr = run_cli(common, capsys)  # the default estimator, krylov
    assert code == 1 and stderr.count("\n") == 1, stderr
    assert "run.json holds other settings than this run: fisher_estimator: eig (stored) vs krylov (asked); " \
           "use another --out, or pass --overwrite" in stderr
    assert "{" not in stderr  # not both settings whole
    code, _, stderr = run_cli([*common, "--fisher-estimator", "eig", "--chat", "--fisher-seed", "3"], capsys)
    assert "other settings than this run: chat: false (stored) vs true (asked); fisher_seed: 0 (stored) vs 3 " \
           "(asked); use" in stderr, stderr


def test_settings_difference_of_nested_settings():
    stored = {"model": "a", "settings": {"scopes": ["semantic"], "chat": False, "n": 3}}
    asked = {"model": "a", "settings": {"scopes": ["semantic", "fisher"], "chat": False, "k": None}}
    assert settings_difference(stored, asked) == (
        "scopes: semantic (stored) vs semantic, fisher (asked); n: 3 (stored) vs not set (asked); "
        "k: not set (stored) vs null (asked)")
    assert settings_difference({"a": {"x": 1}, "b": {"x": 2}}, {"a": {"x": 1}, "b": {"x": 3}}) == \
        "b.x: 2 (stored) vs 3 (asked)"  # a name that occurs twice: its path


def test_the_reports_cover_every_slice_run_into_the_folder(model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"text": words(3 + i, i)}) + "\n" for i in range(5)), encoding="utf-8")
    out = tmp_path / "out"
    common = [source, "--model", model_dir, "--out", out, "--scope", "semantic"]
    assert run_cli([*common, "--slice", "4:"], capsys)[0] == 0  # the later slice first
    code, stdout, stderr = run_cli([*common, "--slice", "0:3"], capsys)
    assert code == 0, stderr
    assert "3 prompts computed, 0 resumed from an earlier run" in stdout
    assert f"the reports hold all 4 prompts of {out}: 1 more from earlier runs" in stdout
    assert [r["id"] for r in read_records(out)] == ["0", "1", "2", "4"]  # the source's order
    summary = json.loads((out / "summary.json").read_text())
    assert [p["id"] for p in summary["prompts"]] == ["0", "1", "2", "4"] and summary["n_prompts"] == 4
    assert summary["computed"] == 3 and summary["resumed"] == 0
    assert sorted(p.name for p in (out / "pages").iterdir()) == ["0.html", "1.html", "2.html", "4.html"]


def test_a_list_of_prompts_orders_the_records_of_other_slices_by_number(model_dir, tmp_path):
    from captum_jscopes import load_model

    model, tokenizer = load_model(str(model_dir))
    prompts = [Prompt(str(i), words(3 + i, i)) for i in range(12)]
    out = tmp_path / "out"
    attribute_dataset(model, tokenizer, prompts[10:], out, scopes=("semantic",))
    summary = attribute_dataset(model, tokenizer, prompts[:3], out, scopes=("semantic",))
    assert [p["id"] for p in summary["prompts"]] == ["0", "1", "2", "10", "11"]  # 10 after 2, not after 1
    assert summary["computed"] == 3 and summary["n_prompts"] == 5


def test_the_estimate_is_said_before_the_first_prompt(model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    texts = [words(4), words(30, 2), words(5, 7)]
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    code, _, stderr = run_cli([source, "--model", model_dir, "--out", tmp_path / "out", "--scope", "semantic",
                               "--scope", "fisher", "--fisher-estimator", "eig"], capsys)
    assert code == 0, stderr
    lines = stderr.splitlines()
    estimate = next(i for i, line in enumerate(lines) if "on this machine" in line)
    first = next(i for i, line in enumerate(lines) if "1/3 prompts" in line)
    assert estimate < first
    assert lines[estimate].startswith("attribute-dataset: 3 prompts, about ")
    assert "(semantic " in lines[estimate] and "priced by passes measured at 5 to 31 tokens" in lines[estimate]
