"""Summary, Markdown report and figures of the "when to trust a map" benchmark
(:mod:`captum_jscopes.bench.trust`), computed from its records alone.

Three parts, per prompt variant (as tokenised / BOS flipped):

- **sinks**: for each scope, the share of its map held by the special tokens, the
  first ordinary token and the first k, next to the share of the leave-one-out KL
  (zero and mask ablation) the same positions hold; the excess (map minus LOO),
  its paired Wilcoxon p, the share a flat map would give, the share the
  content-free (shuffled) copy gives, and what ablating the group at once does;
- **correction**: a position profile calibrated on the content-free copies of
  half the prompts (even record index) and divided out of the first
  :data:`PROFILE_POSITIONS` positions of the other half's maps; paired change of
  the Spearman agreement with leave-one-out;
- **radii**: the distribution of validity radii per scope, and the shares of
  checked tokens whose radius reaches their nearest-swap distance and the zero
  embedding (eps = 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import stats

from captum_jscopes.bench.report import finite_or_none, format_number, mean_sem, read_meta, read_run_records, wilcoxon_p
from captum_jscopes.runs.runner import write_json_atomic, write_text_atomic

__all__ = ["PROFILE_POSITIONS", "summarize_trust", "render_trust_report", "write_trust_report", "position_profile"]

#: leading positions whose score the position-profile correction rescales
PROFILE_POSITIONS = 8
SCOPES = ("semantic", "temperature", "fisher")
MODES = ("zero", "mask")
_TINY = 1e-30


# ====================================================================== per record
def _groups(variant: dict, k: int) -> dict[str, list[int]]:
    special = set(variant["special_positions"])
    ordinary = [t for t in range(variant["n_tokens"]) if t not in special]
    return {"special": sorted(special), "first_1": ordinary[:1], f"first_{k}": ordinary[:k]}


def _share(values: np.ndarray, positions: list[int]) -> float:
    total = float(values.sum())
    return float(values[positions].sum()) / total if total > 0 else float("nan")


def _variants(records: list[dict], name: str) -> list[dict]:
    return [r["variants"][name] for r in records if name in r.get("variants", {})]


# ====================================================================== sinks
def _sink_summary(variants: list[dict], k: int) -> dict:
    out: dict[str, Any] = {}
    group_names = list(_groups(variants[0], k))
    for scope in SCOPES:
        rows = {}
        for group in group_names:
            cells: dict[str, list[float]] = {"map": [], "shuffled": [], "uniform": [], "map_top": [],
                                             **{f"loo_{m}": [] for m in MODES}, **{f"loo_top_{m}": [] for m in MODES}}
            for v in variants:
                positions = _groups(v, k)[group]
                if not positions:
                    continue
                scores = np.asarray(v["maps"][scope])
                cells["map"].append(_share(scores, positions))
                cells["shuffled"].append(_share(np.asarray(v["shuffled_maps"][scope]), positions))
                cells["uniform"].append(len(positions) / v["n_tokens"])
                cells["map_top"].append(float(int(np.argmax(scores)) in positions))
                for m in MODES:
                    kl = np.asarray(v["loo_kl"][m])
                    cells[f"loo_{m}"].append(_share(kl, positions))
                    cells[f"loo_top_{m}"].append(float(int(np.argmax(kl)) in positions))
            if not cells["map"]:
                continue
            row = {"n": len(cells["map"])}
            for key, values in cells.items():
                row[key] = mean_sem(values)[0]
            for m in MODES:
                diff = np.asarray(cells["map"]) - np.asarray(cells[f"loo_{m}"])
                mean, sem = mean_sem(diff.tolist())
                row[f"excess_{m}"] = {"mean": mean, "sem": sem, "wilcoxon_p": wilcoxon_p(diff)}
            rows[group] = row
        out[scope] = rows
    return out


def _joint_summary(variants: list[dict]) -> dict:
    out = {}
    for key in variants[0]["joint"]:
        entries = [v["joint"][key] for v in variants if v["joint"].get(key, {}).get("positions")]
        if entries:
            out[key] = {
                "n": len(entries),
                "median_kl": float(np.median([e["kl"] for e in entries])),
                "share_prediction_changed": float(np.mean([e["prediction_changed"] for e in entries])),
            }
    return out


# ====================================================================== correction
def position_profile(maps: list[np.ndarray], positions: int = PROFILE_POSITIONS) -> np.ndarray:
    """(positions,) geometric-mean ratio of the score at each leading position to
    the prompt's mean score past them, over content-free maps: what a position
    earns by itself. Positions a map does not reach are left out of that mean."""
    logs: list[list[float]] = [[] for _ in range(positions)]
    for scores in maps:
        rest = scores[positions:]
        if rest.size == 0 or rest.mean() <= 0:
            continue
        for t in range(min(positions, scores.size)):
            logs[t].append(math.log(max(scores[t], _TINY) / rest.mean()))
    return np.array([math.exp(np.mean(values)) if values else 1.0 for values in logs])


def corrected(scores: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """``scores`` with the leading positions divided by the profile."""
    out = scores.astype(float).copy()
    n = min(out.size, profile.size)
    out[:n] = out[:n] / profile[:n]
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _correction_summary(variants: list[dict]) -> dict:
    calibration, evaluation = variants[0::2], variants[1::2]
    out = {}
    for scope in SCOPES:
        profile = position_profile([np.asarray(v["shuffled_maps"][scope]) for v in calibration])
        entry: dict[str, Any] = {"profile": profile.tolist(), "n_calibration": len(calibration),
                                 "n_evaluation": len(evaluation)}
        for m in MODES:
            raw, fixed = [], []
            for v in evaluation:
                kl, scores = np.asarray(v["loo_kl"][m]), np.asarray(v["maps"][scope])
                raw.append(_spearman(scores, kl))
                fixed.append(_spearman(corrected(scores, profile), kl))
            pairs = [(a, b) for a, b in zip(raw, fixed) if math.isfinite(a) and math.isfinite(b)]
            diff = np.array([b - a for a, b in pairs])
            mean, sem = mean_sem(diff.tolist())
            entry[m] = {
                "spearman_raw": mean_sem([a for a, _ in pairs])[0],
                "spearman_corrected": mean_sem([b for _, b in pairs])[0],
                "difference": mean,
                "sem": sem,
                "wilcoxon_p": wilcoxon_p(diff),
                "share_better": float(np.mean(diff > 0)) if diff.size else float("nan"),
            }
        out[scope] = entry
    return out


# ====================================================================== radii
def _radius_summary(variants: list[dict], largest_eps: float) -> dict:
    out = {}
    for scope in SCOPES:
        radius, swap, noise, top = [], [], [], []
        for v in variants:
            entry = v.get("radii", {}).get(scope)
            if not entry:
                continue
            order = np.argsort(-np.asarray(v["maps"][scope]))
            top4 = set(order[:4].tolist())
            radius += entry["radius"]
            swap += entry["swap_distance"]
            noise += entry["limited_by_noise"]
            top += [t in top4 for t in entry["tokens"]]
        if not radius:
            continue
        r, s, top_mask = np.asarray(radius), np.asarray(swap, dtype=float), np.asarray(top)
        finite = np.isfinite(s)

        def describe(mask: np.ndarray) -> dict:
            sel = r[mask]
            if sel.size == 0:
                return {"n": 0}
            return {
                "n": int(sel.size),
                "median": float(np.median(sel)),
                "quartiles": [float(np.quantile(sel, 0.25)), float(np.quantile(sel, 0.75))],
                "share_reaches_swap": float(np.mean(sel >= s[mask])) if finite[mask].all() else float("nan"),
                "share_reaches_zero": float(np.mean(sel >= largest_eps)),
                "share_fails_at_smallest": float(np.mean(sel == 0)),
            }

        out[scope] = {
            "all": describe(np.ones_like(top_mask, dtype=bool)),
            "top4": describe(top_mask),
            "others": describe(~top_mask),
            "median_swap_distance": float(np.median(s[finite])) if finite.any() else float("nan"),
            "share_limited_by_noise": float(np.mean(noise)),
            "n_prompts": sum(bool(v.get("radii", {}).get(scope)) for v in variants),
        }
    return out


# ====================================================================== report
def summarize_trust(records: list[dict], meta: dict) -> dict:
    """The numbers of the report, per variant (see the module docstring)."""
    done = [r for r in records if "skipped" not in r]
    k = int(meta.get("k", 3))
    largest = float(max(meta.get("epsilons", [1.0])))
    summary: dict[str, Any] = {"meta": meta, "n_prompts": len(done), "n_skipped": len(records) - len(done),
                               "variants": {}}
    for name in ("as_tokenised", "bos_flipped"):
        variants = _variants(done, name)
        if not variants:
            continue
        summary["variants"][name] = {
            "n": len(variants),
            "has_bos": float(np.mean([v["has_bos"] for v in variants])),
            "mean_tokens": float(np.mean([v["n_tokens"] for v in variants])),
            "sinks": _sink_summary(variants, k),
            "joint": _joint_summary(variants),
            "correction": _correction_summary(variants),
            "radii": _radius_summary(variants, largest),
        }
    summary["time_mean_s"] = float(np.mean([r["time_s"] for r in done])) if done else float("nan")
    return summary


def _p(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2g}"


def render_trust_report(summary: dict) -> str:
    """The Markdown report of a summary."""
    meta = summary["meta"]
    lines = [
        f"# When to trust a map: {meta['model']} on {meta['data']}",
        "",
        f"{summary['n_prompts']} prompts ({summary['n_skipped']} skipped), mean {summary['time_mean_s']:.1f} s each. "
        "Shares are means over prompts; LOO = leave-one-out KL of each token alone (zeroed embedding / attention "
        "mask); excess = map share - LOO share (positive: the map credits the positions more than the model's "
        "behaviour does), with a paired Wilcoxon p. 'shuffled' is the share on a content-free copy (ordinary "
        "tokens permuted).",
    ]
    for name, v in summary["variants"].items():
        lines += ["", f"## {name.replace('_', ' ')} ({v['n']} prompts, BOS in {v['has_bos']:.0%}, "
                  f"{v['mean_tokens']:.0f} tokens on average)", "", "### Sinks", "",
                  "| scope | group | map | LOO zero | LOO mask | excess zero (p) | excess mask (p) | flat | shuffled "
                  "| map top-1 in group | LOO-zero top-1 in group |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for scope, rows in v["sinks"].items():
            for group, row in rows.items():
                ez, em = row["excess_zero"], row["excess_mask"]
                lines.append(
                    f"| {scope} | {group} | {row['map']:.3f} | {row['loo_zero']:.3f} | {row['loo_mask']:.3f} | "
                    f"{ez['mean']:+.3f} ({_p(ez['wilcoxon_p'])}) | {em['mean']:+.3f} ({_p(em['wilcoxon_p'])}) | "
                    f"{row['uniform']:.3f} | {row['shuffled']:.3f} | {row['map_top']:.0%} | {row['loo_top_zero']:.0%} |"
                )
        lines += ["", "Ablating the whole group at once:", "", "| group / ablation | prompts | median KL | y* changes |",
                  "|---|---:|---:|---:|"]
        for key, row in v["joint"].items():
            lines.append(f"| {key} | {row['n']} | {row['median_kl']:.3g} | {row['share_prediction_changed']:.0%} |")
        lines += ["", f"### Position-profile correction (calibrated on {next(iter(v['correction'].values()))['n_calibration']} "
                  "prompts' shuffled copies, evaluated on the others)", "",
                  "| scope | profile (first positions) | LOO | Spearman raw | corrected | difference (p) | better |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for scope, entry in v["correction"].items():
            profile = " ".join(f"{x:.2g}" for x in entry["profile"])
            for m in MODES:
                c = entry[m]
                lines.append(
                    f"| {scope} | {profile} | {m} | {format_number(c['spearman_raw'])} | "
                    f"{format_number(c['spearman_corrected'])} | {c['difference']:+.3f} ({_p(c['wilcoxon_p'])}) | "
                    f"{c['share_better']:.0%} |"
                )
        if v["radii"]:
            lines += ["", f"### Validity radii (tol {meta.get('tol')}, eps in units of ||x_t||; 1 = the zero embedding)",
                      "", "| scope | prompts | tokens | median (IQR) | top-4 median | others median | reaches swap | "
                      "reaches zero | fails at smallest eps | median swap distance | noise-limited |",
                      "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
            for scope, r in v["radii"].items():
                a = r["all"]
                lines.append(
                    f"| {scope} | {r['n_prompts']} | {a['n']} | {a['median']:.3g} ({a['quartiles'][0]:.3g}-"
                    f"{a['quartiles'][1]:.3g}) | {r['top4'].get('median', float('nan')):.3g} | "
                    f"{r['others'].get('median', float('nan')):.3g} | {a['share_reaches_swap']:.0%} | "
                    f"{a['share_reaches_zero']:.0%} | {a['share_fails_at_smallest']:.0%} | "
                    f"{r['median_swap_distance']:.3g} | {r['share_limited_by_noise']:.0%} |"
                )
    return "\n".join(lines) + "\n"


def _plot(summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    variants = summary["variants"]
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, len(variants), squeeze=False)[0]
    for ax, (name, v) in zip(axes, variants.items()):
        labels, bars = [], {"map": [], "loo_zero": [], "loo_mask": [], "uniform": []}
        for scope, rows in v["sinks"].items():
            row = rows.get("first_1")
            if row is None:
                continue
            labels.append(scope)
            for key in bars:
                bars[key].append(row[key])
        x = np.arange(len(labels))
        for i, (key, values) in enumerate(bars.items()):
            ax.bar(x + (i - 1.5) * 0.2, values, width=0.2, label=key.replace("_", " "))
        ax.set_xticks(x, labels)
        ax.set_title(f"first ordinary token, {name.replace('_', ' ')}", loc="left", fontsize=10)
        ax.set_ylabel("share of the total")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)


def write_trust_report(out_dir: Path, records: Optional[list[dict]] = None) -> dict:
    """Summarise the records of ``out_dir`` and write ``trust.json``, ``trust.md``
    and ``sinks.png`` there; returns the summary. An unfinished run gives a
    partial report from its shards."""
    out_dir = Path(out_dir)
    meta, partial = read_meta(out_dir), False
    if records is None:
        records, partial = read_run_records(out_dir)
    summary = summarize_trust(records, meta)
    summary["partial"] = partial
    write_json_atomic(out_dir / "trust.json", finite_or_none(summary))
    write_text_atomic(out_dir / "trust.md", render_trust_report(summary))
    if summary["variants"]:
        _plot(summary, out_dir / "sinks.png")
    return summary
