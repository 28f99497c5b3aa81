"""Tests of the faithfulness benchmark (captum_jscopes.bench.faithfulness) on a tiny
Llama saved to a temporary folder and a handful of prompts made of its words."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import WORDS, assert_unchanged, make_model, make_tokenizer, snapshot

from captum_jscopes.bench import faithfulness as bench
from captum_jscopes.bench.methods import DEFAULT_METHODS, METHODS
from captum_jscopes.runs.prompts import prepare_prompt
from captum_jscopes.bench.combine import combine_runs
from captum_jscopes.bench.report import BENCH_CURVE_FRACTIONS, SCOPES, render_report, summarize
from captum_jscopes.bench.common import results_dir
from captum_jscopes.metrics import aopc

PROMPTS = [
    "the cat sat on the mat and the dog ran to the house",
    "Tom went home to the South and he liked the red food",
    "she was to Paris , the capital city of France , one two three four",
    "they ran to the big blue house and it was small",
    "the dog is red and the cat is blue , he liked the cat",
    "one two three four five six seven eight nine ten",
]
FAST = ["--dtype", "float32"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def write_prompts(path: Path, texts=PROMPTS) -> Path:
    path.write_text(json.dumps([{"text": t} for t in texts]), encoding="utf-8")
    return path


def run(tiny_model_dir, data, out, *extra) -> int:
    return bench.main(["--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), *FAST, *extra])


def aopc_table(report: str) -> dict[str, float]:
    """method -> AOPC mean, parsed from the first table of report.md."""
    section = report.split("## AOPC", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in METHODS:
            rows[cells[0]] = float(cells[1].split("±")[0])
    return rows


# ----------------------------------------------------------------------------- the whole run
def test_full_run_writes_every_record_and_the_report(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    out = tmp_path / "out"
    assert run(tiny_model_dir, data, out, "--n", "5", "--loo-n", "2") == 0

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"]
    for r in records:
        assert set(r["methods"]) == set(DEFAULT_METHODS)
        assert r["has_bos"] is True  # the tiny tokenizer adds <bos>
        for entry in r["methods"].values():
            assert len(entry["deltas"]) == 3 and len(entry["curve"]) == len(BENCH_CURVE_FRACTIONS)
            assert entry["curve"][0] == 0.0  # nothing deleted
            assert entry["time_s"] > 0
            assert ("loo" in entry) == (r["id"] in ("0", "1"))
            assert 1 <= entry["top_position"] < r["n_tokens"]  # BOS (position 0) is never ranked
        assert ("loo_top_position" in r) == (r["id"] in ("0", "1"))

    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    table = aopc_table(report)
    assert set(table) == set(DEFAULT_METHODS)
    for m, value in table.items():
        assert value == pytest.approx(summary["methods"][m]["aopc_mean"], abs=1e-3)
        mean = sum(r["methods"][m]["aopc"] for r in records) / len(records)
        assert summary["methods"][m]["aopc_mean"] == pytest.approx(mean)
    assert (out / "deletion_curves.png").stat().st_size > 1000
    assert (out / "aopc.png").stat().st_size > 1000
    assert set(summary["loo"]) == set(DEFAULT_METHODS) and summary["loo"]["semantic"]["n"] == 2
    assert "## Leave-one-out agreement (2 prompts)" in report
    assert "-1.298" in report  # the paper's Semantic AOPC on Llama-3.2-1B sits beside ours
    assert len(summary["paired"]) == len([m for m in SCOPES if m in DEFAULT_METHODS]) * 2
    assert summary["findings"] and all(isinstance(s, str) for s in summary["findings"])

    # --report-only rebuilds the same report from the records
    (out / "report.md").unlink()
    assert bench.main(["--report-only", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report


def test_resume_computes_only_the_missing_prompts(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    out = tmp_path / "out"
    methods = ["--methods", "semantic,random,grad_x_input"]
    assert run(tiny_model_dir, data, out, "--n", "2", *methods) == 0
    first = (out / "records.jsonl").read_text().splitlines()
    assert run(tiny_model_dir, data, out, "--n", "4", *methods) == 0
    second = (out / "records.jsonl").read_text().splitlines()
    assert len(second) == 4
    # wall-clock timings would differ had the first two prompts been computed again
    assert second[:2] == first
    shard_lines = sum(len(p.read_text().splitlines()) for p in out.glob("shard-*.jsonl"))
    assert shard_lines == 4
    assert json.loads((out / "summary.json").read_text())["n_prompts"] == 4


def test_interrupted_run_gives_a_partial_report_and_resumes(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    out = tmp_path / "out"
    assert run(tiny_model_dir, data, out, "--n", "4", "--methods", "random,saliency") == 0
    # what a crash during prompt 3 leaves: no merged file, a half-written last line
    (out / "records.jsonl").unlink()
    (shard,) = out.glob("shard-*.jsonl")
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][:25])

    assert bench.main(["--report-only", "--out", str(out)]) == 0
    assert "Partial report" in (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["n_prompts"] == 2

    assert run(tiny_model_dir, data, out, "--n", "4", "--methods", "random,saliency") == 0
    after = (out / "records.jsonl").read_text().splitlines(keepends=True)
    assert after[:2] == lines[:2] and len(after) == 4
    assert "Partial report" not in (out / "report.md").read_text()


def test_rerun_with_other_settings_is_refused(tiny_model_dir, tmp_path, capsys):
    data = write_prompts(tmp_path / "prompts.json")
    out = tmp_path / "out"
    assert run(tiny_model_dir, data, out, "--n", "2", "--methods", "random") == 0
    assert run(tiny_model_dir, data, out, "--n", "2", "--methods", "random", "--seed", "1") == 2
    assert "other settings" in capsys.readouterr().err
    assert run(tiny_model_dir, data, out, "--n", "2", "--methods", "random", "--seed", "1", "--overwrite") == 0


def test_records_match_a_direct_aopc(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    out = tmp_path / "out"
    assert run(tiny_model_dir, data, out, "--n", "1", "--methods", "temperature") == 0
    record = json.loads((out / "records.jsonl").read_text())
    model, tokenizer = bench.load_model(str(tiny_model_dir))
    prepared = prepare_prompt(tokenizer, PROMPTS[0])
    scores = METHODS["temperature"].scores(model, tokenizer, prepared.input_ids, record["target"])
    expected = aopc(model, prepared.input_ids, scores, tokenizer=tokenizer)
    assert record["target"] == expected.target
    assert record["methods"]["temperature"]["aopc"] == pytest.approx(expected.aopc, abs=1e-6)
    assert record["methods"]["temperature"]["deltas"] == pytest.approx(list(expected.deltas), abs=1e-6)
    assert record["n_rankable"] == expected.n_rankable == len(PROMPTS[0].split()) - 1


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_combined_runs_equal_one_run_of_all_their_methods(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    common = ["--n", "3", "--loo-n", "1"]
    assert run(tiny_model_dir, data, tmp_path / "a", *common, "--methods", "semantic,random") == 0
    assert run(tiny_model_dir, data, tmp_path / "b", *common, "--methods", "grad_x_input") == 0
    assert run(tiny_model_dir, data, tmp_path / "one", *common, "--methods", "semantic,grad_x_input,random") == 0
    combined = tmp_path / "combined"
    assert bench.main(["--combine", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(combined)]) == 0

    got, want = _records(combined), _records(tmp_path / "one")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):
        assert (g["target"], g["n_tokens"]) == (w["target"], w["n_tokens"])
        assert set(g["methods"]) == set(w["methods"])
        for m in w["methods"]:
            assert g["methods"][m]["aopc"] == pytest.approx(w["methods"][m]["aopc"], abs=1e-6)
            assert ("loo" in g["methods"][m]) == ("loo" in w["methods"][m])
    s_got = json.loads((combined / "summary.json").read_text())
    s_want = json.loads((tmp_path / "one" / "summary.json").read_text())
    # the paired test across the two runs' methods, which neither run has alone
    (pair,) = s_got["paired"]
    assert (pair["method"], pair["baseline"]) == ("semantic", "grad_x_input")
    assert pair["mean_difference"] == pytest.approx(s_want["paired"][0]["mean_difference"], abs=1e-6)
    assert s_got["loo"]["grad_x_input"]["n"] == 1
    meta = json.loads((combined / "run.json").read_text())
    assert meta["methods"] == ["semantic", "grad_x_input", "random"]
    assert [src["run"] for src in meta["combined_from"]] == ["a", "b"]
    report = (combined / "report.md").read_text()
    assert "Combined run" in report and "Partial report" not in report
    assert set(aopc_table(report)) == {"semantic", "grad_x_input", "random"}


def test_the_report_names_the_token_and_mean_baselines_of_the_tokenizer(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    assert run(tiny_model_dir, data, tmp_path / "ig", "--n", "2", "--methods", "ig50_token,ig50_mean") == 0
    assert run(tiny_model_dir, data, tmp_path / "sem", "--n", "2", "--methods", "semantic") == 0
    note = json.loads((tmp_path / "ig" / "ig_baselines.json").read_text())
    assert note["token"] == {"id": 0, "piece": "<pad>", "rule": "pad"}
    assert not (tmp_path / "sem" / "ig_baselines.json").exists()  # no such baseline in that run
    combined = tmp_path / "both"
    assert bench.main(["--combine", f"{tmp_path / 'sem'},{tmp_path / 'ig'}", "--out", str(combined)]) == 0
    for folder in (tmp_path / "ig", combined):
        report = (folder / "report.md").read_text()
        assert "the token baseline is `<pad>` (id 0, the tokenizer's pad token" in report
        assert "mean of the 64 x 16 input embedding matrix" in report
        assert "| mean attribution time (s) |" in report  # each method's cost per prompt
    summary = json.loads((combined / "summary.json").read_text())
    assert {p["baseline"] for p in summary["paired"]} == set()  # ig50/grad_x_input not in these runs
    assert summary["methods"]["ig50_mean"]["time_mean_s"] > 0


def test_combining_an_unfinished_run_covers_the_prompts_done_in_both(tiny_model_dir, tmp_path):
    data = write_prompts(tmp_path / "prompts.json")
    assert run(tiny_model_dir, data, tmp_path / "a", "--n", "4", "--methods", "random") == 0
    assert run(tiny_model_dir, data, tmp_path / "b", "--n", "4", "--methods", "saliency") == 0
    # b stopped after two prompts, in the middle of the third
    (tmp_path / "b" / "records.jsonl").unlink()
    (shard,) = (tmp_path / "b").glob("shard-*.jsonl")
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:2]) + lines[2][:20])
    summary = combine_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "c")
    assert summary["n_prompts"] == 2 and summary["partial"]
    assert [r["id"] for r in _records(tmp_path / "c")] == ["0", "1"]
    assert "Partial report: `b` has not finished" in (tmp_path / "c" / "report.md").read_text()


def test_combining_incompatible_runs_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    data = write_prompts(tmp_path / "prompts.json")
    assert run(tiny_model_dir, data, tmp_path / "a", "--n", "2", "--methods", "random") == 0
    assert run(tiny_model_dir, data, tmp_path / "b", "--n", "2", "--methods", "saliency") == 0
    assert run(tiny_model_dir, data, tmp_path / "seed1", "--n", "2", "--methods", "semantic", "--seed", "1") == 0
    assert run(tiny_model_dir, data, tmp_path / "again", "--n", "2", "--methods", "random,semantic") == 0
    cases = {
        "seed": [tmp_path / "a", tmp_path / "seed1"],
        "'random' is in both": [tmp_path / "a", tmp_path / "again"],
        "at least two runs": [tmp_path / "a"],
        "no benchmark run": [tmp_path / "a", tmp_path / "missing"],
    }
    for message, dirs in cases.items():
        with pytest.raises(ValueError, match=message):
            combine_runs(dirs, tmp_path / "c")
    with pytest.raises(ValueError, match="must differ"):
        combine_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "a")
    # records of another model / prompt: y* differs
    records = _records(tmp_path / "b")
    records[1]["target"] += 1
    (tmp_path / "b" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="prompt 1: the runs disagree"):
        combine_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "c")
    assert bench.main(["--combine", f"{tmp_path / 'a'},{tmp_path / 'b'}"]) == 2
    assert "--combine needs --out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input
def test_bad_dataset_file_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"words": "no text field"}]), encoding="utf-8")
    assert run(tiny_model_dir, bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "'text'" in err
    assert run(tiny_model_dir, tmp_path / "missing.json", tmp_path / "out") == 2
    assert "missing.json" in capsys.readouterr().err


def test_unknown_method_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    data = write_prompts(tmp_path / "prompts.json")
    assert run(tiny_model_dir, data, tmp_path / "out", "--methods", "semantic,lime") == 2
    err = capsys.readouterr().err
    assert "'lime'" in err and "grad_x_input" in err
    assert not (tmp_path / "out").exists()


def test_fewer_curve_fractions_keep_the_aopc(tiny_model_dir, tmp_path, capsys):
    data = write_prompts(tmp_path / "prompts.json")
    methods = ["--n", "2", "--methods", "semantic,random"]
    assert run(tiny_model_dir, data, tmp_path / "full", *methods) == 0
    assert run(tiny_model_dir, data, tmp_path / "short", *methods, "--curve-fractions", "0.2,0") == 0
    full, short = ([json.loads(line) for line in (tmp_path / name / "records.jsonl").read_text().splitlines()]
                   for name in ("full", "short"))
    assert json.loads((tmp_path / "short" / "run.json").read_text())["curve_fractions"] == [0.0, 0.2]
    for a, b in zip(full, short):
        for m in ("semantic", "random"):
            assert len(b["methods"][m]["curve"]) == 2 and b["methods"][m]["curve"][0] == 0.0
            assert b["methods"][m]["aopc"] == pytest.approx(a["methods"][m]["aopc"], abs=1e-6)
            assert b["methods"][m]["curve"][1] == pytest.approx(a["methods"][m]["deltas"][2], abs=1e-6)
    assert (tmp_path / "short" / "deletion_curves.png").exists()
    for bad in ("0,1.5", "0.1,0.1", "a,b"):
        assert run(tiny_model_dir, data, tmp_path / "bad", *methods, "--curve-fractions", bad) == 2
        assert "--curve-fractions" in capsys.readouterr().err


def test_report_only_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert bench.main(["--report-only", "--out", str(tmp_path / "nothing")]) == 2
    assert "no benchmark run" in capsys.readouterr().err


def launcher_commands() -> list[str]:
    """The torchrun/accelerate command lines of benchmarks/README.md and the module docstring."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "benchmarks" / "README.md").read_text() + (bench.__doc__ or "")
    text = text.replace("\\\n", " ").replace("`", "")  # join continued lines, drop markdown code marks
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return [line[line.index("torchrun"):] if "torchrun" in line else line[line.index("accelerate launch"):]
            for line in lines if "faithfulness.py" in line and ("torchrun" in line or "accelerate launch" in line)]


def test_documented_launcher_commands_parse():
    # torchrun's parser sees the script's arguments too: an ambiguous prefix of one of its own options
    # ("--n" of --nnodes, --nproc-per-node, ...) is an error before the script even starts
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed.run import get_args_parser

    commands = launcher_commands()
    assert {c.split()[0] for c in commands} == {"torchrun", "accelerate"}, commands
    for command in commands:
        words = command.split()
        if words[0] == "torchrun":
            launcher_args = get_args_parser().parse_args(words[1:])
        else:
            launcher_args = launch_command_parser().parse_args(words[2:])
        assert launcher_args.training_script.endswith("faithfulness.py")
        args = bench.build_parser().parse_args(launcher_args.training_script_args)
        assert args.n == 1000
    with pytest.raises(SystemExit):  # why the docs spell it --num-prompts
        get_args_parser().parse_args(["--nproc_per_node", "2", "benchmarks/faithfulness.py", "--n", "1000"])


def synthetic_records(n=30, seed=0):
    """semantic is better than grad_x_input by 0.1 on every prompt, plus noise."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        base = -1.0 + 0.1 * float(torch.randn(1, generator=g))
        aopcs = {"semantic": base - 0.1, "grad_x_input": base, "random": -0.2, "ig5": base + 0.3}
        methods = {
            m: {"aopc": v, "deltas": [v, v, v], "curve": [0.0] + [v] * 10, "time_s": 0.01} for m, v in aopcs.items()
        }
        records.append({"id": str(i), "n_tokens": 10, "n_rankable": 10, "has_bos": False, "target": 1,
                        "true_token": 1, "correct": i % 2 == 0, "log_prob": -1.0, "methods": methods, "time_s": 0.1})
    return records


def test_summary_statistics_and_findings():
    records = synthetic_records()
    meta = {"model": "toy", "methods": ["semantic", "grad_x_input", "random", "ig5"], "data": "x"}
    summary = summarize(records + [{"id": "99", "skipped": "passage too short"}], meta)
    assert summary["n_prompts"] == 30 and summary["n_skipped"] == 1
    assert summary["accuracy"] == pytest.approx(0.5)
    (pair,) = summary["paired"]
    assert (pair["method"], pair["baseline"]) == ("semantic", "grad_x_input")
    assert pair["mean_difference"] == pytest.approx(-0.1)
    assert pair["share_more_negative"] == 1.0 and pair["wilcoxon_p"] < 1e-5
    values = [r["methods"]["semantic"]["aopc"] for r in records]
    mean = sum(values) / len(values)
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    assert summary["methods"]["semantic"]["aopc_sem"] == pytest.approx(sem)
    # ordering semantic < grad_x_input < ig5 < random: the paper's Llama-3.2-1B column has the same order
    assert summary["paper"]["ours"] == ["semantic", "grad_x_input", "ig5", "random"]
    assert summary["paper"]["columns"]["Llama-3.2-1B"]["kendall_tau"] == pytest.approx(1.0)
    text = " ".join(summary["findings"])
    assert "semantic vs gradient x input: the paper has semantic more faithful on 3 of 4 models" in text
    assert "Every method beats random deletion" in text
    report = render_report(summary)
    assert re.search(r"\| semantic \| grad_x_input \| -0\.100 ± 0\.000 \|", report)


def test_summary_of_no_evaluated_prompt_is_an_error():
    with pytest.raises(ValueError, match="no evaluated prompt"):
        summarize([{"id": "0", "skipped": "short"}], {"methods": ["random"]})


def test_default_out_dir_uses_the_model_short_name():
    # under the current folder, never the committed benchmarks/results (tests/bench/test_runner.py)
    assert results_dir("faithfulness", None) == Path("jscopes-bench") / "faithfulness-smollm2-135m-instruct"
    assert results_dir("faithfulness", "smollm2").name == "faithfulness-smollm2-135m-instruct"
    assert results_dir("faithfulness", "meta-llama/Llama-3.2-1B/").name == "faithfulness-Llama-3.2-1B"


def test_prompt_words_are_in_the_tiny_vocabulary():
    vocab = set(WORDS)
    assert all(set(p.split()) <= vocab for p in PROMPTS)
