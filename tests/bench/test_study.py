"""Tests of captum_jscopes.bench.study (the rules x reduction study) on synthetic
records: operators found, pairing with AttnLRP, the decomposition adding up, the
leave-one-out leader and the recommendation both ways, the command line; and the
queue of the study's runs (benchmarks/rules_reduction_runs.sh) against the committed folders."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from captum_jscopes.bench import study as S
from captum_jscopes.bench.faithfulness import build_parser, run_settings
from captum_jscopes.bench.methods import parse_methods

FAMILY = ("semantic", "semantic+lrp", "semantic+input", "semantic+lrp+input")


def records(n=40, seed=0, offsets=None, loo=None):
    """Per-prompt AOPC = a prompt effect + a method offset + noise, under three operators
    (token and mask shifted), and leave-one-out Spearmans = a method level + noise."""
    offsets = offsets or {"semantic": 0.2, "semantic+lrp": 0.0, "semantic+input": 0.1, "semantic+lrp+input": 0.05,
                          "grad_x_input": 0.1, "attnlrp": 0.05, "random": 0.9}
    loo = loo or {m: 0.4 for m in offsets}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = -1.0 + 0.3 * rng.standard_normal()
        methods = {}
        for m, off in offsets.items():
            value = base + off + (0 if m in ("attnlrp", "semantic+lrp+input") else 0.02 * rng.standard_normal())
            methods[m] = {"aopc": value, "time_s": 1.0,
                          "ablations": {"token": {"aopc": value - 0.5}, "mask": {"aopc": value + 0.5}},
                          "loo": {"spearman": loo[m] + 0.05 * rng.standard_normal()}}
        out.append({"id": str(i), "n_tokens": 20, "methods": methods})
    return out


def test_operators_pairs_and_decomposition_add_up():
    recs = records()
    s = S.study(recs, "run")
    assert s["operators"] == ["zero", "mask", "token"]
    assert s["families"] == ["semantic"]
    row = s["aopc"]["zero"]["semantic"]["vs_reference"]
    assert row["mean_difference"] == pytest.approx(np.mean(S.aopcs(recs, "semantic") - S.aopcs(recs, "attnlrp")))
    assert row["mean_difference"] > 0 and row["wilcoxon_p"] < 0.05  # AttnLRP more faithful than plain semantic
    for op in s["operators"]:
        steps = s["steps"][op]["semantic"]
        assert [x["step"] for x in steps] == ["rules", "reduction", "direction"]
        total = sum(x["mean_difference"] for x in steps)
        assert total == pytest.approx(s["aopc"][op]["semantic"]["vs_reference"]["mean_difference"])
    assert s["aopc"]["token"]["semantic"]["mean"] == pytest.approx(s["aopc"]["zero"]["semantic"]["mean"] - 0.5)


def test_recommendation_names_a_combination_only_where_it_holds_in_every_run():
    loo = {m: 0.4 for m in ("semantic", "semantic+lrp", "semantic+input", "semantic+lrp+input", "grad_x_input",
                            "attnlrp", "random")}
    loo["semantic+lrp"] = 0.6  # leads leave-one-out, and (offset 0.0 < 0.05) is not beaten on AOPC
    good = [S.study(records(seed=k, loo=loo), f"run {k}") for k in range(2)]
    advice = S.recommend(good, min_prompts=40)
    assert advice["method"] == "semantic+lrp"
    assert "Recommendation" in S.render_study(good, min_prompts=40)
    # with fewer prompts than asked for, nothing is named, and the provisional pick is said as such
    short = S.recommend(good)
    assert short["method"] is None and "too few prompts" in short["why"] and short["provisional"] == ["semantic+lrp"]
    # in a run where AttnLRP beats it on AOPC, nothing is named
    worse = dict(semantic=0.2, **{"semantic+lrp": 0.3}, **{"semantic+input": 0.1}, **{"semantic+lrp+input": 0.05},
                 grad_x_input=0.1, attnlrp=0.05, random=0.9)
    mixed = good + [S.study(records(seed=5, offsets=worse, loo=loo), "run 3")]
    advice = S.recommend(mixed, min_prompts=40)
    assert advice["method"] is None and "no combination" in advice["why"]
    assert [r["name"] for r in advice["per_run"]] == ["run 0", "run 1", "run 3"]
    assert "No single pick" in S.render_study(mixed, min_prompts=40)


def test_command_line_writes_markdown_and_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"benchmark": "faithfulness", "format": 1, "model": "m", "data": "d",
                                              "dtype": "float32", "seed": 0, "aopc_fractions": [0.05, 0.1, 0.2],
                                              "ablation": "zero"}))
    with open(run / "shard-000-of-001.jsonl", "w") as f:
        for r in records(n=12):
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "study.md"
    assert S.main(["--run", f"tiny={run}", "--out", str(out)]) == 0
    assert "## tiny (n = 12 prompts)" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())[0]["families"] == ["semantic"]
    # an extra run is reported after the others and left out of the recommendation
    worse = {"semantic": 0.2, "semantic+lrp": 0.3, "semantic+input": 0.1, "semantic+lrp+input": 0.05, "attnlrp": 0.05}
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text((run / "run.json").read_text())
    with open(other / "shard-000-of-001.jsonl", "w") as f:
        for r in records(n=12, seed=3, offsets=worse):
            f.write(json.dumps(r) + "\n")
    assert S.main(["--run", f"tiny={run}", "--extra-run", f"aside={other}", "--out", str(out), "--min-prompts", "12"]) == 0
    text, data = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert text.index("## tiny (n = 12 prompts)") < text.index("## aside (n = 12 prompts, not part of the recommendation)")
    assert [d["in_recommendation"] for d in data] == [True, False]
    # tiny alone names semantic+lrp; counting the aside run (where AttnLRP beats it) would name another
    assert text.splitlines()[2].startswith("**Recommendation:** `semantic+lrp` is not beaten")
    assert S.recommend([S.study(r, n) for n, r in S.runs_of([f"tiny={run}", f"aside={other}"])],
                       min_prompts=12)["method"] != "semantic+lrp"
    assert S.main([]) == 2
    assert "give at least one --run" in capsys.readouterr().err


def test_the_run_queue_resumes_every_committed_study_folder_with_its_stored_settings():
    # benchmarks/rules_reduction_runs.sh is how the study's runs resume: each command must ask exactly
    # the settings its folder's run.json holds (else the runner refuses it), and no folder may be left out
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "rules_reduction_runs.sh"
    lines = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, check=True,
                           cwd=root).stdout.splitlines()
    assert len(lines) == 10  # five per model
    asked = {}
    for line in lines:
        words = shlex.split(line)
        assert words[1:3] == ["bench", "faithfulness"], line
        args = build_parser().parse_args(words[3:])
        settings = run_settings(args, parse_methods(args.methods))
        assert asked.setdefault(args.out, settings) == settings, f"{args.out} asked with two settings"
    committed = {str(p.parent.relative_to(root)) for p in (root / "benchmarks" / "results").glob("*-variants*/run.json")
                 if "combined_from" not in json.loads(p.read_text())}
    assert committed, "no study folder committed"
    assert committed <= set(asked), f"not in the queue: {sorted(committed - set(asked))}"
    for folder in committed:
        assert json.loads((root / folder / "run.json").read_text()) == asked[folder], folder
