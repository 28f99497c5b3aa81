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
        methods = {m: {"aopc": base + off + 0.05 * rng.standard_normal(), "time_s": TIMES.get(m, 1.0) * (1 + 0.01 * i),
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
    # named rivals get a row each (not again when already the strongest); unknown names are skipped
    named = V.verdict(recs, "toy", against=["feature_ablation", "ig50_token", "ig50_mean"])["rows"]
    assert [(r["scope"], r["baseline"]) for r in named if r["comparison"] == "named"] == [
        ("semantic", "feature_ablation"), ("fisher_eig1", "feature_ablation")]
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
    # the strongest baseline is also within the scope's budget: one row that says both, not two
    assert [(r["scope"], r["comparison"], r["baseline"]) for r in v["rows"]] == [
        ("semantic", "strongest, same budget", "grad_x_input")]
    assert v["loo"] == {} and v["loo_best"] is None  # no leave-one-out in these records


def test_a_scope_that_is_a_baseline_is_paired_with_the_next_one():
    # semantic+lrp+input IS attnlrp (the same scores): its rows take the next strongest baseline
    offsets = {"semantic": -0.10, "semantic+lrp+input": -0.30, "attnlrp": -0.30, "grad_x_input": -0.05, "random": 0.8}
    recs = records(n=30, offsets=offsets)
    for i, r in enumerate(recs):
        r["methods"]["semantic+lrp+input"] = dict(r["methods"]["attnlrp"])
        for m, e in r["methods"].items():
            e["time_s"] = 1.0
            e["loo"] = {"spearman": {"attnlrp": 0.6, "semantic+lrp+input": 0.6}.get(m, 0.4) + 0.01 * (i % 5)}
    v = V.verdict(recs, "same")
    pairs = {(r["scope"], r["baseline"]) for r in v["rows"]}
    assert pairs == {("semantic", "attnlrp"), ("semantic+lrp+input", "grad_x_input")}
    assert {(r["scope"], r["baseline"]) for r in v["loo_rows"]} == {("semantic", "attnlrp")}
    named = V.verdict(recs, "same", against=("attnlrp",))  # a named baseline is no pair for the scope that IS it
    assert ("semantic+lrp+input", "attnlrp") not in {(r["scope"], r["baseline"]) for r in named["rows"]}
    assert "`semantic+lrp+input` is `attnlrp`: it is paired with the next baseline." in V.render_verdict([v])


def test_leave_one_out_agreement_over_the_prompts_where_every_method_has_it():
    recs = records(n=30)
    rho = {"semantic": 0.5, "fisher_eig1": 0.6, "grad_x_input": 0.4, "saliency": 0.5, "ig50": 0.1,
           "ig50_token": 0.3, "feature_ablation": 1.0, "random": 0.0}
    for i, r in enumerate(recs[:20]):  # the first 20 prompts have leave-one-out
        for m, e in r["methods"].items():
            e["loo"] = {"spearman": rho[m] + 0.01 * (i % (3 if m == "feature_ablation" else 5))}
    del recs[3]["methods"]["ig50"]["loo"]  # one method without it on one prompt: that prompt is left out
    v = V.verdict(recs, "loo")
    agreement = v["loo"]
    assert list(agreement)[:2] == ["feature_ablation", "fisher_eig1"] and "random" not in agreement
    expected = np.mean([rho["fisher_eig1"] + 0.01 * (i % 5) for i in range(20) if i != 3])
    assert agreement["fisher_eig1"]["mean"] == pytest.approx(expected) and agreement["fisher_eig1"]["n"] == 19
    assert v["loo_best"] == {"method": "feature_ablation", "spearman_mean": pytest.approx(1.01, abs=0.01), "n": 19}
    # each scope against the baseline agreeing best (feature_ablation), paired, positive = the scope agrees better
    # (and against ig50_token, the strongest on AOPC in these records)
    assert {(r["scope"], r["comparison"], r["baseline"]) for r in v["loo_rows"]} == {
        (scope, comparison, base) for scope in ("semantic", "fisher_eig1")
        for comparison, base in (("best on leave-one-out", "feature_ablation"), ("strongest on AOPC", "ig50_token"))}
    rows = {r["scope"]: r for r in v["loo_rows"] if r["baseline"] == "feature_ablation"}
    kept = [r for i, r in enumerate(recs[:20]) if i != 3]
    diff = [r["methods"]["fisher_eig1"]["loo"]["spearman"] - r["methods"]["feature_ablation"]["loo"]["spearman"]
            for r in kept]
    assert rows["fisher_eig1"]["mean_difference"] == pytest.approx(np.mean(diff))
    low, high = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    assert (rows["fisher_eig1"]["ci_low"], rows["fisher_eig1"]["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert rows["fisher_eig1"]["share_better"] == 0
    text = V.render_verdict([v])
    assert "Spearman with the leave-one-out KL (19 prompts" in text and "`fisher_eig1` 0.6" in text
    assert f"| fisher_eig1 | best on leave-one-out | feature_ablation | {np.mean(diff):.3f} [" in text
    # a scope that agrees worse than a baseline is said at the top, with the AOPC losses
    assert text.index("`feature_ablation` agrees better than `fisher_eig1`") < text.index("## loo")


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
    assert V.main(["--run", f"toy={run}", "--against", "loo_magic"]) == 2
    assert "unknown method(s) loo_magic" in capsys.readouterr().err


def _write_run(folder, recs, **settings):
    folder.mkdir()
    meta = {"benchmark": "faithfulness", "model": "toy", "data": "opus_de_en", "methods": list(TIMES), **settings}
    (folder / "run.json").write_text(json.dumps(meta))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def test_runs_over_disjoint_prompt_ranges_are_pooled_into_one_verdict(tmp_path):
    recs = records(n=40)
    first = _write_run(tmp_path / "first", recs[:25])
    # the later range lacks a method: the pooled verdict pairs only what every prompt has
    later = [dict(r, methods={m: e for m, e in r["methods"].items() if m != "ig50_token"}) for r in recs[25:]]
    second = _write_run(tmp_path / "second", later)
    pooled = V.pooled_records([first, second])
    assert [r["id"] for r in pooled] == [r["id"] for r in recs]
    v = V.verdict(pooled, "pooled")
    assert v["n"] == 40 and "ig50_token" not in v["methods"] and "feature_ablation" in v["methods"]
    assert V.main(["--run", f"pooled={first}+{second}", "--out", str(tmp_path / "v.md")]) == 0
    assert "## pooled (n = 40 prompts)" in (tmp_path / "v.md").read_text()
    # the same prompt twice, or another model, is refused with a one-line reason
    with pytest.raises(ValueError, match="prompt 0 is in both"):
        V.pooled_records([first, first])
    other = _write_run(tmp_path / "other", recs[25:], model="another")
    with pytest.raises(ValueError, match="differ in model"):
        V.pooled_records([first, other])


def test_bins_keep_ties_together_and_still_split_the_rest():
    import numpy as np

    from captum_jscopes.bench.verdict import tie_aware_bins

    x = np.array([0.0] * 54 + list(range(1, 18)))  # most decisive tokens are the last one
    ranges = tie_aware_bins(x, 3)
    assert ranges[0] == (0.0, 0.0) and len(ranges) >= 2
    assert sum(((x >= lo) & (x <= hi)).sum() for lo, hi in ranges) == len(x)  # every value in one bin
    even = tie_aware_bins(np.arange(9.0), 3)
    assert even == [(0.0, 2.0), (3.0, 5.0), (6.0, 8.0)]
