"""The speed benchmark's report: the machine and versions a run is recorded with,
``speed.md`` (per-token table, multi-token target, lengths, peak memory, the Fisher
study) and the plots, from a ``speed.json``; also rebuilt alone
(``jscopes bench speed --report-only --out DIR``), reading the method names of
earlier versions as today's."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

from captum_jscopes.core.provenance import package_version
from captum_jscopes.models import describe_model

#: The reference every method's time is divided by in the "IG-50 / method" column.
IG_REFERENCE = "ig50"
#: Names of earlier versions of this benchmark (committed speed.json files), read as today's.
LEGACY_NAMES = {"captum_ig50": "ig50", "captum_gradient": "saliency", "captum_grad_x_input": "grad_x_input",
                "captum_feature_ablation": "feature_ablation"}


def environment(args, model) -> dict:
    import captum
    import transformers

    return {
        "model": describe_model(model),
        "dtype": str(next(model.parameters()).dtype),
        "device": str(model.get_input_embeddings().weight.device),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {
            "captum_jscopes": package_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "captum": captum.__version__,
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
    }


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# Speed: {env['model']} on {env['device']} ({env['dtype']}, {env['torch_threads']} threads)",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    single = results.get("single_token")
    if single:
        floor = single["floor"]["seconds"]
        ig = single.get(IG_REFERENCE, {}).get("seconds")
        floor_mem = single["floor"].get("peak_extra_mib")
        lines += [
            f"## Per explained token, median over {env['settings']['n']} LAMBADA prompts",
            "",
            "| method | seconds | x floor | IG-50 / method | peak extra MiB | x floor memory |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in single.items():
            mem = row.get("peak_extra_mib")
            lines.append(
                f"| {name} | {row['seconds']:.4f} | {row['seconds'] / floor:.2f} | "
                f"{(ig / row['seconds']) if ig else float('nan'):.1f} | "
                f"{'' if mem is None else f'{mem:.0f}'} | "
                f"{'' if mem is None or not floor_mem else f'{mem / floor_mem:.2f}'} |"
            )
    multi = results.get("multi_token")
    if multi:
        lines += [
            "",
            f"## Multi-token target ({env['settings']['multi_token']} tokens), seconds per target token",
            "",
            "| method | seconds | speed-up |",
            "|---|---:|---:|",
            f"| Captum LLMGradientAttribution(LayerGradientXActivation), per-token loop | "
            f"{multi['captum_gradient_loop']:.4f} | 1.00 |",
            f"| LLMScopeAttribution(SemanticScope), one forward | {multi['ours_semantic']:.4f} | "
            f"{multi['captum_gradient_loop'] / multi['ours_semantic']:.2f} |",
        ]
    lengths = results.get("lengths")
    if lengths:
        columns = sorted({int(n) for row in lengths.values() for n in row})
        lines += ["", "## Seconds per call by prompt length (ratio to the floor)", ""]
        lines += ["| method | " + " | ".join(str(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, row in lengths.items():
            cells = [
                f"{row[str(c)]:.3f} ({row[str(c)] / lengths['floor'][str(c)]:.1f}x)" if str(c) in row else "-"
                for c in columns
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    memory = results.get("lengths_peak_extra_mib")
    if memory:
        lines += ["", "## Peak extra memory by prompt length, MiB (ratio to the floor); one call in a fresh process",
                  "", "| method | " + " | ".join(str(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
        floor = memory.get("floor", {})

        def cell(row, c):
            if str(c) not in row:
                return "-"
            if row[str(c)] is None:
                return "failed"
            ratio = f" ({row[str(c)] / floor[str(c)]:.2f}x)" if floor.get(str(c)) else ""
            return f"{row[str(c)]:,.0f}{ratio}"

        for name, row in memory.items():
            lines.append(f"| {name} | " + " | ".join(cell(row, c) for c in columns) + " |")
        lines += ["", "'failed': the call ran out of memory or past the time limit; '-': skipped after a call "
                  "slower than `--length-max-seconds` (or IG past its maximum length)."]
    accuracy = results.get("fisher_accuracy")
    if accuracy:
        lines += [
            "",
            f"## Fisher estimators against exact, {env['settings']['fisher_n']} prompts (medians; worst prompt"
            + (f"; {env['settings'].get('fisher_seeds')} seeds each" if env["settings"].get("fisher_seeds", 1) > 1
               else "") + ")",
            "",
            "| estimator | passes | Spearman | rel. L2 error | time / exact | top-5 in 95% interval |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in sorted(accuracy.items(), key=lambda item: item[1]["vjps"]):
            # an adaptive estimator (tol=) runs a varying number of passes: median (max)
            passes = (f"{row['median_passes']:g} ({row['max_passes']})" if row.get("median_passes") is not None
                      and row["median_passes"] != row["vjps"] else f"{row['vjps']}")
            coverage = f"{row['top5_coverage']:.1%}" if "top5_coverage" in row else ""
            lines.append(
                f"| {name} | {passes} | {row['median_spearman']:.4f} ({row.get('worst_spearman', 1.0):.4f}) | "
                f"{row['median_rel_l2']:.4f} ({row.get('worst_rel_l2', 0.0):.4f}) | {row['median_time_ratio']:.3f} | "
                f"{coverage} |"
            )
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if results.get("single_token"):
        single = results["single_token"]
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(single)
        ax.barh(names, [single[n]["seconds"] for n in names], color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per explained token (log)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "speed.png", dpi=120)
        written.append(out / "speed.png")
    if results.get("lengths"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, row in results["lengths"].items():
            xs = sorted(int(n) for n in row)
            ax.plot(xs, [row[str(x)] for x in xs], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", ylabel="seconds per call")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "lengths.png", dpi=120)
        written.append(out / "lengths.png")
    if results.get("fisher_accuracy"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for name, row in results["fisher_accuracy"].items():
            axes[0].scatter(row["vjps"], 1 - row["median_spearman"] + 1e-6, label=name)
            axes[1].scatter(row["vjps"], row["median_rel_l2"] + 1e-6, label=name)
        axes[0].set(xscale="log", yscale="log", xlabel="backward passes", ylabel="1 - Spearman (median)")
        axes[1].set(xscale="log", yscale="log", xlabel="backward passes", ylabel="relative L2 error (median)")
        axes[1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(out / "fisher_accuracy.png", dpi=120)
        written.append(out / "fisher_accuracy.png")
    return written


def report_only(out: Path) -> int:
    """Rebuild ``speed.md`` and the plots from ``out/speed.json`` (also one written
    with the method names of earlier versions, :data:`LEGACY_NAMES`)."""
    path = out / "speed.json"
    if not path.is_file():
        print(f"speed benchmark: error: {path} not found; run the benchmark first", file=sys.stderr)
        return 2
    results = with_current_names(json.loads(path.read_text()))
    (out / "speed.md").write_text(markdown(results))
    plots(results, out)
    print(f"rebuilt {out / 'speed.md'}")
    return 0


def with_current_names(results: dict) -> dict:
    """``results`` with the method names of earlier versions replaced by today's."""
    renamed = dict(results)
    for table in ("single_token", "lengths"):
        if table in results:
            renamed[table] = {LEGACY_NAMES.get(name, name): row for name, row in results[table].items()}
    return renamed
