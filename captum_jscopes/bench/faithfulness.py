"""The paper's faithfulness benchmark (AOPC by deletion on LAMBADA or another
prompt set, optional leave-one-out agreement) for the Jacobian Scopes and the
Captum baselines of :mod:`captum_jscopes.bench.methods`.

Run it with ``jscopes bench faithfulness ...``, ``python benchmarks/faithfulness.py ...``
or, on several processes sharing the prompts (CPU: ``--multi_gpu`` with
``CUDA_VISIBLE_DEVICES=""`` makes accelerate use torchrun; ``--cpu --num_processes 2``
starts only ONE process in accelerate 1.15)::

    CUDA_VISIBLE_DEVICES="" accelerate launch --multi_gpu --num_processes 2 benchmarks/faithfulness.py --num-prompts 1000
    torchrun --nproc_per_node 2 benchmarks/faithfulness.py --num-prompts 1000 --threads 1

torchrun refuses ``--n`` even after the script (an ambiguous prefix of its own
options): spell it ``--num-prompts`` there. One thread per process (``--threads 1``;
torchrun's default) is the fastest on a CPU shared with other jobs: idle OpenMP
threads spin and slow everything down.

Protocol per prompt (the paper's evaluation protocol, docs/method.md):

1. :func:`~captum_jscopes.runs.prompts.prepare_prompt`: tokenise the passage with
   the tokenizer's special tokens (a BOS only if the tokenizer adds one; SmolLM2's
   adds none) and drop the last token: it is the target (the last sub-token of the
   final word). The explained position is the last remaining token.
2. y* = the model's own top-1 prediction on the intact prompt; ``correct`` says
   whether y* is the true last token.
3. Every method scores every token (one score per token, higher = more relevant);
   :func:`captum_jscopes.metrics.deletion_curve` ablates the top tokens
   (input embedding -> 0) and measures ``log p(y*)`` at the AOPC fractions
   (5/10/20%) and the plot's (0, 0.05, ..., 0.5) in one go; the AOPC is the
   trapezoid area at 5/10/20% (:func:`~captum_jscopes.metrics.trapezoid_area`,
   equal to :func:`~captum_jscopes.metrics.aopc`); with ``--loo-n K`` the first
   K prompts also get leave-one-out ground truth and
   :func:`~captum_jscopes.metrics.loo_agreement` for every method.

Methods: any of the table :data:`captum_jscopes.bench.methods.METHODS`;
``--methods all`` runs its default nine: the three scopes (Fisher twice: default
unbiased estimator and the reference's top-1 eigen-direction), Captum's
InputXGradient, Saliency and IntegratedGradients (50 and 5 steps) on the LOGIT of
y* w.r.t. the input embeddings, and random scores. Captum attributions are reduced
to one score per token with the L2 norm over the embedding dimension, like the scopes.

Outputs in ``--out`` (default ``benchmarks/results/faithfulness-<model>``): the
runner's ``run.json``, ``shard-*.jsonl`` and ``records.jsonl`` (one record per
prompt, resumable), then ``summary.json``, ``report.md``, ``deletion_curves.png``
and ``aopc.png`` (:mod:`captum_jscopes.bench.report`). ``--report-only``
rebuilds the report from the records. ``--combine A,B --out C`` joins runs of
different methods on the same prompts (:func:`~captum_jscopes.bench.combine.combine_runs`)
into one report with the paired tests across them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from captum_jscopes.metrics import (
    ABLATION_MODES,
    AOPC_FRACTIONS,
    AblationSettings,
    ablated_log_probs,
    check_fractions,
    deletion_curves,
    leave_one_out,
    loo_agreement,
    rankable_mask,
    trapezoid_area,
)
from captum_jscopes.models import ModelNotAvailableError, load_model
from captum_jscopes.bench.common import (
    benchmark_parser,
    cli_message,
    data_id,
    model_id,
    model_short_name,
    results_dir,
)
from captum_jscopes.bench.methods import DEFAULT_METHODS, METHODS, describe_ig_baselines, parse_methods
from captum_jscopes.runs.prompts import Prompt, load_prompts, prepare_prompt
from captum_jscopes.bench.combine import combine_runs
from captum_jscopes.bench.report import (
    BENCH_CURVE_FRACTIONS,
    IG_BASELINES_FILE,
    finite_or_none,
    format_number,
    write_report,
)
from captum_jscopes.runs.runner import read_records, run_sharded, write_json_atomic

__all__ = ["Settings", "build_parser", "main", "evaluate_prompt", "parse_fractions", "model_short_name", "run_settings"]

# ====================================================================== constants
IG_INTERNAL_BATCH = 10
RECORD_FORMAT = 1


# ====================================================================== settings
@dataclass(frozen=True)
class Settings:
    """What one benchmark run computes per prompt.

    Attributes:
        methods: method names of :data:`captum_jscopes.bench.methods.METHODS`, in table order.
        loo_ids: ids of the prompts that get leave-one-out agreement.
        seed: seeds the random method (per prompt) and the Fisher probes. Default 0.
        aopc_fractions: fractions of the AOPC. Default (0.05, 0.10, 0.20).
        curve_fractions: fractions of the deletion curve. Default 0, 0.05, ..., 0.5.
        batch_size: ablated variants per forward in the metrics. Default 16.
        ig_batch: Integrated Gradients steps per forward. Default 10.
        extra_ablations: deletion operators besides the paper's zero embedding
            (``"token"``: the replacement token; ``"mask"``: the attention mask) whose
            AOPC each method also gets, under ``"ablations"`` in its record. Default none.
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    loo_ids: frozenset = frozenset()
    seed: int = 0
    aopc_fractions: tuple[float, ...] = AOPC_FRACTIONS
    curve_fractions: tuple[float, ...] = BENCH_CURVE_FRACTIONS
    batch_size: int = 16
    ig_batch: int = IG_INTERNAL_BATCH
    extra_ablations: tuple[str, ...] = ()


def parse_fractions(text: str) -> tuple[float, ...]:
    """"0,0.05,0.1" -> (0.0, 0.05, 0.1): distinct values in [0, 1], ascending.

    Raises:
        ValueError: a value that is not a number, outside [0, 1] or repeated.
    """
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--curve-fractions must be comma-separated numbers, got {text!r}") from err
    # the metrics' own check: the same rules and messages as deletion_curve(fractions=...)
    return check_fractions(values, allow_zero=True, name="--curve-fractions")


# ====================================================================== one prompt
def evaluate_prompt(model: nn.Module, tokenizer: Any, prompt: Prompt, settings: Settings) -> dict:
    """The record of one prompt (JSON-serialisable).

    Returns:
        ``{"skipped": reason}`` for a passage too short to explain, else a dict with
        ``n_tokens``, ``n_rankable`` (non-special tokens), ``has_bos``, ``target``
        (y*), ``true_token``, ``correct``, ``log_prob`` (log p(y*)), ``time_s`` and
        ``cpu_s`` (whole prompt, wall and CPU seconds), optional ``loo_time_s`` and
        ``loo_top_position`` (the token whose removal moves the distribution most), and
        ``methods``: name -> ``{"time_s", "cpu_s" (attribution only), "top_position"
        (index of the method's top-ranked token), "aopc",
        "deltas" (at the AOPC fractions), "curve" (deltas at the curve fractions),
        optional "loo" (LooAgreement fields)}``.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        prepared = prepare_prompt(tokenizer, prompt.text)
    except ValueError as err:
        return {"skipped": str(err)}
    ids = prepared.input_ids
    n = ids.shape[-1]
    # the paper's protocol: zeroed embeddings, special tokens kept
    ablation = AblationSettings(tokenizer=tokenizer, batch_size=settings.batch_size)
    intact = ablated_log_probs(model, ids, torch.zeros(n, dtype=torch.bool), settings=ablation)
    target = int(intact.argmax())
    rankable = rankable_mask(ids[0], tokenizer=tokenizer, config=getattr(model, "config", None))
    record: dict[str, Any] = {
        "n_tokens": n,
        "n_rankable": int(rankable.sum()),
        "has_bos": prepared.has_bos,
        "target": target,
        "true_token": prepared.true_token,
        "correct": target == prepared.true_token,
        "log_prob": float(intact[target]),
    }
    loo = None
    if prompt.id in settings.loo_ids:
        loo_start = time.perf_counter()
        loo = leave_one_out(model, ids, settings=ablation)
        record["loo_time_s"] = time.perf_counter() - loo_start
        record["loo_top_position"] = top_position(loo.kl, loo.rankable)
    record["methods"] = _evaluate_methods(model, tokenizer, ids, target, prompt.id, settings, ablation, loo,
                                          rankable)
    record["time_s"] = time.perf_counter() - start
    record["cpu_s"] = time.process_time() - cpu_start
    return record


def top_position(scores: torch.Tensor, rankable: torch.Tensor) -> int:
    """Index of the highest-scoring rankable token (special tokens never count)."""
    return int(scores.double().masked_fill(~rankable.to(scores.device), -math.inf).argmax())


def _evaluate_methods(model, tokenizer, ids, target, prompt_id, settings, ablation, loo, rankable) -> dict:
    """Every method's scores, timed, then their metrics."""
    entries, scores = {}, {}
    for method in settings.methods:
        start, cpu_start = time.perf_counter(), time.process_time()
        scores[method] = METHODS[method].scores(model, tokenizer, ids, target, prompt_id=prompt_id,
                                                seed=settings.seed, batch_size=settings.ig_batch)
        entries[method] = {
            "time_s": time.perf_counter() - start,
            # CPU seconds of all threads: unlike wall time, not inflated by other jobs on a shared CPU
            "cpu_s": time.process_time() - cpu_start,
            # where the method's top token is (0-based; n_tokens - 1 is the explained position)
            "top_position": top_position(scores[method], rankable),
        }
    # ONE deletion curve per method through the union of the AOPC and plot fractions,
    # all methods in shared batches: the AOPC is the trapezoid area of its points at
    # the AOPC fractions, exactly what aopc() computes, without a second run
    fractions = sorted(set(settings.curve_fractions) | set(settings.aopc_fractions))
    curves = deletion_curves(model, ids, scores, fractions=fractions, target=target, settings=ablation)
    for method, curve in curves.items():
        deltas = dict(zip(curve.fractions, curve.deltas))
        aopc_deltas = [deltas[f] for f in settings.aopc_fractions]
        entries[method].update(
            aopc=trapezoid_area(settings.aopc_fractions, aopc_deltas),
            deltas=aopc_deltas,
            curve=[deltas[f] for f in settings.curve_fractions],
        )
        if loo is not None:
            entries[method]["loo"] = finite_or_none(asdict(loo_agreement(scores[method], loo)))
    # the same rankings under the other deletion operators, at the AOPC's fractions only
    for mode in settings.extra_ablations:
        other = replace(ablation, mode=mode)
        curves = deletion_curves(model, ids, scores, fractions=list(settings.aopc_fractions), target=target,
                                 settings=other)
        for method, curve in curves.items():
            deltas = list(curve.deltas)
            entries[method].setdefault("ablations", {})[mode] = {
                "aopc": trapezoid_area(settings.aopc_fractions, deltas), "deltas": deltas}
    return entries


# ====================================================================== command line
def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of :func:`main`."""
    parser = benchmark_parser(
        "faithfulness", prog,
        "Faithfulness benchmark of the Jacobian Scopes paper: AOPC by deletion (and optional "
        "leave-one-out agreement) of the scopes and Captum baselines on LAMBADA passages.",
        epilog='Several processes: CUDA_VISIBLE_DEVICES="" accelerate launch --multi_gpu --num_processes 2 '
        "benchmarks/faithfulness.py ... (or torchrun --nproc_per_node 2 ...). Reruns resume.",
    )
    parser.add_argument("--curve-fractions", default=",".join(map(str, BENCH_CURVE_FRACTIONS)),
                        help="fractions of the plotted deletion curve, comma-separated in [0, 1] "
                        "(default 0,0.05,...,0.5; fewer is faster, the AOPC's are always computed)")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated among {', '.join(METHODS)}, or all = {', '.join(DEFAULT_METHODS)} "
                        "(default all)")
    parser.add_argument("--loo-n", type=int, default=0,
                        help="leave-one-out agreement on the first K prompts after --offset (default 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random method and Fisher probes (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, help="ablated variants per forward (default 16)")
    parser.add_argument("--extra-ablations", default="", metavar="MODE[,MODE]",
                        help="deletion operators besides the zero embedding whose AOPC is also recorded: "
                        f"{', '.join(m for m in ABLATION_MODES if m != 'zero')} (default: none)")
    parser.add_argument("--combine", default=None, metavar="DIR,DIR[,...]",
                        help="join the records of runs of different methods on the same prompts into --out "
                        "(paired tables across them) and report; unfinished runs give a partial report")
    return parser


def _check_args(args: argparse.Namespace) -> tuple[str, ...]:
    methods = parse_methods(args.methods)
    for name in ("n", "loo_n", "batch_size", "threads"):
        value = getattr(args, name)
        low = 0 if name == "loo_n" else 1
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.offset < 0:
        raise ValueError(f"--offset must be >= 0, got {args.offset}")
    if args.combine and (args.out is None or args.report_only):
        raise ValueError("--combine needs --out (the combined run's folder) and excludes --report-only")
    parse_fractions(args.curve_fractions)
    parse_extra_ablations(args.extra_ablations)
    return methods


def parse_extra_ablations(text: str) -> tuple[str, ...]:
    """``"token,mask"`` -> ("token", "mask"); a one-line ValueError for another mode."""
    modes = tuple(dict.fromkeys(m.strip() for m in str(text or "").split(",") if m.strip()))
    bad = [m for m in modes if m not in ABLATION_MODES or m == "zero"]
    if bad:
        raise ValueError(f"--extra-ablations: unknown mode(s) {', '.join(bad)}; choose among "
                         f"{', '.join(m for m in ABLATION_MODES if m != 'zero')}")
    return modes


def _device(choice: Optional[str]) -> str:
    if choice is not None:
        return choice
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def run_settings(args: argparse.Namespace, methods: tuple[str, ...]) -> dict:
    """The settings a run stores in its ``run.json`` (a rerun into the folder must ask the same
    to resume it): parsed arguments and the checked methods -> JSON-ready dict."""
    meta = {
        "benchmark": "faithfulness",
        "format": RECORD_FORMAT,
        "model": model_id(args.model),
        "data": data_id(args.data),
        "dtype": args.dtype,
        "methods": list(methods),
        "loo_n": args.loo_n,
        "seed": args.seed,
        "aopc_fractions": list(AOPC_FRACTIONS),
        "curve_fractions": list(parse_fractions(args.curve_fractions)),
        "ablation": "zero",
    }
    extra = parse_extra_ablations(args.extra_ablations)
    if extra:  # only then: runs made before the option resume with the same settings
        meta["extra_ablations"] = list(extra)
    return meta


def _run(args: argparse.Namespace, methods: tuple[str, ...], out_dir: Path) -> dict:
    prompts = load_prompts(args.data, args.n, offset=args.offset)
    meta = run_settings(args, methods)
    settings = Settings(
        methods=methods,
        loo_ids=frozenset(p.id for p in prompts[: args.loo_n]),
        seed=args.seed,
        curve_fractions=tuple(meta["curve_fractions"]),
        batch_size=args.batch_size,
        extra_ablations=tuple(meta.get("extra_ablations", ())),
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=_device(args.device), progress=False)
    if any(METHODS[m].options.get("baseline") in ("token", "mean") for m in methods):
        out_dir.mkdir(parents=True, exist_ok=True)
        # beside run.json, not in it: a resumed run's settings stay what they were
        write_json_atomic(out_dir / IG_BASELINES_FILE, describe_ig_baselines(model, tokenizer))
    path = run_sharded(
        prompts,
        lambda prompt: evaluate_prompt(model, tokenizer, prompt, settings),
        out_dir,
        desc="faithfulness",
        size_flag="--n",
        meta=meta,
        overwrite=args.overwrite,
    )
    if os.environ.get("RANK", "0") != "0":  # one process writes the report
        return {}
    return write_report(out_dir, read_records(path))


def _print_summary(summary: dict, out_dir: Path) -> None:
    print(f"{summary['n_prompts']} prompts; AOPC (more negative = more faithful), mean attribution time:")
    for m, s in summary["methods"].items():
        print(f"  {m:13s} {format_number(s['aopc_mean']):>7s} ± {format_number(s['aopc_sem'])}   {s['time_mean_s']:.3f} s")
    print(f"report: {out_dir / 'report.md'}")


def main(argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
    """Run the benchmark (or rebuild its report); returns the exit status
    (0 ok, 2 bad arguments or input, e.g. an unknown method or unreadable dataset).

    Args:
        argv: the arguments (default ``sys.argv[1:]``); see ``--help``.
        prog: program name shown in the usage (e.g. "jscopes bench faithfulness").
    """
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a syntax error argparse already explained
        return stop.code if isinstance(stop.code, int) else 2
    try:
        methods = _check_args(args)
        out_dir = Path(args.out) if args.out else results_dir("faithfulness", args.model)
        if args.combine:
            summary = combine_runs([Path(d) for d in args.combine.split(",") if d], out_dir)
        elif args.report_only:
            summary = write_report(out_dir)
        else:
            summary = _run(args, methods, out_dir)
    except (ValueError, ModelNotAvailableError) as err:
        print(f"faithfulness benchmark: error: {cli_message(err)}", file=sys.stderr)
        return 2
    if summary:
        _print_summary(summary, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
