"""When to trust a map: the attention-sink artifact against leave-one-out ground
truth, and each token's validity radius, over LAMBADA prompts.

Run it with ``jscopes bench trust ...`` (``--help`` lists the options). Per prompt,
for the prompt as the tokenizer makes it and for the same prompt with its BOS
flipped (prepended where the tokenizer adds none, as SmolLM2's; removed where it
adds one, as Gemma's):

1. the three scopes' maps for the model's own prediction y*, special tokens
   scored (``exclude_special_tokens=False``), on the prompt and on a content-free
   copy of it (its ordinary tokens shuffled, seeded by the prompt id, special
   tokens in place): the copy shows what position alone earns;
2. leave-one-out KL of every token up to the explained one, by zeroing its
   embedding and by masking it, and the joint ablation of the special tokens
   and of the first ``--k`` ordinary tokens
   (:func:`captum_jscopes.metrics.sink_report`);
3. :func:`captum_jscopes.linearity_check` of the Semantic and Temperature
   Scopes on ``--radius-tokens`` tokens (the top 4 by score, the first ordinary
   token and seeded others), and of the Fisher Scope (exact, ``"paired"``
   reference: d backward passes) on the first ``--fisher-radius-n`` prompts,
   prompt as tokenised only.

The records keep the raw per-token vectors, so the report
(:mod:`captum_jscopes.bench.trust_report`) computes sink shares for any group and
the position-profile correction study from them without the model. Outputs in
``--out`` (default ``benchmarks/results/trust-<model>``): the runner's files
(resumable, settings checked), then ``trust.md``, ``trust.json`` and figures.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from captum_jscopes.analysis.linearity import DEFAULT_EPSILONS, linearity_check
from captum_jscopes.metrics import sink_report
from captum_jscopes.scopes.registry import SCOPES
from captum_jscopes.core.tokens import special_tokens_mask
from captum_jscopes.bench.common import (benchmark_main, benchmark_parser,
                                         data_id, load_benchmark_model, model_id, results_dir)
from captum_jscopes.runs.prompts import Prompt, load_prompts, prepare_prompt
from captum_jscopes.runs.runner import read_records, run_sharded

__all__ = ["TrustSettings", "evaluate_prompt", "flip_bos", "shuffled_copy", "build_parser", "main"]

RECORD_FORMAT = 1
#: the study's scopes: the three built-in ones (the committed runs hold their maps)
_STUDIED = ("semantic", "temperature", "fisher")
SCOPE_CLASSES = {name: SCOPES[name] for name in _STUDIED}
#: the two versions of each prompt: as tokenised, and with the BOS flipped
VARIANTS = ("as_tokenised", "bos_flipped")


@dataclass(frozen=True)
class TrustSettings:
    """What one run computes per prompt.

    Attributes:
        k: ordinary tokens in the sink report's ``"first_k"`` group. Default 3.
        radius_tokens: tokens checked per prompt by the Semantic and Temperature
            linearity checks (0: none). Default 8.
        fisher_radius_ids: ids of the prompts whose Fisher map is also checked.
        tol: the linearity checks' tolerance. Default 0.1.
        batch_size: ablated or perturbed prompts per forward. Default 16.
        seed: seeds the shuffles, the token samples, the Fisher probes and draws.
        radii_variants: the variants whose radii are checked: ``VARIANTS`` (both,
            default) or ``("as_tokenised",)``, which halves the radii's cost (on a
            262k vocabulary they are a third of a prompt's time).
    """

    k: int = 3
    radius_tokens: int = 8
    fisher_radius_ids: frozenset = frozenset()
    tol: float = 0.1
    batch_size: int = 16
    seed: int = 0
    radii_variants: tuple = VARIANTS


def flip_bos(ids: Tensor, bos_id: Optional[int]) -> Optional[Tensor]:
    """(1, n) ids with the leading BOS removed, or prepended if there is none;
    None when the tokenizer has no BOS token to prepend."""
    if ids.shape[1] > 1 and bos_id is not None and int(ids[0, 0]) == bos_id:
        return ids[:, 1:]
    if bos_id is None:
        return None
    return torch.cat([torch.tensor([[bos_id]], dtype=ids.dtype), ids], dim=1)


def shuffled_copy(ids: Tensor, special: Tensor, seed: int) -> Tensor:
    """(1, n) ids with the ordinary tokens permuted (seeded), special tokens and
    the explained last token in place: the same tokens without their order, a
    content-free prompt whose map shows what each position earns by itself."""
    out = ids.clone()
    movable = (~special[0]).nonzero().flatten()
    movable = movable[movable != ids.shape[1] - 1]
    generator = torch.Generator().manual_seed(seed)
    out[0, movable] = ids[0, movable[torch.randperm(len(movable), generator=generator)]]
    return out


def _prompt_seed(seed: int, prompt_id: str) -> int:
    # a stable per-prompt seed (Python's hash() of a str changes between processes)
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(prompt_id)) % 1_000_003


def _maps(scopes: dict[str, Any], ids: Tensor, target: int, seed: int) -> dict[str, list[float]]:
    out = {}
    for name, scope in scopes.items():
        options = {"target": target} if scope.takes_target else {}
        if scope.randomised(scope.make_options()):
            options["seed"] = seed
        out[name] = scope.attribute(ids, exclude_special_tokens=False, **options)[0].double().cpu().tolist()
    return out


def _radius_tokens(scores: Tensor, special: Tensor, count: int, seed: int) -> list[int]:
    """The top 4 tokens by score, the first ordinary token, then seeded others (ordinary, score > 0)."""
    usable = ((scores > 0) & ~special).nonzero().flatten().tolist()
    if count == 0 or not usable:
        return []
    chosen = sorted(usable, key=lambda t: -float(scores[t]))[:4] + usable[:1]
    rest = [t for t in usable if t not in chosen]
    generator = torch.Generator().manual_seed(seed)
    rest = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
    return sorted(list(dict.fromkeys(chosen + rest))[:count])


def _radii(scope: Any, ids: Tensor, target: Optional[int], tokens: list[int], settings: TrustSettings,
           **check: Any) -> dict:
    result = linearity_check(scope, ids, target=target, tokens=tokens, tol=settings.tol, seed=settings.seed,
                             batch_size=settings.batch_size, scope_options={"exclude_special_tokens": False}, **check)
    checked = result.tokens.tolist()
    return {
        "tokens": checked,
        "radius": result.radius[checked].tolist(),
        "swap_distance": result.swap_distance[checked].tolist(),
        "limited_by_noise": result.limited_by_noise()[checked].tolist(),
        "scores": result.scores[checked].tolist(),
    }


def _evaluate_variant(model: nn.Module, tokenizer: Any, scopes: dict, ids: Tensor, seed: int, settings: TrustSettings,
                      fisher_radius: bool, radii: bool = True) -> dict:
    special = special_tokens_mask(ids, tokenizer, getattr(model, "config", None))
    report_ids = ids.to(model.get_input_embeddings().weight.device)
    with torch.no_grad():
        target = int(model(input_ids=report_ids).logits[0, -1].argmax())
    maps = _maps(scopes, report_ids, target, seed)
    shuffled = shuffled_copy(ids, special, seed)
    maps_shuffled = _maps(scopes, shuffled.to(report_ids.device), target, seed)
    report = sink_report(model, report_ids, torch.tensor(maps["semantic"]), k=settings.k, tokenizer=tokenizer,
                         batch_size=settings.batch_size)
    record: dict[str, Any] = {
        "n_tokens": ids.shape[1],
        "has_bos": bool(special[0, 0]),
        "special_positions": special[0].nonzero().flatten().tolist(),
        "target": target,
        "maps": maps,
        "shuffled_ids": shuffled[0].tolist(),
        "shuffled_maps": maps_shuffled,
        "loo_kl": {mode: kl.tolist() for mode, kl in report.loo_kl.items()},
        "joint": {f"{row.group}/{row.mode}": {"positions": list(row.positions), "kl": row.joint_kl,
                                              "prediction_changed": row.prediction_changed} for row in report.rows},
    }
    record["radii"] = {}
    if radii and settings.radius_tokens:
        record["radii"] = _variant_radii(scopes, report_ids, target, maps, special, seed, settings, fisher_radius)
    return record


def _variant_radii(scopes: dict, report_ids: Tensor, target: int, maps: dict, special: Tensor, seed: int,
                   settings: TrustSettings, fisher_radius: bool) -> dict:
    """Validity radii of each scope on a few tokens of its own map: the gradient
    checks always, the isotropic (Fisher) check only with ``fisher_radius`` (d
    backward passes for its paired reference)."""
    radii = {}
    for name, scope in scopes.items():
        isotropic = scope.perturbation == "isotropic"
        if isotropic and not fisher_radius:
            continue
        tokens = _radius_tokens(torch.tensor(maps[name]), special[0], settings.radius_tokens, seed)
        if not tokens:
            return radii  # the same tokens are usable for every map: none for one, none for all
        check = {"fisher_reference": "paired"} if isotropic else {}
        radii[name] = _radii(scope, report_ids, target if scope.takes_target else None, tokens, settings, **check)
    return radii


def evaluate_prompt(model: nn.Module, tokenizer: Any, prompt: Prompt, settings: TrustSettings) -> dict:
    """The record of one prompt: ``{"skipped": reason}`` for a passage too short,
    else ``true_token``, ``time_s`` and, per variant in :data:`VARIANTS` (the
    flipped one absent when the tokenizer has no BOS), ``n_tokens``, ``has_bos``,
    ``special_positions``, ``target`` (y*), ``maps`` and ``shuffled_maps``
    (scope -> per-token scores), ``shuffled_ids``, ``loo_kl`` (mode -> per-token
    KL), ``joint`` ("group/mode" -> positions, KL, whether y* changes) and
    ``radii`` (scope -> checked tokens, radius, swap distance, noise flag, score)."""
    start = time.perf_counter()
    try:
        prepared = prepare_prompt(tokenizer, prompt.text)
    except ValueError as err:
        return {"skipped": str(err)}
    seed = _prompt_seed(settings.seed, prompt.id)
    scopes = {name: cls(model, tokenizer) for name, cls in SCOPE_CLASSES.items()}
    record: dict[str, Any] = {"true_token": prepared.true_token, "variants": {}}
    versions = {"as_tokenised": prepared.input_ids, "bos_flipped": flip_bos(prepared.input_ids, tokenizer.bos_token_id)}
    for name, ids in versions.items():
        if ids is None:
            continue
        fisher_radius = name == "as_tokenised" and prompt.id in settings.fisher_radius_ids
        record["variants"][name] = _evaluate_variant(model, tokenizer, scopes, ids, seed, settings, fisher_radius,
                                                     radii=name in settings.radii_variants)
    record["time_s"] = time.perf_counter() - start
    return record


# ====================================================================== command line
def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of :func:`main`."""
    parser = benchmark_parser(
        "trust", prog,
        "When to trust a map: attention-sink shares against leave-one-out ground truth, and "
        "validity radii, of the three scopes over LAMBADA passages (with and without a BOS).",
        n_default=50,
    )
    parser.add_argument("--k", type=int, default=3, help="ordinary tokens in the first-k group (default 3)")
    parser.add_argument("--radius-tokens", type=int, default=8,
                        help="tokens per prompt checked for their validity radius (default 8; 0: none)")
    parser.add_argument("--fisher-radius-n", type=int, default=4,
                        help="first prompts whose Fisher map is checked too (d backward passes each; default 4)")
    parser.add_argument("--radii-variants", choices=["both", "as_tokenised"], default="both",
                        help="variants whose radii are checked (default both; as_tokenised halves their cost)")
    parser.add_argument("--tol", type=float, default=0.1, help="relative-error tolerance of the radius (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=16, help="perturbed prompts per forward (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the shuffles, token samples and Fisher probes")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name, low in (("n", 1), ("k", 1), ("radius_tokens", 0), ("fisher_radius_n", 0), ("batch_size", 1),
                      ("offset", 0), ("threads", 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not 0 < args.tol < 1:
        raise ValueError(f"--tol must be in (0, 1), got {args.tol}")


def main(argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
    """Run the benchmark (or rebuild its report); returns the exit status (0 ok, 2 bad arguments or input)."""
    return benchmark_main("trust", build_parser(prog), argv, _run, "trust.md")


def _run(args: argparse.Namespace, out_dir: Path) -> dict:
    from captum_jscopes.bench.trust_report import write_trust_report

    _check_args(args)
    if args.report_only:
        return write_trust_report(out_dir)
    prompts = load_prompts(args.data, args.n, offset=args.offset)
    settings = TrustSettings(
        k=args.k, radius_tokens=args.radius_tokens, tol=args.tol, batch_size=args.batch_size, seed=args.seed,
        fisher_radius_ids=frozenset(p.id for p in prompts[: args.fisher_radius_n]),
        radii_variants=VARIANTS if args.radii_variants == "both" else ("as_tokenised",),
    )
    meta = {
        "benchmark": "trust", "format": RECORD_FORMAT, "model": model_id(args.model),
        "data": data_id(args.data), "dtype": args.dtype, "k": args.k, "radius_tokens": args.radius_tokens,
        "fisher_radius_n": args.fisher_radius_n,
        "radii_variants": args.radii_variants, "tol": args.tol, "seed": args.seed,
        "epsilons": list(DEFAULT_EPSILONS),
    }
    model, tokenizer = load_benchmark_model(args)
    path = run_sharded(prompts, lambda p: evaluate_prompt(model, tokenizer, p, settings), out_dir,
                       desc="trust", meta=meta, overwrite=args.overwrite, size_flag="--n")
    return write_trust_report(out_dir, read_records(path))


if __name__ == "__main__":
    raise SystemExit(main())
