"""Tests of captum_jscopes.bench.verdict on synthetic records: the paired statistics
against scipy directly, the choice of the strongest baseline, the warnings, the budget
picks and the per-prompt win analysis with its plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from captum_jscopes.bench import verdict as V

TIMES = {"semantic": 1.0, "fisher_eig1": 2.0, "grad_x_input": 1.1, "saliency": 1.0, "ig50": 50.0,
         "ig50_token": 55.0, "feature_ablation": 60.0, "random": 0.0}


def records(n=40, seed=0, offsets=None):
    """Per-prompt AOPCs = a shared prompt effect + a method offset + noise."""
    offsets = offsets or {"semantic": -0.10, "fisher_eig1": -0.12, "grad_x_input": -0.05, "saliency": -0.10,
                          "ig50": 0.2, "ig50_token": -0.20, "feature_ablation": -0.08, "random": 0.8}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = -1.0 + 0.3 * rng.standard_normal()
        methods = {m: {"aopc": base + off + 0.05 * rng.standard_normal(), "time_s": TIMES[m] * (1 + 0.01 * i),
                       "top_position": int(rng.integers(0, 10 + i))} for m, off in offsets.items()}
        out.append({"id": str(i), "n_tokens": 10 + i, "log_prob": float(np.log(rng.uniform(0.05, 0.95))),
                    "correct": True, "methods": methods})
    return out


def test_paired_stats_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(-1.0, 0.3, 50), rng.normal(-0.9, 0.3, 50)
    got = V.paired_stats(a, b)
    d = a - b
    assert got["n"] == 50
    assert got["mean_difference"] == pytest.approx(d.mean())
    assert got["sem"] == pytest.approx(stats.sem(d))
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert got["share_better"] == pytest.approx(np.mean(a < b))
    ci90 = stats.ttest_rel(a, b).confidence_interval(0.90)
    assert V.paired_stats(a, b, confidence=0.90)["ci_low"] == pytest.approx(ci90.low)
    assert math.isnan(V.paired_stats([1.0], [2.0])["ci_low"])  # one prompt: no interval


def test_strongest_baseline_overall_and_within_a_budget():
    recs = records()
    assert V.strongest_baseline(recs) == "ig50_token"
    # saliency is the Semantic Scope, never a rival; among the cheap ones grad_x_input is left
    assert V.strongest_baseline(recs, max_time=1.5) == "grad_x_input"
    assert V.strongest_baseline(recs, max_time=0.5) is None


def test_verdict_rows_warnings_and_picks():
    recs = records()
    v = V.verdict(recs, "toy")
    assert v["n"] == 40
    rows = {(r["scope"], r["comparison"]): r for r in v["rows"]}
    assert set(rows) == {("semantic", "strongest"), ("semantic", "same budget"),
                         ("fisher_eig1", "strongest"), ("fisher_eig1", "same budget")}
    strongest = rows[("semantic", "strongest")]
    assert strongest["baseline"] == "ig50_token"
    a = [r["methods"]["semantic"]["aopc"] for r in recs]
    b = [r["methods"]["ig50_token"]["aopc"] for r in recs]
    assert strongest["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert strongest["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert rows[("semantic", "same budget")]["baseline"] == "grad_x_input"
    # ig50_token is better than both scopes by ~0.1 on 40 prompts: flagged, and said first
    assert {(w["scope"], w["baseline"]) for w in v["baseline_wins"]} == {("semantic", "ig50_token"),
                                                                           ("fisher_eig1", "ig50_token")}
    text = V.render_verdict([v])
    assert text.index("A baseline beats a scope") < text.index("## toy (n = 40 prompts)")
    assert "`ig50_token` beats `semantic`" in text
    # budget picks: cheapest first, each better than all cheaper ones; random never
    picks = [p["method"] for p in v["picks"]]
    assert picks[0] in ("semantic", "saliency") and picks[-1] == "ig50_token" and "random" not in picks
    aopcs = [p["aopc_mean"] for p in v["picks"]]
    assert aopcs == sorted(aopcs, reverse=True)


def test_no_warning_when_the_scopes_win():
    offsets = {"semantic": -0.3, "grad_x_input": -0.05, "ig50": 0.1, "random": 0.8}
    v = V.verdict(records(offsets=offsets))
    assert v["baseline_wins"] == []
    assert "No baseline is significantly more faithful" in V.render_verdict([v])
    # the strongest baseline is also within the scope's budget: one row, not two
    assert [(r["scope"], r["baseline"]) for r in v["rows"]] == [("semantic", "grad_x_input")]


def test_win_analysis_and_plot(tmp_path):
    recs = records(n=60)
    # ig50_token wins on long prompts only; feature_ablation's top token is the decisive one
    for r in recs:
        r["methods"]["ig50_token"]["aopc"] = r["methods"]["fisher_eig1"]["aopc"] + (0.5 if r["n_tokens"] < 40 else -0.5)
    a = V.win_analysis(recs, "ig50_token", "fisher_eig1")
    assert a["n"] == 60 and a["win_share"] == pytest.approx(np.mean([r["n_tokens"] >= 40 for r in recs]))
    x = [r["n_tokens"] for r in recs]
    d = [p["difference"] for p in a["points"]]
    assert a["features"]["n_tokens"]["spearman"] == pytest.approx(stats.spearmanr(x, d)[0])
    bins = a["features"]["n_tokens"]["bins"]
    assert sum(b["n"] for b in bins) == 60 and bins[0]["win_share"] == 0 and bins[-1]["win_share"] == 1
    first = recs[0]
    assert a["points"][0]["decisive_distance"] == first["n_tokens"] - 1 - first["methods"]["feature_ablation"]["top_position"]
    assert a["points"][0]["confidence"] == pytest.approx(math.exp(first["log_prob"]))
    png = V.plot_wins(a, tmp_path / "wins.png")
    assert png.stat().st_size > 5000
    assert "more faithful on" in V.render_analysis(a)
    with pytest.raises(ValueError, match="no prompt has both"):
        V.win_analysis(recs, "ig50_mean", "fisher_eig1")


def test_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"benchmark": "faithfulness", "methods": list(TIMES)}))
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    out = tmp_path / "verdict.md"
    assert V.main(["--run", f"toy={run}", "--out", str(out), "--analysis", str(run)]) == 0
    assert "## toy (n = 40 prompts)" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())[0]["n"] == 40
    assert (run / "wins-ig50_token-vs-fisher_eig1.png").is_file()
    assert V.main(["--run", str(run)]) == 2 and "NAME=DIR" in capsys.readouterr().err


def test_bins_keep_ties_together_and_still_split_the_rest():
    import numpy as np

    from captum_jscopes.bench.verdict import tie_aware_bins

    x = np.array([0.0] * 54 + list(range(1, 18)))  # most decisive tokens are the last one
    ranges = tie_aware_bins(x, 3)
    assert ranges[0] == (0.0, 0.0) and len(ranges) >= 2
    assert sum(((x >= lo) & (x <= hi)).sum() for lo, hi in ranges) == len(x)  # every value in one bin
    even = tie_aware_bins(np.arange(9.0), 3)
    assert even == [(0.0, 2.0), (3.0, 5.0), (6.0, 8.0)]
