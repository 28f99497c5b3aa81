"""The verdict of the faithfulness benchmark: every scope against the strongest baseline.

For each run (a model on a prompt distribution; combined runs included, partial runs
read from their shards) :func:`verdict` pairs each Jacobian Scope, prompt by prompt,
with

- the strongest baseline of the run (the non-scope, non-random method with the most
  negative mean AOPC), and
- the strongest baseline that is no slower than the scope (mean attribution time at
  most :data:`SAME_BUDGET` times the scope's), the fair fight at equal cost,

and reports the paired AOPC difference (scope - baseline; negative = the scope is more
faithful) with its t confidence interval, the Wilcoxon signed-rank p and the share of
prompts on which the scope is better. :func:`budget_picks` lists what to use for which
budget (the methods no cheaper method beats), :func:`win_analysis` and
:func:`plot_wins` explain, prompt by prompt, where one method beats another (prompt
length, position of the decisive token, model confidence).

Command line::

    python -m captum_jscopes.bench.verdict --run "SmolLM2 / LAMBADA=benchmarks/results/DIR" ... \\
        --out benchmarks/results/verdict.md
    python -m captum_jscopes.bench.verdict --run "SmolLM2 / OPUS=DIR_0_168+DIR_169_499"  # prompt ranges pooled
    python -m captum_jscopes.bench.verdict --analysis DIR --method ig50_token --rival fisher_eig1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

from captum_jscopes.bench.methods import METHODS
from captum_jscopes.bench.combine import check_same_settings
from captum_jscopes.bench.report import finite_or_none, format_number, mean_sem, read_meta, read_run_records, wilcoxon_p

__all__ = ["paired_stats", "method_costs", "strongest_baseline", "verdict", "budget_picks", "render_verdict",
           "win_analysis", "plot_wins", "pooled_records", "loo_agreement", "loo_rows", "format_p", "runs_of",
           "write_report", "main"]

#: "no slower than the scope": a baseline's mean time at most this many times the scope's.
SAME_BUDGET = 1.5
#: Significance level of the warnings.
ALPHA = 0.05
#: Baselines that ARE a scope (not rivals), from the method table: saliency, the gradient
#: norm of the y* logit, is the Semantic Scope with target y* (equal deletion curves in every run).
SAME_AS_SCOPE = {name: m.same_as for name, m in METHODS.items() if m.same_as and not m.is_scope}


# ====================================================================== statistics
def paired_stats(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired comparison of per-prompt AOPCs ``a`` (a method) and ``b`` (a baseline).

    Returns:
        ``n``, ``mean_difference`` (mean of a - b; negative = a more faithful), ``sem``,
        ``ci_low``/``ci_high`` (Student t interval at ``confidence``), ``wilcoxon_p``
        (two-sided signed-rank) and ``share_better`` (share of prompts with a < b).
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, sem = mean_sem(diff.tolist())
    half = float(stats.t.ppf(0.5 + confidence / 2, diff.size - 1) * sem) if diff.size > 1 else float("nan")
    return {
        "n": int(diff.size),
        "mean_difference": mean,
        "sem": sem,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "confidence": confidence,
        "wilcoxon_p": wilcoxon_p(diff),
        "share_better": float(np.mean(diff < 0)) if diff.size else float("nan"),
    }


def _done(records: list[dict]) -> list[dict]:
    return [r for r in records if "methods" in r]


def _common_methods(records: list[dict]) -> list[str]:
    """Methods of the table present in every evaluated record, in table order."""
    done = _done(records)
    return [m for m in METHODS if done and all(m in r["methods"] for r in done)]


def _aopcs(records: list[dict], method: str) -> np.ndarray:
    return np.array([r["methods"][method]["aopc"] for r in _done(records)], dtype=float)


def method_costs(records: list[dict]) -> dict[str, float]:
    """Mean attribution wall time per prompt (seconds) of every common method."""
    return {m: float(np.mean([r["methods"][m]["time_s"] for r in _done(records)])) for m in _common_methods(records)}


def _baselines(methods: Sequence[str]) -> list[str]:
    return [m for m in methods if not METHODS[m].is_scope and METHODS[m].kind != "random"
            and m not in SAME_AS_SCOPE]


def strongest_baseline(records: list[dict], max_time: Optional[float] = None,
                       excluding: Sequence[Optional[str]] = ()) -> Optional[str]:
    """The baseline with the most negative mean AOPC (optionally among those whose mean
    time is at most ``max_time``, and not one of ``excluding``); None when there is none."""
    costs = method_costs(records)
    pool = [m for m in _baselines(list(costs)) if (max_time is None or costs[m] <= max_time) and m not in excluding]
    if not pool:
        return None
    return min(pool, key=lambda m: float(np.mean(_aopcs(records, m))))


# ====================================================================== the verdict of a run
def verdict(records: list[dict], name: str = "run", against: Sequence[str] = ()) -> dict:
    """Every scope of ``records`` against the strongest baseline, overall and at the scope's budget,
    and against each baseline named in ``against`` that the records have (e.g. the costly references).

    Returns:
        ``name``, ``n`` (prompts), ``methods`` (name -> AOPC mean, SEM, mean time),
        ``rows`` (one per scope and comparison: ``scope``, ``comparison`` ("strongest",
        "same budget", or "strongest, same budget" when the strongest baseline costs at most
        :data:`SAME_BUDGET` times the scope; "named" for those of ``against``), ``baseline`` and :func:`paired_stats`),
        ``baseline_wins`` (the rows where the baseline is significantly more faithful),
        ``picks`` (:func:`budget_picks`), ``loo`` (:func:`loo_agreement`), ``loo_rows``
        (:func:`loo_rows`) and ``loo_best``
        (the method agreeing best with leave-one-out, when the records have it).
    """
    done = _done(records)
    if not done:
        raise ValueError(f"{name}: no evaluated prompt")
    costs = method_costs(done)
    summary = {}
    for m in costs:
        mean, sem = mean_sem(_aopcs(done, m).tolist())
        summary[m] = {"aopc_mean": mean, "aopc_sem": sem, "time_mean_s": costs[m]}
    rows = []
    for scope in (m for m in costs if METHODS[m].is_scope):
        itself = (METHODS[scope].same_as,)  # a scope that IS a baseline is paired with the next one
        strongest = strongest_baseline(done, excluding=itself)
        at_budget = strongest_baseline(done, SAME_BUDGET * costs[scope], excluding=itself)
        if strongest == at_budget:  # the strongest baseline costs no more than the scope: one row says both
            pairs = [("strongest, same budget", strongest)]
        else:
            pairs = [("strongest", strongest), ("same budget", at_budget)]
        pairs += [("named", m) for m in against if m in costs and m not in (strongest, at_budget, *itself)]
        rows += [{"scope": scope, "comparison": comparison, "baseline": base,
                  **paired_stats(_aopcs(done, scope), _aopcs(done, base))} for comparison, base in pairs if base]
    wins = [r for r in rows if r["mean_difference"] > 0 and r["wilcoxon_p"] < ALPHA]
    loo = loo_agreement(done)
    return {
        "name": name,
        "n": len(done),
        "methods": summary,
        "rows": rows,
        "baseline_wins": wins,
        "picks": budget_picks(summary),
        "loo": loo,
        "loo_rows": loo_rows(done, loo),
        "loo_best": _loo_best(loo),
    }


def budget_picks(summary: dict[str, dict]) -> list[dict]:
    """What to use for which budget: the methods (random excluded) that are more faithful
    than every cheaper method, cheapest first (the cost / AOPC Pareto front)."""
    ranked = sorted((m for m in summary if METHODS[m].kind != "random"), key=lambda m: summary[m]["time_mean_s"])
    picks, best = [], math.inf
    for m in ranked:
        if summary[m]["aopc_mean"] < best:
            best = summary[m]["aopc_mean"]
            picks.append({"method": m, **summary[m]})
    return picks


def _loo_prompts(records: list[dict], methods: Sequence[str]) -> list[dict]:
    """The evaluated prompts where every one of ``methods`` has a leave-one-out Spearman."""
    return [r for r in _done(records)
            if methods and all(r["methods"][m].get("loo", {}).get("spearman") is not None for m in methods)]


def loo_agreement(records: list[dict]) -> dict[str, dict]:
    """Each method's mean Spearman with the leave-one-out KL (``mean``, ``sem``, ``n``
    prompts), best first, over the prompts where every method has one."""
    methods = [m for m in _common_methods(records) if METHODS[m].kind != "random"]
    prompts = _loo_prompts(records, methods)
    if not prompts:
        return {}
    out = {}
    for m in methods:
        mean, sem = mean_sem([r["methods"][m]["loo"]["spearman"] for r in prompts])
        out[m] = {"mean": mean, "sem": sem, "n": len(prompts)}
    return dict(sorted(out.items(), key=lambda item: -item[1]["mean"]))


def loo_rows(records: list[dict], agreement: dict[str, dict]) -> list[dict]:
    """Each scope against the baseline that agrees best with leave-one-out and against the
    strongest baseline on AOPC (when another), prompt by prompt: :func:`paired_stats` of the
    Spearman correlations with ``mean_difference`` = scope - baseline (positive = the scope
    agrees better) and ``share_better`` the share of prompts where the scope's is higher;
    ``comparison`` says which baseline it is."""
    baselines = _baselines(list(agreement))
    if not baselines:
        return []
    rivals = {"best on leave-one-out": max(baselines, key=lambda m: agreement[m]["mean"])}
    strongest = strongest_baseline(records)
    if strongest in agreement and strongest != rivals["best on leave-one-out"]:
        rivals["strongest on AOPC"] = strongest
    prompts = _loo_prompts(records, list(agreement))
    rows = []
    for scope in (m for m in agreement if METHODS[m].is_scope):
        for comparison, base in rivals.items():
            if base == METHODS[scope].same_as:  # the scope IS that baseline
                continue
            rho = {m: [r["methods"][m]["loo"]["spearman"] for r in prompts] for m in (scope, base)}
            # paired_stats counts "better" as lower: pass the baseline first and turn the difference round
            row = paired_stats(rho[base], rho[scope])
            row.update(mean_difference=-row["mean_difference"], ci_low=-row["ci_high"], ci_high=-row["ci_low"])
            rows.append({"scope": scope, "comparison": comparison, "baseline": base, **row})
    return rows


def _loo_best(agreement: dict[str, dict]) -> Optional[dict]:
    if not agreement:
        return None
    best, row = next(iter(agreement.items()))
    return {"method": best, "spearman_mean": row["mean"], "n": row["n"]}


# ====================================================================== rendering
def format_p(p: float) -> str:
    """A p-value for the reports: "< 1e-4", two significant digits, or "n/a"."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 1e-4" if p < 1e-4 else f"{p:.2g}"


def render_verdict(verdicts: Sequence[dict]) -> str:
    """Markdown: the warnings first (a baseline beating a scope), then one table per run
    and what to pick for which budget."""
    lines = ["# Verdict: each scope against the strongest baseline", ""]
    wins = [(v, r) for v in verdicts for r in v["baseline_wins"]]
    if wins:
        lines.append("**A baseline beats a scope (paired AOPC, Wilcoxon p < 0.05):**")
        lines.append("")
        lines += [f"- {v['name']} (n = {v['n']}): `{r['baseline']}` beats `{r['scope']}` by "
                  f"{format_number(r['mean_difference'])} AOPC (95% CI {format_number(r['ci_low'])} to "
                  f"{format_number(r['ci_high'])}, p = {format_p(r['wilcoxon_p'])}; the scope is better on "
                  f"{100 * r['share_better']:.0f}% of prompts)" for v, r in wins]
    else:
        lines.append("No baseline is significantly more faithful than any scope in these runs.")
    loo_losses = [(v, r) for v in verdicts for r in v.get("loo_rows", [])
                  if r["mean_difference"] < 0 and r["wilcoxon_p"] < ALPHA]
    if loo_losses:
        lines += ["", "**A baseline agrees better with leave-one-out than a scope (paired Spearman, Wilcoxon p < "
                  f"{ALPHA}):**", ""]
        lines += [f"- {v['name']} (n = {r['n']}): `{r['baseline']}` agrees better than `{r['scope']}` by "
                  f"{format_number(-r['mean_difference'])} (95% CI {format_number(-r['ci_high'])} to "
                  f"{format_number(-r['ci_low'])}, p = {format_p(r['wilcoxon_p'])}; the scope agrees better on "
                  f"{100 * r['share_better']:.0f}% of prompts)" for v, r in loo_losses]
    lines += ["", "Difference = scope AOPC - baseline AOPC per prompt (negative = the scope is more faithful), "
              "mean with its 95% t interval; Wilcoxon signed-rank p; share of prompts where the scope is better. "
              f"'same budget': the strongest baseline whose mean time is at most {SAME_BUDGET}x the scope's. "
              + " ".join(f"`{b}` is not a rival: it is the `{s}` scope." for b, s in SAME_AS_SCOPE.items())
              + "".join(f" `{m}` is `{METHODS[m].same_as}`: it is paired with the next baseline."
                        for m in sorted({r["scope"] for v in verdicts for r in v["rows"]}, key=list(METHODS).index)
                        if METHODS[m].same_as), ""]
    for v in verdicts:
        lines += [f"## {v['name']} (n = {v['n']} prompts)", "",
                  "| scope | vs | baseline | difference [95% CI] | Wilcoxon p | scope better on | n |",
                  "|---|---|---|---|---|---|---|"]
        for r in v["rows"]:
            lines.append(
                f"| {r['scope']} | {r['comparison']} | {r['baseline']} | {format_number(r['mean_difference'])} "
                f"[{format_number(r['ci_low'])}, {format_number(r['ci_high'])}] | {format_p(r['wilcoxon_p'])} | "
                f"{100 * r['share_better']:.0f}% | {r['n']} |")
        lines += ["", "What to pick for which budget (each is more faithful than every cheaper method; mean "
                  "attribution seconds per prompt on this run's machine):", ""]
        lines += [f"- up to {p['time_mean_s']:.3g} s: `{p['method']}` (AOPC {format_number(p['aopc_mean'])} "
                  f"+- {format_number(p['aopc_sem'])})" for p in v["picks"]]
        if v["loo_best"]:
            b = v["loo_best"]
            lines.append(f"- to agree with leave-one-out (Spearman, {b['n']} prompts): `{b['method']}` "
                         f"({format_number(b['spearman_mean'])})")
            lines += ["", f"Spearman with the leave-one-out KL ({b['n']} prompts, mean +- SEM, best first): "
                      + ", ".join(f"`{m}` {format_number(row['mean'])} +- {format_number(row['sem'])}"
                                  for m, row in v["loo"].items())]
        if v.get("loo_rows"):
            lines += ["", "| scope | vs | baseline | Spearman difference [95% CI] | Wilcoxon p | scope agrees "
                      "better on |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['scope']} | {r['comparison']} | {r['baseline']} | {format_number(r['mean_difference'])} "
                      f"[{format_number(r['ci_low'])}, {format_number(r['ci_high'])}] | {format_p(r['wilcoxon_p'])} | "
                      f"{100 * r['share_better']:.0f}% |" for r in v["loo_rows"]]
        lines.append("")
    return "\n".join(lines)


# ====================================================================== where a method wins
def _decisive_position(record: dict) -> Optional[int]:
    """The token whose removal matters most: the leave-one-out top (log p(y*) drop of
    feature_ablation, else the KL leave-one-out), when the record has one."""
    entry = record["methods"].get("feature_ablation", {})
    if "top_position" in entry:
        return entry["top_position"]
    return record.get("loo_top_position")


def win_analysis(records: list[dict], method: str = "ig50_token", rival: str = "fisher_eig1",
                 n_bins: int = 3) -> dict:
    """Where ``method`` beats ``rival``, prompt by prompt.

    Per prompt: ``difference`` = AOPC(method) - AOPC(rival) (negative = ``method`` wins),
    and three features: ``n_tokens`` (prompt length), ``decisive_distance`` (tokens between
    the decisive token, see :func:`_decisive_position`, and the explained position; None
    where unknown) and ``confidence`` (p(y*) on the intact prompt).

    Returns:
        ``method``, ``rival``, ``n``, ``win_share``, ``points`` (per-prompt dicts) and
        ``features``: name -> ``spearman`` (with the difference), ``spearman_p``, ``n`` and
        ``bins`` (``n_bins`` quantile bins: ``low``, ``high``, ``n``, ``win_share``,
        ``mean_difference``).
    """
    done = [r for r in _done(records) if method in r["methods"] and rival in r["methods"]]
    if not done:
        raise ValueError(f"no prompt has both {method!r} and {rival!r}")
    points = []
    for r in done:
        decisive = _decisive_position(r)
        points.append({
            "id": r.get("id"),
            "difference": r["methods"][method]["aopc"] - r["methods"][rival]["aopc"],
            "n_tokens": r["n_tokens"],
            "decisive_distance": None if decisive is None else r["n_tokens"] - 1 - decisive,
            "confidence": math.exp(r["log_prob"]),
        })
    features = {}
    for name in ("n_tokens", "decisive_distance", "confidence"):
        pts = [p for p in points if p[name] is not None]
        if len(pts) < 3:
            continue
        x = np.array([p[name] for p in pts], dtype=float)
        d = np.array([p["difference"] for p in pts])
        rho, p_value = stats.spearmanr(x, d) if np.ptp(x) > 0 else (float("nan"), float("nan"))
        bins = []
        for lo, hi in tie_aware_bins(x, n_bins):
            inside = (x >= lo) & (x <= hi)
            bins.append({"low": float(lo), "high": float(hi), "n": int(inside.sum()),
                         "win_share": float(np.mean(d[inside] < 0)), "mean_difference": float(d[inside].mean())})
        features[name] = {"spearman": float(rho), "spearman_p": float(p_value), "n": len(pts), "bins": bins}
    diffs = np.array([p["difference"] for p in points])
    return {"method": method, "rival": rival, "n": len(points), "win_share": float(np.mean(diffs < 0)),
            "points": points, "features": features}


def tie_aware_bins(x: np.ndarray, n_bins: int) -> list[tuple[float, float]]:
    """Inclusive (low, high) ranges of about ``len(x) / n_bins`` values each, in ascending order,
    never splitting equal values: quantile edges collapse when most values tie (e.g. the
    decisive token is the last one on most prompts), which would leave a single bin."""
    values, counts = np.unique(x, return_counts=True)
    target = len(x) / n_bins
    ranges, start, filled = [], 0, 0
    for i, count in enumerate(counts):
        filled += count
        if filled >= target or i == len(values) - 1:
            ranges.append((values[start], values[i]))
            start, filled = i + 1, 0
    return ranges


_FEATURE_LABELS = {
    "n_tokens": "prompt length (tokens)",
    "decisive_distance": "decisive token: tokens before the explained one",
    "confidence": "model confidence p(y*)",
}


def plot_wins(analysis: dict, path: Path, title: str = "") -> Path:
    """One panel per feature of :func:`win_analysis`: the per-prompt AOPC difference
    (negative = ``method`` wins) against the feature, and the win share per bin."""
    from matplotlib.figure import Figure

    features = analysis["features"]
    fig = Figure(figsize=(4.2 * max(1, len(features)), 3.8))
    for i, (name, feature) in enumerate(features.items()):
        ax = fig.add_subplot(1, max(1, len(features)), i + 1)
        pts = [p for p in analysis["points"] if p[name] is not None]
        x = np.array([p[name] for p in pts], dtype=float)
        d = np.array([p["difference"] for p in pts])
        ax.scatter(x, d, s=8, alpha=0.5, c=np.where(d < 0, "tab:red", "tab:blue"))
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel(_FEATURE_LABELS[name])
        if i == 0:
            ax.set_ylabel(f"AOPC {analysis['method']} - {analysis['rival']}")
        share = ax.twinx()
        centres = [(b["low"] + b["high"]) / 2 for b in feature["bins"]]
        share.plot(centres, [b["win_share"] for b in feature["bins"]], "k.-")
        share.set_ylim(0, 1)
        if i == len(features) - 1:
            share.set_ylabel(f"share of prompts {analysis['method']} wins (line)")
        ax.set_title(f"Spearman {feature['spearman']:.2f} (p = {format_p(feature['spearman_p'])})", fontsize=9)
    fig.suptitle(title or f"Where {analysis['method']} beats {analysis['rival']} (red), n = {analysis['n']}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def render_analysis(analysis: dict) -> str:
    """Markdown lines of a :func:`win_analysis`."""
    m, rival = analysis["method"], analysis["rival"]
    lines = [f"`{m}` against `{rival}`: `{m}` is more faithful on {100 * analysis['win_share']:.0f}% of "
             f"{analysis['n']} prompts.", "",
             "| feature | Spearman with AOPC difference (p) | n | win share of " + m + " per bin (range: share) |",
             "|---|---|---|---|"]
    for name, f in analysis["features"].items():
        bins = "; ".join(f"{b['low']:.3g}-{b['high']:.3g}: {100 * b['win_share']:.0f}% (n {b['n']})" for b in f["bins"])
        lines.append(f"| {_FEATURE_LABELS[name]} | {format_number(f['spearman'], 2)} ({format_p(f['spearman_p'])}) | "
                     f"{f['n']} | {bins} |")
    lines += ["", "A negative Spearman: the larger the feature, the more often the first method wins."]
    return "\n".join(lines)


# ====================================================================== command line
#: Settings the runs pooled into one verdict must share: the same model, prompt set and metric.
_POOLED_SETTINGS = ("benchmark", "format", "model", "data", "dtype", "seed", "aopc_fractions", "ablation")


def pooled_records(run_dirs: Sequence[Path]) -> list[dict]:
    """The records of one or more runs over DISJOINT prompts of the same model and prompt set
    (a long benchmark run in ranges, e.g. prompts 0-7, 8-168 and 169-499), in one list.

    The verdict then pairs the methods every record has. (Runs of different methods on the
    same prompts are joined with the runner's ``--combine`` instead.)

    Raises:
        ValueError: a folder that is no run, settings that differ, or a prompt in two runs.
    """
    metas = [read_meta(d) for d in run_dirs]  # a clear error for a folder that is no run
    check_same_settings(run_dirs, metas, _POOLED_SETTINGS, action="pooled")
    records: list[dict] = []
    owner: dict[str, Path] = {}
    for d in run_dirs:
        for record in read_run_records(d)[0]:
            if record["id"] in owner:
                raise ValueError(f"prompt {record['id']} is in both {owner[record['id']]} and {d}; pool runs of "
                                 "different prompts (join runs of different methods with --combine)")
            owner[record["id"]] = d
            records.append(record)
    return records


def runs_of(specs: Sequence[str]) -> list[tuple[str, list[dict]]]:
    """``["NAME=DIR[+DIR...]", ...]`` (the ``--run`` flags) -> ``(name, pooled records)`` per run;
    a one-line ValueError for a spec without ``=``."""
    runs = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise ValueError(f"--run wants NAME=DIR, got {spec!r}")
        runs.append((name, pooled_records([Path(f) for f in folder.split("+")])))
    return runs


def write_report(text: str, data: Any, out: Optional[str], what: str) -> None:
    """Print a report's Markdown and, with ``out``, write it there with its data as JSON beside it."""
    print(text)
    if out:
        path = Path(out)
        path.write_text(text + "\n", encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(finite_or_none(data), indent=1) + "\n")
        print(f"{what} written to {path} and {path.with_suffix('.json')}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``--run NAME=DIR`` (repeated) -> the verdict (``--out`` .md and .json);
    ``--analysis DIR`` -> the win analysis of ``--method`` against ``--rival`` (PNG and .md in DIR).
    Without either: the committed verdict of a source checkout, with where it is and how to make one."""
    from captum_jscopes.bench.common import RESULTS_ROOT

    parser = argparse.ArgumentParser(prog="python -m captum_jscopes.bench.verdict", description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR[+DIR...]",
                        help="a faithfulness run (partial runs are read from their shards); DIR+DIR pools "
                             "runs over disjoint prompts of the same model and prompt set")
    parser.add_argument("--out", default=None, help="verdict Markdown file (a .json beside it)")
    parser.add_argument("--against", default="", metavar="METHOD,METHOD",
                        help="also pair every scope with these baselines where a run has them (e.g. "
                             "feature_ablation,ig50_token)")
    parser.add_argument("--analysis", default=None, metavar="DIR", help="run folder of the win analysis")
    parser.add_argument("--method", default="ig50_token")
    parser.add_argument("--rival", default="fisher_eig1")
    args = parser.parse_args(argv)
    if not args.run and not args.analysis:
        committed = RESULTS_ROOT / "faithfulness-verdict.md"
        hint = f"make one with: {parser.prog} --run NAME=DIR [--run NAME=DIR ...] [--out FILE.md]"
        if not committed.is_file():  # e.g. an installed wheel: no benchmarks/results beside it
            print(f"verdict: no committed verdict here ({committed} does not exist); {hint}", file=sys.stderr)
            return 2
        print(committed.read_text(encoding="utf-8").rstrip("\n"))
        print(f"\n(the committed verdict: {committed}; {hint})", file=sys.stderr)
        return 0
    try:
        against = [m for m in args.against.split(",") if m]
        unknown = [m for m in against if m not in METHODS]
        if unknown:
            raise ValueError(f"--against: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if args.run:
            verdicts = [verdict(records, name, against) for name, records in runs_of(args.run)]
            write_report(render_verdict(verdicts), verdicts, args.out, "verdict")
        if args.analysis:
            folder = Path(args.analysis)
            analysis = win_analysis(pooled_records([folder]), args.method, args.rival)
            stem = f"wins-{args.method}-vs-{args.rival}"
            plot_wins(analysis, folder / f"{stem}.png")
            (folder / f"{stem}.md").write_text(render_analysis(analysis) + "\n", encoding="utf-8")
            print(render_analysis(analysis))
            print(f"win analysis written to {folder / (stem + '.md')} and {folder / (stem + '.png')}", file=sys.stderr)
    except ValueError as err:
        print(f"verdict: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
