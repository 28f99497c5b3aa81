"""Attributing a whole dataset (captum_jscopes.runs.dataset and ``jscopes attribute-dataset``):
records that read back into the scopes' own scores, the target field, slices, bad input
as usage errors before the model loads, a SIGKILLed run resumed without losing or
repeating a prompt, two real processes sharing the prompts, other settings refused,
and the reports (summary, index, escaped pages)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import WORDS, assert_unchanged, snapshot

from captum_jscopes import SemanticScope, load_model
from captum_jscopes.runs.prompts import Prompt, load_prompts
from captum_jscopes.runs.runner import read_records
from captum_jscopes.cli.main import main
from captum_jscopes.runs.dataset import DatasetSettings, attribute_dataset, page_name, read_results, select_prompts
from captum_jscopes.runs.explain import explain
from captum_jscopes.scopes.registry import SCOPES

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAIN_WORDS = [w for w in WORDS if w.isalpha()]


def texts(n: int, length: int = 8) -> list[str]:
    """``n`` different prompts of known words (the test tokenizer maps others to <unk>)."""
    return [" ".join(PLAIN_WORDS[(7 * i + 3 * k) % len(PLAIN_WORDS)] for k in range(length + i % 4)) for i in range(n)]


def write_jsonl(path: Path, entries: list) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(model_dir):
    """The saved model, loaded the way the command loads it (same name in the metadata)."""
    return load_model(str(model_dir))


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = main(["attribute-dataset", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def shard_ids(out: Path) -> dict[str, list[str]]:
    return {
        shard.name: [json.loads(line)["id"] for line in shard.read_text(encoding="utf-8").splitlines()]
        for shard in sorted(out.glob("shard-*.jsonl"))
    }


def subprocess_env(tmp_path: Path) -> dict:
    # One thread per process (the machine is shared); no GPU, so that a launch uses gloo on the CPU.
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(tmp_path / "hf_home")}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "captum_jscopes", "attribute-dataset", *map(str, args)]


def predicted_id(model, ids: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(ids).logits[0, -1].argmax())


# ----------------------------------------------------------------------------- the records


def test_records_read_back_equal_the_scopes_own_scores(tiny, tmp_path):
    model, tokenizer = tiny
    prompts = texts(4)
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in prompts])
    out = tmp_path / "out"
    before = snapshot(model)
    summary = attribute_dataset(model, tokenizer, source, out, scopes=("temperature", "semantic"))
    assert_unchanged(model, before)

    results = read_results(out)
    assert list(results) == ["0", "1", "2", "3"]
    for (prompt_id, by_scope), text in zip(results.items(), prompts):
        assert list(by_scope) == ["semantic", "temperature"]  # the registry's order
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        predicted = predicted_id(model, ids)
        saved = by_scope["semantic"]
        assert saved.input_tokens == text.split() and saved.output_tokens == [tokenizer.decode([predicted])]
        alone = SemanticScope(model, tokenizer).attribute(ids, target=predicted)[0, 1:]  # BOS column dropped
        torch.testing.assert_close(saved.seq_attr, alone, rtol=1e-5, atol=1e-7)
        # bit for bit what `jscopes attribute` computes, metadata included
        for scope in by_scope:
            assert by_scope[scope] == explain(model, tokenizer, text, scope)

    assert summary == json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_prompts"] == 4 and summary["n_errors"] == 0 and summary["resumed"] == 0
    assert summary["settings"]["scopes"] == ["semantic", "temperature"]
    for entry, (prompt_id, by_scope) in zip(summary["prompts"], results.items()):
        best = int(by_scope["semantic"].seq_attr.argmax())
        # the summary shows readable text (the display field), not the raw piece
        assert entry["top_tokens"]["semantic"][0][:2] == [best, by_scope["semantic"].input_display[best]]
        assert entry["seconds"] == pytest.approx(sum(entry["seconds_per_scope"].values())) and entry["seconds"] > 0
    assert summary["seconds"]["per_prompt"] == pytest.approx(sum(e["seconds"] for e in summary["prompts"]) / 4)
    table = (out / "summary.md").read_text(encoding="utf-8")
    assert all(f"\n| {i} | " in table for i in results)
    index = (out / "index.html").read_text(encoding="utf-8")
    for i in results:
        assert f'href="pages/{i}.html"' in index
        page = (out / "pages" / f"{i}.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>") and "Semantic Scope" in page and "Temperature Scope" in page


@pytest.mark.parametrize("progress", [False, True])
def test_progress_bars_are_off_in_the_library_unless_asked(tiny, tmp_path, capsys, progress):
    model, tokenizer = tiny
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in texts(2)])
    attribute_dataset(model, tokenizer, source, tmp_path / "out", scopes="semantic", progress=progress)
    err = capsys.readouterr().err
    assert ("attribute-dataset" in err and "2/2" in err) == progress, err


def test_every_prompt_and_token_is_escaped_in_the_pages(tiny, tmp_path):
    model, tokenizer = tiny
    hostile_id, hostile_text = '<b id="x">&</b>', "the cat <script>alert(1)</script> sat on the"
    source = tmp_path / "prompts.json"
    source.write_text(json.dumps([{"id": hostile_id, "text": hostile_text}, {"id": "../up", "text": "the dog ran"}]))
    out = tmp_path / "out"
    attribute_dataset(model, tokenizer, source, out, scopes="semantic", keep_special=True)  # <unk> is shown too
    index = (out / "index.html").read_text(encoding="utf-8")
    pages = {name: (out / "pages" / name).read_text(encoding="utf-8") for name in map(page_name, (hostile_id, "../up"))}
    for text in (index, *pages.values()):
        assert "<script" not in text and "<b id" not in text
    assert "&lt;script&gt;" in index and "&lt;b id=&quot;x&quot;&gt;&amp;&lt;/b&gt;" in index
    assert sorted(p.name for p in (out / "pages").iterdir()) == sorted(pages)  # nothing written outside pages/
    assert not (out / "up.html").exists()


def test_target_field_is_explained_instead_of_the_prediction(model_dir, tiny, tmp_path, capsys):
    model, tokenizer = tiny
    prompts = texts(2)
    source = tmp_path / "prompts.json"
    source.write_text(json.dumps([{"body": prompts[0], "answer": "Paris"}, {"body": prompts[1], "answer": "big red house"}]))
    out = tmp_path / "out"
    argv = [source, "--model", model_dir, "--out", out, "--scope", "semantic", "--text-field", "body",
            "--target-field", "answer"]  # fmt: skip
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr

    results = read_results(out)
    one, several = results["0"]["semantic"], results["1"]["semantic"]
    assert one.output_tokens == ["Paris"] and one.metadata["no_target_given"] is False
    ids = tokenizer(prompts[0], return_tensors="pt")["input_ids"]
    paris = tokenizer.convert_tokens_to_ids("Paris")
    assert paris != predicted_id(model, ids)  # else this would not tell target from prediction
    alone = SemanticScope(model, tokenizer).attribute(ids, target=paris)[0, 1:]
    torch.testing.assert_close(one.seq_attr, alone, rtol=1e-5, atol=1e-7)
    assert several.output_tokens == ["big", "red", "house"] and several.token_attr.shape[0] == 3
    assert "-> 'Paris'" in stdout
    assert [r["target"] for r in read_records(out)] == ["Paris", "big red house"]


def test_slice_is_honoured_and_a_longer_slice_reuses_what_is_done(model_dir, tmp_path, capsys):
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in texts(8)])
    out = tmp_path / "out"
    common = [source, "--model", model_dir, "--out", out, "--scope", "semantic"]
    code, stdout, stderr = run_cli([*common, "--slice", "2:5"], capsys)
    assert code == 0, stderr
    assert [r["id"] for r in read_records(out)] == ["2", "3", "4"]
    assert "3 prompts computed, 0 resumed" in stdout
    first = (out / "shard-000-of-001.jsonl").read_bytes()

    code, stdout, stderr = run_cli([*common, "--slice", ":6"], capsys)
    assert code == 0, stderr
    assert [r["id"] for r in read_records(out)] == ["0", "1", "2", "3", "4", "5"]
    assert "3 prompts computed, 3 resumed" in stdout
    assert (out / "shard-000-of-001.jsonl").read_bytes().startswith(first)  # 2-4 kept as they were
    assert shard_ids(out)["shard-000-of-001.jsonl"] == ["2", "3", "4", "0", "1", "5"]


def test_select_prompts_reads_the_fields_and_the_slice(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "q": t, "a": " big"} for i, t in enumerate(texts(5))])
    settings = DatasetSettings(text_field="q", target_field="a")
    assert select_prompts(source, settings, start=1, stop=3) == [
        Prompt("q1", texts(5)[1], " big"),
        Prompt("q2", texts(5)[2], " big"),
    ]
    assert select_prompts(source, settings, start=3) == load_prompts(source, offset=3, text_field="q", target_field="a")
    given = [Prompt("x", "the cat"), Prompt("y", "a dog")]
    assert select_prompts(given, stop=1) == given[:1]
    with pytest.raises(ValueError, match="stop must be"):
        select_prompts(source, settings, start=2, stop=2)


def test_settings_are_checked_and_stored_in_one_order():
    settings = DatasetSettings(scopes=("fisher", "semantic", "fisher"))
    assert settings.scopes == ("semantic", "fisher")
    assert settings == DatasetSettings.of(scopes=["semantic", "fisher"])
    assert "fisher_estimator" not in settings.to_dict()  # the default: not stored, so runs of earlier versions resume
    chosen = DatasetSettings(scopes=("semantic", "fisher"), fisher_estimator="eig")
    assert chosen.to_dict()["fisher_estimator"] == "eig" and chosen.fisher_estimator == "eig"
    assert DatasetSettings(fisher_estimator="krylov") == DatasetSettings()  # a default given is no setting
    assert "fisher_estimator" not in DatasetSettings(scopes="semantic", fisher_estimator="eig").to_dict()  # irrelevant
    assert DatasetSettings(scopes="all") == DatasetSettings(scopes=("semantic", "all")) == DatasetSettings()
    with pytest.raises(ValueError, match="unknown scope 'integrated'"):
        DatasetSettings(scopes=("integrated",))
    with pytest.raises(ValueError, match="scopes is empty"):
        DatasetSettings(scopes=())
    with pytest.raises(ValueError, match="fisher_estimator"):
        DatasetSettings(fisher_estimator="fast")
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['scope'\]"):
        DatasetSettings.of(scope="semantic")


def test_the_former_fisher_method_keyword_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="fisher_estimator"):
        assert DatasetSettings(fisher_method="eig").fisher_estimator == "eig"
    with pytest.warns(DeprecationWarning, match="fisher_estimator"):
        chosen = DatasetSettings(fisher_estimator="deflated")
        assert DatasetSettings.of(chosen, fisher_method="exact") == DatasetSettings(fisher_estimator="exact")
    with pytest.raises(TypeError, match="not both"):
        DatasetSettings(fisher_estimator="exact", fisher_method="eig")


def test_the_command_has_a_flag_for_every_setting(capsys):
    """The flags are made from DatasetSettings' fields: a setting cannot lack one."""
    import dataclasses

    assert main(["attribute-dataset", "--help"]) == 0
    usage = capsys.readouterr().out
    for f in dataclasses.fields(DatasetSettings):
        if f.name == "scope_settings":  # one flag per option of each scope, from the scopes' Options
            assert all(f"--{name}-rules" in usage for name in SCOPES) and "--fisher-tol" in usage
            continue
        assert f.metadata["flag"] in usage and f.metadata["help"].split(";")[0][:30] in " ".join(usage.split())
    assert "--fisher-method" not in usage.split("options:")[1].split("--fisher-estimator")[0]  # hidden alias


def test_page_names_stay_in_their_folder_and_never_collide():
    assert page_name("17") == "17.html" and page_name("q-3.a") == "q-3.a.html"
    names = [page_name(i) for i in ("A", "a", "a/b", "a_b", "../x", "x", "<>", "")]
    assert len(set(names)) == len(names)
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content, extra, message",
    [
        # no entry is a prompt (one that is not is recorded as an error; tests/runs/test_dataset_errors.py)
        ('[{"text": "the cat"}, {"text": "a dog"}]', ["--text-field", "body"], "entry 0: missing a string 'body' field"),
        ('[{"text": "the cat"}]', ["--target-field", "answer"], "missing a string 'answer' field (the target)"),
        ('[{"text": "the cat", "answer": ""}]', ["--target-field", "answer"], "empty target"),
        ("[]", [], "holds no prompt"),
        ("", [], "not valid JSON"),
        ('[{"text": "the cat"}]', ["--slice", "5:2"], "argument --slice: expected 0 <= START < STOP"),
        ('[{"text": "the cat"}]', ["--slice", "a:b"], "argument --slice: expected START:STOP"),
        ('[{"text": "the cat"}]', ["--slice", "3"], "argument --slice: expected START:STOP"),
        ('[{"text": "the cat"}]', ["--slice", "1:"], "no prompt left after offset=1"),
        ('[{"text": "the cat"}]', ["--scope", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_input_is_a_usage_error_before_the_model_loads(content, extra, message, tmp_path, capsys):
    source = tmp_path / "prompts.json"
    source.write_text(content, encoding="utf-8")
    # A model folder that does not exist: loading it first would fail with another message and status 1.
    argv = [source, "--model", tmp_path / "no-such-model", "--out", tmp_path / "out", *extra]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2, stderr
    assert stderr.startswith("jscopes: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr and "does not exist" not in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, message", [("{tmp}/missing.jsonl", "not found"), ("hf:some/dataset", "pip install datasets")])
def test_a_missing_source_is_a_usage_error(source, message, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails, installed or not
    code, _, stderr = run_cli([source.format(tmp=tmp_path), "--model", tmp_path / "no-such-model"], capsys)
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr


def test_a_prompt_that_cannot_be_explained_is_recorded_not_retried(model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.json"
    source.write_text(json.dumps([{"text": "the cat sat", "t": "Paris"}, {"text": "a dog ran", "t": "zebra"}]))
    argv = [source, "--model", model_dir, "--out", tmp_path / "out", "--scope", "semantic", "--target-field", "t"]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 0
    assert "warning: 1 of 2 prompts could not be explained (first: prompt '1': InputError:" in stderr  # the target's own error type
    assert "zebra" in stderr
    records = read_records(tmp_path / "out")
    assert "results" in records[0] and "zebra" in records[1]["error"]
    assert list(read_results(tmp_path / "out")) == ["0"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_errors"] == 1 and "zebra" in summary["prompts"][1]["error"]

    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and "0 prompts computed, 2 resumed" in stdout


def test_any_failure_of_one_prompt_is_recorded_and_the_run_goes_on(model_dir, tiny, tmp_path, monkeypatch, capsys):
    """Not only the ValueErrors of bad prompts: an unexpected exception (as Captum 0.9
    raised on a predicted fragment of a character) is that prompt's error record."""
    from captum_jscopes.runs import dataset

    prompts = texts(3)

    def explain_or_fail(model, tokenizer, text, scope, target=None, **options):
        if text == prompts[1]:
            raise IndexError("index 1 is out of bounds for dimension 0 with size 1")
        return explain(model, tokenizer, text, scope, target, **options)

    monkeypatch.setattr(dataset, "explain", explain_or_fail)
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in prompts])
    code, stdout, stderr = run_cli([source, "--model", model_dir, "--out", tmp_path / "out", "--scope", "semantic"], capsys)
    assert code == 0, stderr
    assert "3 prompts computed, 0 resumed from an earlier run, 1 could not be explained" in stdout
    assert "warning: 1 of 3 prompts could not be explained (first: prompt '1': IndexError: index 1" in stderr
    records = read_records(tmp_path / "out")
    assert records[1]["error"].startswith("IndexError: ") and "results" in records[0] and "results" in records[2]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_errors"] == 1


def test_a_run_of_an_earlier_version_resumes(model_dir, tmp_path, capsys):
    """run.json written before the estimator's rename (settings key fisher_method)."""
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in texts(2)])
    out = tmp_path / "out"
    argv = [source, "--model", model_dir, "--out", out, "--scope", "fisher", "--fisher-estimator", "eig"]
    assert run_cli(argv, capsys)[0] == 0
    run_file = out / "run.json"
    meta = json.loads(run_file.read_text())
    meta["settings"]["fisher_method"] = meta["settings"].pop("fisher_estimator")
    run_file.write_text(json.dumps(meta))
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    assert "0 prompts computed, 2 resumed" in stdout
    assert json.loads(run_file.read_text())["settings"]["fisher_estimator"] == "eig"  # stored in today's form
    code, _, stderr = run_cli([*argv[:-1], "exact"], capsys)  # another estimator is still another run
    assert code == 1 and "run.json holds other settings" in stderr, stderr


# ----------------------------------------------------------------------------- reruns


def test_a_rerun_with_other_settings_or_another_source_is_refused(model_dir, tmp_path, capsys):
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in texts(3)])
    out = tmp_path / "out"
    common = [source, "--model", model_dir, "--out", out]
    assert run_cli([*common, "--scope", "semantic"], capsys)[0] == 0
    records = (out / "records.jsonl").read_bytes()

    code, _, stderr = run_cli([*common, "--scope", "temperature"], capsys)
    assert code == 1 and "run.json holds other settings" in stderr and stderr.count("\n") == 1, stderr
    # the way out named as the command spells it
    assert stderr.rstrip().endswith("use another --out, or pass --overwrite to discard the previous results"), stderr
    code, _, stderr = run_cli([*common, "--scope", "semantic", "--chat"], capsys)
    assert code == 1 and "run.json holds other settings" in stderr

    edited = write_jsonl(tmp_path / "edited.jsonl", [{"text": t} for t in texts(4)[::-1]])
    code, _, stderr = run_cli([edited, "--model", model_dir, "--out", out, "--scope", "semantic"], capsys)
    assert code == 1 and "another text or target" in stderr and "'0'" in stderr, stderr
    assert "--overwrite" in stderr and "overwrite=True" not in stderr
    assert (out / "records.jsonl").read_bytes() == records  # nothing of the refused runs was written

    code, _, stderr = run_cli([*common, "--scope", "temperature", "--overwrite"], capsys)
    assert code == 0, stderr
    assert set(next(iter(read_results(out).values()))) == {"temperature"}


@pytest.mark.slow  # starts and kills a process
def test_a_killed_run_resumes_without_losing_or_repeating_a_prompt(model_dir, tmp_path):
    n = 30
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in texts(n, length=24)])
    out = tmp_path / "out"
    shard = out / "shard-000-of-001.jsonl"
    # All scopes with the exact Fisher estimator: slow enough per prompt to be caught half-way.
    command = cli_command(source, "--model", model_dir, "--out", out, "--scope", "all", "--fisher-estimator", "exact")
    env = subprocess_env(tmp_path)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if shard.exists() and shard.read_bytes().count(b"\n") >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        else:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed:\n" + (tmp_path / "first.log").read_text()
    data = shard.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    kept = {r["id"]: r for r in map(json.loads, complete.splitlines())}
    assert 3 <= len(kept) < n
    assert not (out / "records.jsonl").exists()

    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{n - len(kept)} prompts computed, {len(kept)} resumed" in done.stdout
    records = read_records(out)
    assert [r["id"] for r in records] == [str(i) for i in range(n)]
    ids = shard_ids(out)["shard-000-of-001.jsonl"]
    assert len(ids) == len(set(ids)) == n  # nothing lost, nothing twice
    by_id = {r["id"]: r for r in records}
    assert all(by_id[i] == record for i, record in kept.items())  # not recomputed (their timings would differ)
    assert shard.read_bytes().startswith(complete)
    assert len(read_results(out)) == n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts two processes
def test_two_processes_share_the_prompts(model_dir, tiny, tmp_path):
    """torchrun -m captum_jscopes attribute-dataset: what docs/dataset.md tells users to run."""
    model, tokenizer = tiny
    n = 12
    prompts = texts(n)
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"text": t} for t in prompts])
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "captum_jscopes", "attribute-dataset", str(source), "--model", str(model_dir),
        "--scope", "semantic", "--out", str(out),
    ]  # fmt: skip
    # A session of its own, so that a hung launch can be killed with its workers.
    proc = subprocess.Popen(command, env=subprocess_env(tmp_path), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the two-process launch hung:\n" + proc.communicate()[0])
    assert proc.returncode == 0, output

    shards = shard_ids(out)
    assert sorted(shards) == ["shard-000-of-002.jsonl", "shard-001-of-002.jsonl"]
    first, second = shards.values()
    assert len(first) == len(second) == n // 2 and set(first).isdisjoint(second)
    assert sorted(first + second, key=int) == [str(i) for i in range(n)]
    results = read_results(out)
    assert list(results) == [str(i) for i in range(n)]
    for text, by_scope in zip(prompts, results.values()):
        torch.testing.assert_close(by_scope["semantic"].seq_attr, explain(model, tokenizer, text, "semantic").seq_attr)
    assert output.count("files written:") == 1  # only the main process reports
    assert json.loads((out / "summary.json").read_text())["n_prompts"] == n


def test_run_json_of_earlier_versions_is_read_in_todays_form():
    """Earlier versions stored the Fisher estimator whenever the Fisher Scope ran (its
    default too), under its former name before that; today only what differs from a
    scope's default is stored."""
    today = DatasetSettings(scopes="fisher").to_dict()
    for stored in ({"fisher_estimator": "krylov"}, {"fisher_method": "krylov"}):
        assert DatasetSettings.upgrade_dict({**today, **stored}) == today
    chosen = DatasetSettings(scopes="fisher", fisher_estimator="eig", fisher_k=3).to_dict()  # (eig takes no tol)
    assert DatasetSettings.upgrade_dict({**today, "fisher_method": "eig", "fisher_k": 3}) == chosen
    bad = {**today, "fisher_estimator": "fast"}
    assert DatasetSettings.upgrade_dict(bad) == bad  # unreadable: left as it is, so it differs from any run
