"""Does a scope's map at layer l agree with patching the residual stream there?

For each LAMBADA passage (without its last token; the model's own next-token
prediction y* is explained) and each layer l = 0..L (0: the input embeddings, l:
the residual stream after decoder layer l), every token t's state is replaced in
turn, by its mean over the prompt's positions (``mean``) or by zeros (``zero``),
and two effects at the explained position are measured: the KL of the next-token
distribution, ``KL(P || P_patched)``, and ``|delta log p(y*)|``. The scopes'
layer maps (:func:`captum_jscopes.layer_map`: Semantic with target y*,
Temperature, Fisher eig k=1) are computed on the same prompt, and the record
holds, per scope, mode, effect and layer, the Spearman correlation between the
scope's row and the effect over the prompt's ordinary tokens before the explained
one (the explained token itself is left out: after the last layers it is the only
one with any effect).

    python -m captum_jscopes.bench.layers --n 100 --threads 1
    python -m captum_jscopes.bench.layers --model gemma3-270m --n 100 --threads 1
    python -m captum_jscopes.bench.layers --report-only --out DIR

Cost per prompt: one layer map per scope (1 + 1 + 1 backward passes) and, per
mode and patched row, n patched forwards of the n-token prompt, batched
``--batch-size`` at a time: the patching is the cost (rows x n^2 tokens), so the
defaults keep the last 24 tokens and patch every third row (``--stride``).
Resumable: records are written as prompts finish (:mod:`captum_jscopes.runs.runner`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from captum_jscopes.analysis.layers import layer_map, spearman_by_layer
from captum_jscopes.bench.common import (benchmark_main, benchmark_parser,
                                         data_id, load_benchmark_model, model_id)
from captum_jscopes.core.forward import decoder_layers
from captum_jscopes.core.model_state import accepts, preserved_state
from captum_jscopes.core.tokens import special_tokens_mask
from captum_jscopes.runs.prompts import Prompt, load_prompts, prepare_prompt
from captum_jscopes.runs.runner import read_records, read_shard_records, run_sharded, write_json_atomic, write_text_atomic
from captum_jscopes.scopes.registry import SCOPES

__all__ = ["patching_effects", "evaluate_prompt", "write_layers_report", "main"]

RECORD_FORMAT = 1
MODES = ("mean", "zero")
EFFECTS = ("kl", "dlogp")
#: scope name -> options of the layer map (Fisher: the paper's top-1 truncation, one backward pass)
SCOPE_OPTIONS = {"semantic": {}, "temperature": {}, "fisher": {"estimator": "eig", "k": 1}}


def _layer_modules(model: nn.Module) -> list[nn.Module]:
    """Row 0's module (the embedding lookup) and the decoder layers, in row order."""
    return [model.get_input_embeddings(), *decoder_layers(model)]


@torch.no_grad()
def patching_effects(model: nn.Module, input_ids: Tensor, target: int, mode: str,
                     batch_size: int = 32, rows: Optional[Sequence[int]] = None) -> dict[str, Tensor]:
    """Patch every (row, token) of a prompt, one at a time, and measure the effect
    at the last position.

    Args:
        model: a causal LM (not modified; hooks are removed, also after an error).
        input_ids: (1, n) one prompt; its last token's prediction is explained.
        target: y*, the token whose log-probability change is measured.
        mode: ``"mean"`` (the state's mean over the prompt's positions) or ``"zero"``.
        batch_size: patched copies per forward. Default 32.
        rows: the rows patched (0: embeddings, l: after layer l); default all.
            Each row costs n patched forwards.
    Returns:
        ``{"kl": (L + 1, n), "dlogp": (L + 1, n)}`` float64 CPU; rows not patched are NaN.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    modules = _layer_modules(model)
    n = input_ids.shape[1]
    kwargs: dict[str, Any] = {"use_cache": False}
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1

    def log_probs(ids: Tensor) -> Tensor:
        logits = model(input_ids=ids, **kwargs).logits[:, -1].double()
        return torch.log_softmax(logits, -1)

    with preserved_state(model):
        states: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _a, out: states.append(_first(out).detach())) for m in modules]
        try:
            base = log_probs(input_ids)[0]
        finally:
            for h in hooks:
                h.remove()
        kl = torch.full((len(modules), n), float("nan"), dtype=torch.float64)
        dlogp = kl.clone()
        for row in range(len(modules)) if rows is None else rows:
            module = modules[row]
            state = states[row][0]  # (n, width)
            replacement = state.mean(0) if mode == "mean" else torch.zeros_like(state[0])
            for start in range(0, n, batch_size):
                tokens = torch.arange(start, min(n, start + batch_size))

                def patch(_module, _args, out, tokens=tokens):
                    hidden = _first(out).clone()
                    hidden[torch.arange(len(tokens)), tokens.to(hidden.device)] = replacement.to(hidden)
                    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

                handle = module.register_forward_hook(patch)
                try:
                    patched = log_probs(input_ids.expand(len(tokens), -1))
                finally:
                    handle.remove()
                kl[row, tokens] = (base.exp() * (base - patched)).sum(-1).cpu()
                dlogp[row, tokens] = (patched[:, target] - base[target]).abs().cpu()
    return {"kl": kl, "dlogp": dlogp}


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def patched_rows(n_layers: int, stride: int) -> list[int]:
    """Rows 0, stride, 2 stride, ... and the last two layers (where the hand-off ends)."""
    return sorted({*range(0, n_layers + 1, stride), n_layers - 1, n_layers})


def evaluate_prompt(model: nn.Module, tokenizer: Any, prompt: Prompt, max_tokens: int, batch_size: int,
                    stride: int = 1) -> dict:
    """One prompt's record: ``n_tokens``, ``n_layers``, ``target``, per scope its
    hand-off layers and ``spearman[mode][effect]`` (L + 1 values, NaN as None), and
    the seconds spent on the maps and on patching."""
    try:
        prepared = prepare_prompt(tokenizer, prompt.text, max_tokens)
    except ValueError as err:
        return {"skipped": str(err)}
    device = model.get_input_embeddings().weight.device
    ids = prepared.input_ids.to(device)
    with torch.no_grad():  # y*: the model's own prediction, as in the other benchmarks
        target = int(model(input_ids=ids).logits[0, -1].argmax())
    special = special_tokens_mask(ids, tokenizer, getattr(model, "config", None))[0].cpu()
    columns = [t for t in range(ids.shape[1] - 1) if not bool(special[t])]
    began = time.perf_counter()
    maps = {}
    for name, options in SCOPE_OPTIONS.items():
        scope = SCOPES[name](model, tokenizer)
        maps[name] = layer_map(scope, ids, target=target if scope.takes_target else None, **options)
    maps_seconds = time.perf_counter() - began
    rows = patched_rows(maps["semantic"].n_layers, stride)
    effects = {mode: patching_effects(model, ids, target, mode, batch_size, rows) for mode in MODES}
    record: dict[str, Any] = {
        "n_tokens": int(ids.shape[1]), "n_layers": maps["semantic"].n_layers, "target": target, "rows": rows,
        "seconds_maps": maps_seconds, "seconds_patching": time.perf_counter() - began - maps_seconds,
        "scopes": {},
    }
    for name, result in maps.items():
        scores = result.scores[0].cpu()
        record["scopes"][name] = {
            "handoff": [int(h) for h in result.handoff()[0][columns].tolist()],
            "spearman": {mode: {effect: _finite(spearman_by_layer(scores, effects[mode][effect], columns))
                                for effect in EFFECTS} for mode in MODES},
        }
    return record


def _finite(values: Tensor) -> list[Optional[float]]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


# ====================================================================== report
def _mean_sem(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def summarise(records: list[dict]) -> dict:
    """Per scope, mode, effect and layer: the mean Spearman with its standard
    error and the number of prompts; per scope the median hand-off layer."""
    done = [r for r in records if "scopes" in r]
    if not done:
        return {"n_prompts": 0}
    n_rows = min(r["n_layers"] for r in done) + 1
    out: dict[str, Any] = {"n_prompts": len(done), "n_layers": n_rows - 1, "scopes": {}}
    for name in SCOPE_OPTIONS:
        per = {}
        for mode in MODES:
            for effect in EFFECTS:
                rows = []
                for layer in range(n_rows):
                    values = [r["scopes"][name]["spearman"][mode][effect][layer] for r in done
                              if layer in r.get("rows", range(n_rows))]
                    values = [v for v in values if v is not None]
                    mean, sem = _mean_sem(values)
                    rows.append({"mean": mean, "sem": sem, "n": len(values)})
                per[f"{mode}/{effect}"] = rows
        handoffs = sorted(h for r in done for h in r["scopes"][name]["handoff"])
        out["scopes"][name] = {"spearman": per, "median_handoff": handoffs[len(handoffs) // 2] if handoffs else None}
    return out


def write_layers_report(out_dir: Path, records: Optional[list[dict]] = None) -> dict:
    """``summary.json`` and ``layers.md`` in ``out_dir`` from the records (read
    from the folder when not given)."""
    out_dir = Path(out_dir)
    if records is None:  # a finished run's records, else what the shards hold so far (a partial report)
        done = out_dir / "records.jsonl"
        records = read_records(done) if done.exists() else list(read_shard_records(out_dir).values())
    meta = json.loads((out_dir / "run.json").read_text()) if (out_dir / "run.json").exists() else {}
    summary = summarise(records)
    write_json_atomic(out_dir / "summary.json", summary)
    lines = [f"# Layer maps against residual-stream patching: {summary['n_prompts']} prompts", "",
             f"- model: {meta.get('model')}; data: {meta.get('data')}; last {meta.get('max_tokens')} tokens",
             "- command: see benchmarks/README.md (\"Where influence travels\")", ""]
    if summary["n_prompts"]:
        L = summary["n_layers"]
        shown = [layer for layer in range(L + 1)
                 if any(summary["scopes"][name]["spearman"]["mean/kl"][layer]["n"] for name in SCOPE_OPTIONS)]
        lines += ["Mean Spearman (± standard error over prompts) between each scope's row and the patching "
                  "effect at that layer, over the ordinary tokens before the explained one. Row 0 = input "
                  "embeddings, row l = after decoder layer l.", ""]
        for key in (f"{m}/{e}" for m in MODES for e in EFFECTS):
            lines += [f"## patching: {key}", "", "| layer | " + " | ".join(SCOPE_OPTIONS) + " |",
                      "|---|" + "---|" * len(SCOPE_OPTIONS)]
            for layer in shown:
                cells = []
                for name in SCOPE_OPTIONS:
                    row = summary["scopes"][name]["spearman"][key][layer]
                    cells.append(f"{row['mean']:+.3f} ± {row['sem']:.3f}" if row["n"] else "n/a")
                lines.append(f"| {layer} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["Median hand-off layer (the first layer from which a token's own position holds less than "
                  "half of its largest share of a row; LayerMap.handoff): " + ", ".join(f"{name} {summary['scopes'][name]['median_handoff']}"
                                                  for name in SCOPE_OPTIONS), ""]
    write_text_atomic(out_dir / "layers.md", "\n".join(lines))
    return summary


# ====================================================================== command line
def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = benchmark_parser("layers", prog, __doc__.split("\n\n")[0], n_default=100)
    parser.add_argument("--max-tokens", type=int, default=24, help="last tokens of each passage kept (default 24)")
    parser.add_argument("--stride", type=int, default=3,
                        help="patch rows 0, stride, 2 stride, ... and the last two (default 3; 1: every row)")
    parser.add_argument("--batch-size", type=int, default=32, help="patched copies per forward (default 32)")
    return parser


def main(argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
    """Run the benchmark (or rebuild its report); 0 ok, 2 bad arguments or input."""
    return benchmark_main("layers", build_parser(prog), argv, _run, "layers.md")


def _run(args: argparse.Namespace, out_dir: Path) -> dict:
    if args.report_only:
        return write_layers_report(out_dir)
    if args.max_tokens < 4 or args.batch_size < 1 or args.stride < 1:
        raise ValueError("--max-tokens must be >= 4, --batch-size and --stride >= 1")
    prompts = load_prompts(args.data, args.n, offset=args.offset)
    meta = {"benchmark": "layers", "format": RECORD_FORMAT, "model": model_id(args.model),
            "data": data_id(args.data), "dtype": args.dtype, "max_tokens": args.max_tokens, "stride": args.stride}
    model, tokenizer = load_benchmark_model(args)
    path = run_sharded(prompts, lambda p: evaluate_prompt(model, tokenizer, p, args.max_tokens, args.batch_size,
                                                          args.stride),
                       out_dir, desc="layers", meta=meta, overwrite=args.overwrite, size_flag="--n")
    return write_layers_report(out_dir, read_records(path))


if __name__ == "__main__":
    raise SystemExit(main())
