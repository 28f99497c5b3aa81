"""Summary, Markdown report and plots of faithfulness benchmark runs.

:mod:`captum_jscopes.bench.faithfulness` computes one record per prompt (a method's
AOPC, deltas, deletion curve and leave-one-out agreement); this module turns the
records of a run into the numbers of the report (:func:`summarize`: mean +- SEM,
paired Wilcoxon tests, the comparison with the paper's published numbers) and writes
``summary.json``, ``report.md``, ``deletion_curves.png`` and ``aopc.png``
(:func:`write_report`). Runs of different methods on the same prompts are joined
by :func:`captum_jscopes.bench.combine.combine_runs`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

from captum_jscopes.metrics import AOPC_FRACTIONS
from captum_jscopes.bench.methods import METHODS
from captum_jscopes.bench.paper import PAPER_AOPC, PAPER_AOPC_NAMES, PAPER_LOO, PAPER_MODELS
from captum_jscopes.runs.runner import RECORDS_FILE, read_records, read_shard_records

__all__ = [
    "summarize", "render_report", "write_report", "finite_or_none", "format_number", "mean_sem", "wilcoxon_p",
    "read_meta", "read_run_records",
]

# ====================================================================== constants
#: The side file of a run saying what the token and mean IG baselines were (written at its start).
IG_BASELINES_FILE = "ig_baselines.json"

#: Baselines every scope of a run is compared with, prompt by prompt.
PAIRED_BASELINES = ("ig50", "grad_x_input")

#: The benchmark's deletion-curve fractions, plotted in deletion_curves.png:
#: 0, 0.05, ..., 0.5 (finer and shorter than the metrics' default 0, 0.1, ..., 1,
#: because past half the prompt every method's curve has collapsed).
BENCH_CURVE_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(11))
#: The scopes of the method table, in table order (drawn solid, compared pairwise).
SCOPES = tuple(name for name, m in METHODS.items() if m.is_scope)


def finite_or_none(value: Any) -> Any:
    """NaN/inf -> None, recursively: records and summary.json stay standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


# ====================================================================== statistics
def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN for the SEM of fewer than 2 values)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    sem = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), sem


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; NaN when undefined (n < 2, all zero)."""
    if differences.size < 2 or not np.any(differences != 0):
        return float("nan")
    try:
        return float(stats.wilcoxon(differences).pvalue)
    except ValueError:
        return float("nan")


def _paired(records: list[dict], method: str, baseline: str) -> dict:
    """Per-prompt comparison of two methods' AOPC (negative difference = method more faithful)."""
    a = np.array([r["methods"][method]["aopc"] for r in records])
    b = np.array([r["methods"][baseline]["aopc"] for r in records])
    diff = a - b
    mean, sem = mean_sem(diff.tolist())
    return {
        "method": method,
        "baseline": baseline,
        "n": int(diff.size),
        "mean_difference": mean,
        "sem": sem,
        "wilcoxon_p": wilcoxon_p(diff),
        "share_more_negative": float(np.mean(diff < 0)) if diff.size else float("nan"),
    }


def _method_summary(records: list[dict], method: str) -> dict:
    entries = [r["methods"][method] for r in records]
    aopc_mean, aopc_sem = mean_sem([e["aopc"] for e in entries])
    deltas = np.array([e["deltas"] for e in entries], dtype=float).reshape(len(entries), -1)
    curve = np.array([e["curve"] for e in entries], dtype=float).reshape(len(entries), -1)
    correct = [r["methods"][method]["aopc"] for r in records if r["correct"]]
    times = [e["time_s"] for e in entries]
    cpu = [e.get("cpu_s", float("nan")) for e in entries]
    return {
        "label": METHODS[method].label,
        "n": len(entries),
        "aopc_mean": aopc_mean,
        "aopc_sem": aopc_sem,
        "aopc_mean_correct": mean_sem(correct)[0],
        "deltas_mean": [mean_sem(col.tolist())[0] for col in deltas.T],
        "deltas_sem": [mean_sem(col.tolist())[1] for col in deltas.T],
        "curve_mean": [mean_sem(col.tolist())[0] for col in curve.T],
        "curve_sem": [mean_sem(col.tolist())[1] for col in curve.T],
        "time_mean_s": float(np.mean(times)),
        "time_median_s": float(np.median(times)),
        "cpu_mean_s": float(np.mean(cpu)),
    }


def _loo_summary(records: list[dict], method: str) -> Optional[dict]:
    entries = [r["methods"][method]["loo"] for r in records if "loo" in r["methods"][method]]
    if not entries:
        return None
    out: dict[str, Any] = {"n": len(entries)}
    for key in ("spearman", "kendall", "top1_percentile", "top_jaccard"):
        out[f"{key}_mean"], out[f"{key}_sem"] = mean_sem([e[key] for e in entries])
    out["top_fraction"] = entries[0]["top_fraction"]
    return out


# ====================================================================== summary
def summarize(records: list[dict], meta: dict) -> dict:
    """Aggregate the per-prompt records of a run into the numbers of the report.

    Args:
        records: records as written by :func:`evaluate_prompt` (plus ``"id"``).
        meta: the run's settings (``run.json``): ``methods``, ``aopc_fractions``,
            ``curve_fractions``, ``model``, ``data``, ...
    Returns:
        dict with ``meta``, ``n_prompts``, ``n_skipped``, ``accuracy``,
        ``mean_tokens``, ``has_bos``, ``methods`` (name -> AOPC, deltas, curve,
        times), ``paired`` (list), ``loo`` (name -> agreement or missing),
        ``paper`` (ordering comparison) and ``findings`` (sentences).
    """
    done = [r for r in records if "methods" in r]
    if not done:
        raise ValueError("no evaluated prompt in the records (all skipped, or none written yet)")
    methods = [m for m in METHODS if m in meta.get("methods", METHODS) and all(m in r["methods"] for r in done)]
    summary: dict[str, Any] = {
        "meta": meta,
        "n_prompts": len(done),
        "n_skipped": len(records) - len(done),
        "accuracy": float(np.mean([r["correct"] for r in done])),
        "mean_tokens": float(np.mean([r["n_tokens"] for r in done])),
        "has_bos": bool(done[0]["has_bos"]),
        "mean_prompt_time_s": float(np.mean([r["time_s"] for r in done])),
        "mean_prompt_cpu_s": float(np.mean([r.get("cpu_s", float("nan")) for r in done])),
        "methods": {m: _method_summary(done, m) for m in methods},
        "paired": [
            _paired(done, scope, base)
            for scope in SCOPES
            for base in PAIRED_BASELINES
            if scope in methods and base in methods
        ],
        "loo": {m: s for m in methods if (s := _loo_summary(done, m)) is not None},
    }
    loo_times = [r["loo_time_s"] for r in done if "loo_time_s" in r]
    if loo_times:
        summary["mean_loo_time_s"] = float(np.mean(loo_times))
    summary["paper"] = _paper_comparison(summary)
    summary["findings"] = _findings(summary)
    return summary


def _ordering(values: dict[str, float]) -> list[str]:
    """Method names from most to least faithful (most negative AOPC first)."""
    return sorted(values, key=lambda m: values[m])


def _paper_comparison(summary: dict) -> dict:
    """Our AOPC ordering of the paper's methods against each published column (Kendall tau)."""
    ours = {m: s["aopc_mean"] for m, s in summary["methods"].items() if m in PAPER_AOPC}
    columns = {}
    for i, model in enumerate(PAPER_MODELS):
        paper = {m: PAPER_AOPC[m][i] for m in ours}
        tau = float("nan")
        if len(ours) >= 2:
            with np.errstate(all="ignore"):
                tau = float(stats.kendalltau([ours[m] for m in ours], [paper[m] for m in ours])[0])
        columns[model] = {"ordering": _ordering(paper), "kendall_tau": tau}
    return {"methods": list(ours), "ours": _ordering(ours), "columns": columns}


# ---------------------------------------------------------------------- findings
def _verdict(paper_says_better: int, diff: float, p: float) -> str:
    """How our paired difference relates to the paper's direction (better in k of 4 columns)."""
    ours_better = diff < 0
    significant = math.isfinite(p) and p < 0.05
    paper_better = paper_says_better >= 3
    paper_worse = paper_says_better <= 1
    if not (paper_better or paper_worse):
        return "the paper is split on this pair"
    same = ours_better == paper_better
    if same:
        return "agrees with the paper" + ("" if significant else " in direction, but not significantly (p >= 0.05)")
    return "DISAGREES with the paper" + (" (significant, p < 0.05)" if significant else ", though not significantly")


def format_number(x: Optional[float], digits: int = 3) -> str:
    """A number for a report: fixed digits, "n/a" for None, NaN or inf."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _findings(summary: dict) -> list[str]:
    """Plain sentences generated from the numbers: where our results agree with the paper's."""
    methods = summary["methods"]
    out = []
    comparison = summary["paper"]
    if len(comparison["methods"]) >= 2:
        ours = " < ".join(f"{m} ({format_number(methods[m]['aopc_mean'])})" for m in comparison["ours"])
        out.append(f"Our AOPC ordering of the paper's methods, most faithful first: {ours}.")
        taus = ", ".join(f"{model} {format_number(c['kendall_tau'], 2)}" for model, c in comparison["columns"].items())
        out.append(
            f"Kendall tau between this ordering and each published column (1 = same order, -1 = reversed): {taus}."
        )
        best = comparison["ours"][0]
        paper_best = {model: c["ordering"][0] for model, c in comparison["columns"].items()}
        n_same = sum(b == best for b in paper_best.values())
        out.append(
            f"The most faithful of these methods here is {best}; the paper's best (among the same methods) is "
            + ", ".join(f"{b} on {model}" for model, b in paper_best.items())
            + f" ({n_same} of {len(paper_best)} columns agree)."
        )
    by_pair = {(p["method"], p["baseline"]): p for p in summary["paired"]}
    for scope in SCOPES:
        pair = by_pair.get((scope, "grad_x_input"))
        if pair is None or scope not in PAPER_AOPC:
            continue
        k = sum(s < g for s, g in zip(PAPER_AOPC[scope], PAPER_AOPC["grad_x_input"]))
        out.append(
            f"{scope} vs gradient x input: the paper has {scope} more faithful on {k} of 4 models; here the mean "
            f"AOPC difference is {format_number(pair['mean_difference'])} +- {format_number(pair['sem'])} (Wilcoxon "
            f"p = {format_number(pair['wilcoxon_p'], 3)}, {scope} more negative on {100 * pair['share_more_negative']:.0f}% "
            f"of prompts): {_verdict(k, pair['mean_difference'], pair['wilcoxon_p'])}."
        )
    for scope in SCOPES:
        pair = by_pair.get((scope, "ig50"))
        if pair is not None:
            better = "more" if pair["mean_difference"] < 0 else "less"
            out.append(
                f"{scope} is {better} faithful than Captum's 50-step Integrated Gradients (not in the paper): "
                f"{format_number(pair['mean_difference'])} +- {format_number(pair['sem'])}, p = {format_number(pair['wilcoxon_p'], 3)}."
            )
    if "ig5" in methods and "ig50" in methods:
        out.append(
            f"Integrated Gradients with 5 steps (the paper's, weak) gives AOPC {format_number(methods['ig5']['aopc_mean'])}, "
            f"with 50 steps {format_number(methods['ig50']['aopc_mean'])}."
        )
    if "random" in methods:
        worse = [m for m in methods if m != "random" and methods[m]["aopc_mean"] >= methods["random"]["aopc_mean"]]
        out.append(
            "Every method beats random deletion, as in the paper."
            if not worse
            else f"Not better than random here (unlike the paper): {', '.join(worse)}."
        )
    for name, same in ((m, METHODS[m].same_as) for m in methods if METHODS[m].same_as in methods):
        gap = max(abs(a - b) for a, b in zip(methods[same]["curve_mean"], methods[name]["curve_mean"]))
        out.append(
            f"{METHODS[name].label} is mathematically the method `{same}` ({METHODS[same].label}); "
            f"their mean deletion curves differ by at most {gap:.1e} (float rounding and ties)."
        )
    out.extend(_loo_findings(summary))
    out.append(
        f"Caveat: the paper's models are 1-3B parameters; this run uses {summary['meta'].get('model')}, so "
        "absolute AOPC values are not comparable, only orderings and signs of differences."
    )
    return out


def _loo_findings(summary: dict) -> list[str]:
    loo = summary["loo"]
    shared = [m for m in PAPER_LOO if m in loo and loo[m]["spearman_mean"] is not None]
    shared = [m for m in shared if math.isfinite(loo[m]["spearman_mean"])]
    if len(shared) < 2:
        return []
    ours = sorted(shared, key=lambda m: -loo[m]["spearman_mean"])
    paper = sorted(shared, key=lambda m: -PAPER_LOO[m][2])
    with np.errstate(all="ignore"):
        tau = float(stats.kendalltau([loo[m]["spearman_mean"] for m in shared], [PAPER_LOO[m][2] for m in shared])[0])
    n = next(iter(loo.values()))["n"]
    return [
        f"LOO agreement (Spearman, {n} prompts), best first: here {' > '.join(ours)}; the paper (Llama-3.2-1B, "
        f"its Fisher row is k=4 and its IG 10 steps) {' > '.join(paper)}; Kendall tau {format_number(tau, 2)}."
    ]


# ====================================================================== report
def render_report(summary: dict) -> str:
    """The Markdown report of a summary (see :func:`summarize`)."""
    meta, methods = summary["meta"], summary["methods"]
    fractions = meta.get("aopc_fractions", AOPC_FRACTIONS)
    heads = [f"D{round(100 * f)}" for f in fractions]
    lines = [
        f"# Faithfulness benchmark: {meta.get('model')}",
        "",
        *([_partial_line(meta), ""] if summary.get("partial") else []),
        *_combined_lines(meta),
        f"{summary['n_prompts']} prompts from {meta.get('data')} ({summary['n_skipped']} skipped as too short), "
        f"dtype {meta.get('dtype')}, seed {meta.get('seed')}, mean length {summary['mean_tokens']:.1f} tokens. "
        f"The tokenizer {'adds' if summary['has_bos'] else 'adds NO'} BOS token"
        f"{'' if summary['has_bos'] else ', so none is prepended'}.",
        f"y* (the model's top-1 on the intact prompt) is the true last token on {100 * summary['accuracy']:.1f}% "
        f"of prompts. Mean time per prompt, everything included: {summary['mean_prompt_time_s']:.2f} s wall, "
        f"{format_number(summary['mean_prompt_cpu_s'], 2)} s CPU (all threads).",
        "",
        "## AOPC (deletion, most relevant first; more negative = more faithful)",
        "",
        f"| method | AOPC mean ± SEM | {' | '.join(heads)} | mean attribution time (s) | CPU time (s) |",
        "|---|---|" + "---|" * len(heads) + "---|---|",
    ]
    for m, s in methods.items():
        deltas = " | ".join(format_number(d) for d in s["deltas_mean"])
        lines.append(
            f"| {m} | {format_number(s['aopc_mean'])} ± {format_number(s['aopc_sem'])} | {deltas} | {s['time_mean_s']:.4f} | "
            f"{format_number(s['cpu_mean_s'], 4)} |"
        )
    lines += ["", "D_f = mean of log p_ablated(y*) - log p_orig(y*) with the top f of the tokens zeroed.", ""]
    lines += _paper_table(summary)
    lines += _paired_table(summary)
    lines += _loo_table(summary)
    lines += [
        "## Deletion curves",
        "",
        "![mean log-prob change vs fraction deleted](deletion_curves.png)",
        "",
        "![AOPC per method](aopc.png)",
        "",
        "## How this compares with the paper",
        "",
    ]
    lines += [f"- {sentence}" for sentence in summary["findings"]]
    lines += ["", "## Methods and notes", ""]
    lines += [f"- `{m}`: {METHODS[m].label}" for m in methods]
    lines += [
        "- Captum baselines attribute the LOGIT of y* at the explained position w.r.t. the input embeddings "
        "(`model(inputs_embeds=e).logits[:, position, y*]`, parameters frozen); Integrated Gradients uses Captum's "
        "default Gauss-Legendre rule from the baseline its label names. Every attribution (scopes and baselines) is "
        "reduced to one score per token with the L2 norm over the embedding dimension.",
        *_ig_baseline_lines(summary),
        "- Special tokens (BOS, ...) are never ranked or ablated. Ablation = input embedding set to zero, tokens, "
        "positions and attention mask unchanged (the paper's protocol).",
        "- Attribution time is the wall time of the attribution alone (not of the metrics), on this machine; "
        "CPU time adds up the process's threads (on a GPU it only counts the host side). On a CPU shared with "
        "other jobs both are inflated, by far the most with several threads per process (idle OpenMP threads "
        "spin): compare methods within one run, not across runs.",
        "",
    ]
    return "\n".join(lines)


def _ig_baseline_lines(summary: dict) -> list[str]:
    """What the token and mean baselines were for this run's tokenizer and model."""
    info = summary.get("ig_baselines")
    if not info:
        return []
    token, mean = info["token"], info["mean"]
    return [f"- IG baselines of this run's tokenizer and model: the token baseline is `{token['piece']}` (id "
            f"{token['id']}, the tokenizer's {token['rule']} token; rule: pad, else unk, else eos) at every position; "
            f"the mean baseline is the mean of the {mean['vocab']} x {mean['dim']} input embedding matrix "
            "(of the embedding module's output, scaling included) at every position."]


def _partial_line(meta: dict) -> str:
    unfinished = meta.get("partial_sources")
    if unfinished:
        runs = ", ".join(f"`{name}`" for name in unfinished)
        return f"**Partial report: {runs} has not finished; the tables cover the prompts done in every run so far.**"
    return "**Partial report: the run has not finished (records read from its shards).**"


def _combined_lines(meta: dict) -> list[str]:
    sources = meta.get("combined_from")
    if not sources:
        return []
    parts = "; ".join(f"`{src['run']}` ({', '.join(src['methods'])}: {src['records']} records"
                      f"{', unfinished' if src['partial'] else ''})" for src in sources)
    return [f"Combined run: the prompts done in every one of {parts}.", ""]


def _paper_table(summary: dict) -> list[str]:
    methods = summary["methods"]
    ranks = {m: i + 1 for i, m in enumerate(summary["paper"]["ours"])}
    lines = [
        "## Beside the paper's numbers (AOPC, LAMBADA-1000)",
        "",
        f"Rank among the paper's six methods in brackets. Our model: {summary['meta'].get('model')}.",
        "",
        "| method | paper's name | ours | " + " | ".join(PAPER_MODELS) + " |",
        "|---|---|---|" + "---|" * len(PAPER_MODELS),
    ]
    for m, s in methods.items():
        ours = format_number(s["aopc_mean"]) + (f" ({ranks[m]})" if m in ranks else "")
        if m in PAPER_AOPC:
            paper = []
            for i, model in enumerate(PAPER_MODELS):
                order = summary["paper"]["columns"][model]["ordering"]
                rank = f" ({order.index(m) + 1})" if m in order else ""
                paper.append(f"{PAPER_AOPC[m][i]:.3f}{rank}")
            lines.append(f"| {m} | {PAPER_AOPC_NAMES[m]} | {ours} | " + " | ".join(paper) + " |")
        else:
            lines.append(f"| {m} | (not in the paper) | {ours} | " + " | ".join("—" for _ in PAPER_MODELS) + " |")
    return lines + [""]


def _paired_table(summary: dict) -> list[str]:
    if not summary["paired"]:
        return []
    lines = [
        "## Paired per-prompt comparisons (scope AOPC - baseline AOPC)",
        "",
        "| scope | baseline | mean difference ± SEM | Wilcoxon p | share of prompts scope more negative | n |",
        "|---|---|---|---|---|---|",
    ]
    for p in summary["paired"]:
        lines.append(
            f"| {p['method']} | {p['baseline']} | {format_number(p['mean_difference'])} ± {format_number(p['sem'])} | "
            f"{format_number(p['wilcoxon_p'], 4)} | {format_number(p['share_more_negative'], 3)} | {p['n']} |"
        )
    return lines + ["", "Negative difference = the scope removes more of the prediction = more faithful.", ""]


def _loo_table(summary: dict) -> list[str]:
    loo = summary["loo"]
    if not loo:
        return []
    n = next(iter(loo.values()))["n"]
    top = next(iter(loo.values()))["top_fraction"]
    lines = [
        f"## Leave-one-out agreement ({n} prompts)",
        "",
        "Ground truth: KL(P_orig || P_ablated) when one token's embedding is zeroed. Top-1 percentile: share of "
        "tokens with a larger LOO influence than the method's top token (lower is better, random ~50).",
        "",
        f"| method | Spearman | Kendall | top-1 LOO percentile | top-{round(100 * top)}% Jaccard | "
        "paper (Llama-3.2-1B): row, top-1 pct / Spearman |",
        "|---|---|---|---|---|---|",
    ]
    for m, s in loo.items():
        paper = "—"
        if m in PAPER_LOO:
            name, pct, rho = PAPER_LOO[m]
            paper = f"{name}: {pct} / {rho:.3f}"
        lines.append(
            f"| {m} | {format_number(s['spearman_mean'])} ± {format_number(s['spearman_sem'])} | {format_number(s['kendall_mean'])} | "
            f"{format_number(s['top1_percentile_mean'], 2)} ± {format_number(s['top1_percentile_sem'], 2)} | "
            f"{format_number(s['top_jaccard_mean'])} | {paper} |"
        )
    if "mean_loo_time_s" in summary:
        lines += ["", f"Leave-one-out ground truth cost {summary['mean_loo_time_s']:.2f} s per prompt."]
    return lines + [""]


def _plot_curves(summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fractions = summary["meta"].get("curve_fractions", BENCH_CURVE_FRACTIONS)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for m, s in summary["methods"].items():
        mean, sem = np.array(s["curve_mean"]), np.nan_to_num(np.array(s["curve_sem"], dtype=float))
        (line,) = ax.plot(fractions, mean, marker=".", label=m, linestyle="--" if m not in SCOPES else "-")
        ax.fill_between(fractions, mean - sem, mean + sem, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("fraction of tokens deleted (most relevant first)")
    ax.set_ylabel("mean log p(y*) change")
    ax.set_title(f"Deletion curves, {summary['meta'].get('model')}, {summary['n_prompts']} prompts (± SEM)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_aopc(summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(summary["methods"])
    means = [summary["methods"][m]["aopc_mean"] for m in names]
    sems = np.nan_to_num([summary["methods"][m]["aopc_sem"] for m in names])
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    colors = ["tab:blue" if m in SCOPES else "tab:grey" for m in names]
    ax.bar(names, means, yerr=sems, color=colors, capsize=3)
    ax.set_ylabel("AOPC (more negative = more faithful)")
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(f"AOPC ± SEM, {summary['meta'].get('model')}, {summary['n_prompts']} prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(out_dir: Path, records: Optional[list[dict]] = None) -> dict:
    """Summarise the records of ``out_dir`` (default: its records.jsonl) and write
    ``summary.json``, ``report.md``, ``deletion_curves.png`` and ``aopc.png`` there.

    Returns:
        the summary (see :func:`summarize`).
    Raises:
        ValueError: no ``run.json`` / records in ``out_dir``.
    """
    out_dir = Path(out_dir)
    meta, partial = read_meta(out_dir), False
    if records is None:
        records, partial = read_run_records(out_dir)
    summary = summarize(records, meta)
    summary["partial"] = partial or bool(meta.get("partial_sources"))
    if (out_dir / IG_BASELINES_FILE).is_file():
        summary["ig_baselines"] = json.loads((out_dir / IG_BASELINES_FILE).read_text(encoding="utf-8"))
    (out_dir / "summary.json").write_text(
        json.dumps(finite_or_none(summary), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "report.md").write_text(render_report(summary), encoding="utf-8")
    _plot_curves(summary, out_dir / "deletion_curves.png")
    _plot_aopc(summary, out_dir / "aopc.png")
    return summary


def read_meta(out_dir: Path) -> dict:
    run_file = Path(out_dir) / "run.json"
    if not run_file.is_file():
        raise ValueError(f"{out_dir} holds no benchmark run (no run.json); run the benchmark first")
    return json.loads(run_file.read_text(encoding="utf-8"))


def read_run_records(out_dir: Path) -> tuple[list[dict], bool]:
    """The records of a run and whether it is unfinished (then read from its shards)."""
    partial = not (Path(out_dir) / RECORDS_FILE).is_file()
    return (_partial_records(out_dir) if partial else read_records(out_dir)), partial


def _partial_records(out_dir: Path) -> list[dict]:
    """Records written so far by an unfinished (or running) run, from its shards,
    in prompt-id order (numeric ids numerically)."""
    # the runner's own shard reader: it skips a line still being written
    by_id = read_shard_records(out_dir)
    if not by_id:
        raise ValueError(f"{out_dir} holds no record yet (no records.jsonl, no shard-*.jsonl with a record)")
    return [by_id[i] for i in sorted(by_id, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))]
