"""Deletion and insertion metrics of one prompt: the paper's AOPC, deletion /
insertion curves with their areas, and ERASER comprehensiveness / sufficiency.

Each ranks the rankable tokens by a score vector (of any method), removes (or
keeps) the top ``max(1, floor(f * m))`` of them for each fraction f and reads
the model's probability of y* (the intact prompt's top-1 prediction unless a
``target`` is given). All take ``settings=`` (:class:`AblationSettings`) or its
fields as keyword overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.tokens import TargetLike
from captum_jscopes.metrics.ablation import AblatedPrompt, n_tokens_for_fraction, rank_tokens
from captum_jscopes.metrics.checks import Scores, check_fractions, check_order, check_scores
from captum_jscopes.metrics.settings import AblationSettings

__all__ = [
    "AOPC_FRACTIONS",
    "AOPCResult",
    "CURVE_FRACTIONS",
    "CurveResult",
    "ERASER_FRACTIONS",
    "EraserResult",
    "aopc",
    "comprehensiveness",
    "deletion_curve",
    "deletion_curves",
    "insertion_curve",
    "sufficiency",
    "trapezoid_area",
]

AOPC_FRACTIONS = (0.05, 0.10, 0.20)  # the paper's
CURVE_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ERASER_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)  # DeYoung et al. 2020


# ====================================================================== results
@dataclass(frozen=True)
class AOPCResult:
    """AOPC of one prompt.

    Attributes:
        aopc: trapezoid area of the deltas over the fractions, unnormalised
            (:func:`trapezoid_area`); for (0.05, 0.10, 0.20) it is
            0.025 (D5 + D10) + 0.05 (D10 + D20). More negative = more faithful.
        fractions: the fractions, ascending.
        n_ablated: tokens ablated at each fraction, ``max(1, floor(f * m))``.
        deltas: ``log p_ablated(y*) - log p_orig(y*)`` at each fraction.
        target: y*, the explained token id.
        log_prob: ``log p_orig(y*)``.
        n_rankable: m, the number of rankable tokens.
    """

    aopc: float
    fractions: tuple[float, ...]
    n_ablated: tuple[int, ...]
    deltas: tuple[float, ...]
    target: int
    log_prob: float
    n_rankable: int


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve of one prompt.

    Attributes:
        kind: "deletion" (tokens removed from the intact prompt) or "insertion"
            (tokens restored into the prompt with every rankable token ablated).
        order: "most" (most relevant first) or "least".
        fractions: the fractions, ascending (0 allowed: nothing removed /
            nothing restored).
        n_tokens: tokens removed (deletion) or restored (insertion) at each
            fraction: 0 for f = 0, else ``max(1, floor(f * m))``.
        log_probs: ``log p(y*)`` at each point.
        probs: ``p(y*)`` at each point.
        deltas: ``log_probs - log p_orig(y*)``.
        area: trapezoid area of ``deltas`` over ``fractions`` (unnormalised, the
            AOPC convention). Deletion: more negative = more faithful.
            Insertion: closer to 0 (higher) = more faithful.
        prob_area: trapezoid area of ``probs`` (the usual deletion / insertion
            AUC when the fractions span [0, 1]).
        target: y*.
        log_prob: ``log p_orig(y*)``.
        n_rankable: m.
    """

    kind: str
    order: str
    fractions: tuple[float, ...]
    n_tokens: tuple[int, ...]
    log_probs: tuple[float, ...]
    probs: tuple[float, ...]
    deltas: tuple[float, ...]
    area: float
    prob_area: float
    target: int
    log_prob: float
    n_rankable: int


@dataclass(frozen=True)
class EraserResult:
    """ERASER comprehensiveness or sufficiency of one prompt (on probabilities).

    Attributes:
        metric: "comprehensiveness" or "sufficiency".
        fractions: the bins, ascending.
        n_tokens: top tokens removed (comprehensiveness) or kept (sufficiency)
            per bin, ``max(1, floor(f * m))``.
        values: ``p(y*|x) - p(y*|x')`` per bin.
        mean: average of ``values`` over the bins. Comprehensiveness: higher =
            more faithful; sufficiency: lower = more faithful.
        prob: ``p(y*|x)`` on the intact prompt.
        target: y*.
        n_rankable: m.
    """

    metric: str
    fractions: tuple[float, ...]
    n_tokens: tuple[int, ...]
    values: tuple[float, ...]
    mean: float
    prob: float
    target: int
    n_rankable: int


def trapezoid_area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Unnormalised trapezoid area ``sum_i (f[i+1] - f[i]) (v[i] + v[i+1]) / 2``.

    For fractions (0.05, 0.10, 0.20) and deltas (D5, D10, D20) this is the
    paper's AOPC ``0.025 (D5 + D10) + 0.05 (D10 + D20)``. One point gives 0.
    """
    if len(fractions) != len(values):
        raise ValueError(f"{len(fractions)} fractions but {len(values)} values")
    return float(
        sum((fractions[i + 1] - fractions[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(values) - 1))
    )


# ============================================================ metrics
def aopc(
    model: nn.Module, input_ids: Tensor, scores: Scores, *, position: int = -1,
    fractions: Sequence[float] = AOPC_FRACTIONS, target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None, **ablation: Any,
) -> AOPCResult:
    """The paper's AOPC (deletion, most relevant first) of one prompt.

    Rank the rankable tokens by score; for each fraction f ablate the top
    ``max(1, floor(f * m))``; ``D_f = log p_ablated(y*) - log p_orig(y*)``;
    AOPC = :func:`trapezoid_area` of the D_f over the fractions (unnormalised),
    which for the default (0.05, 0.10, 0.20) is 0.025 (D5 + D10) + 0.05 (D10 + D20).

    Args:
        model: a Hugging Face causal LM (not modified).
        input_ids: (n,) or (1, n) token ids.
        scores: (n,) scores of any method; higher = more relevant. Scores of
            non-rankable tokens are ignored.
        position: explained position. Default -1 (the last token).
        fractions: at least two values in (0, 1]. Default (0.05, 0.10, 0.20).
        target: explain this token instead of y* (id, or a one-token string
            with ``tokenizer`` set).
        settings: :class:`AblationSettings`; default "zero" mode (the paper's),
            special tokens kept, batches of 16.
        **ablation: overrides of single settings: ``mode``, ``tokenizer``,
            ``include_special``, ``replacement_id``, ``batch_size``.
    Returns:
        :class:`AOPCResult`. More negative ``aopc`` = more faithful.
    """
    fractions = check_fractions(fractions, allow_zero=False)
    if len(fractions) < 2:
        raise ValueError(f"AOPC is an area: give at least two fractions, got {fractions}")
    curve = deletion_curve(
        model, input_ids, scores, position=position, fractions=fractions, target=target,
        settings=AblationSettings.of(settings, **ablation),
    )
    return AOPCResult(
        aopc=curve.area,
        fractions=curve.fractions,
        n_ablated=curve.n_tokens,
        deltas=curve.deltas,
        target=curve.target,
        log_prob=curve.log_prob,
        n_rankable=curve.n_rankable,
    )


def deletion_curve(
    model: nn.Module, input_ids: Tensor, scores: Scores, *, position: int = -1,
    fractions: Sequence[float] = CURVE_FRACTIONS, order: str = "most", target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None, **ablation: Any,
) -> CurveResult:
    """log p(y*) as the top-ranked tokens are removed from the intact prompt.

    Args:
        fractions: values in [0, 1]; f removes ``max(1, floor(f * m))`` tokens
            (0 removes none). Default 0, 0.1, ..., 1.
        order: "most" (most relevant first, default: a faithful method drops
            fast) or "least" (least relevant first: a faithful method stays flat).
        Other arguments as in :func:`aopc`.
    Returns:
        :class:`CurveResult` with kind "deletion". At fractions (0.05, 0.1, 0.2)
        and order "most", ``area`` equals the AOPC.
    """
    return _curves("deletion", model, input_ids, {"": scores}, position, fractions, order, target,
                   AblationSettings.of(settings, **ablation))[""]


def insertion_curve(
    model: nn.Module, input_ids: Tensor, scores: Scores, *, position: int = -1,
    fractions: Sequence[float] = CURVE_FRACTIONS, order: str = "most", target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None, **ablation: Any,
) -> CurveResult:
    """log p(y*) as the top-ranked tokens are restored into the prompt with all
    rankable tokens ablated (special tokens and tokens after ``position`` stay).

    Args:
        fractions: values in [0, 1]; f restores ``max(1, floor(f * m))`` tokens
            (0 restores none; 1 gives back the intact prompt, delta 0).
            Default 0, 0.1, ..., 1.
        order: "most" (most relevant restored first, default) or "least".
        Other arguments as in :func:`aopc`. y* is the INTACT prompt's top-1.
    Returns:
        :class:`CurveResult` with kind "insertion": a faithful method climbs
        back fast, i.e. a higher (closer to 0) ``area``.
    """
    return _curves("insertion", model, input_ids, {"": scores}, position, fractions, order, target,
                   AblationSettings.of(settings, **ablation))[""]


def deletion_curves(
    model: nn.Module, input_ids: Tensor, scores: Mapping[str, Scores], *, position: int = -1,
    fractions: Sequence[float] = CURVE_FRACTIONS, order: str = "most", target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None, **ablation: Any,
) -> dict[str, CurveResult]:
    """:func:`deletion_curve` of several score vectors of one prompt (one per
    method) at once: one intact forward for all, the ablated variants of every
    method in the same batches, and an ablation two methods share run once.

    Args:
        scores: name -> (n,) score vector (a method's attribution).
        Other arguments as in :func:`deletion_curve`.
    Returns:
        name -> :class:`CurveResult`, equal to ``deletion_curve`` of each score
        vector up to batching round-off (~1e-7).
    """
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError("scores must be a non-empty mapping: method name -> score vector")
    return _curves("deletion", model, input_ids, scores, position, fractions, order, target,
                   AblationSettings.of(settings, **ablation))


def _curves(
    kind: str,
    model: nn.Module,
    input_ids: Any,
    scores_by_name: Mapping[str, Scores],
    position: Any,
    fractions: Any,
    order: Any,
    target: Optional[TargetLike],
    settings: AblationSettings,
) -> dict[str, CurveResult]:
    """The curves of every score vector; name "" stands for a single vector."""
    fractions = check_fractions(fractions, allow_zero=True)
    order = check_order(order)
    with preserved_state(model, grad=False):
        prompt = AblatedPrompt.prepare(model, input_ids, position, settings, target)
        checked = [check_scores(s, prompt.n, f"scores[{name!r}]" if name else "scores")
                   for name, s in scores_by_name.items()]
        counts = tuple(n_tokens_for_fraction(f, prompt.m) for f in fractions)
        ranked = [rank_tokens(s, prompt.rankable, order) for s in checked]
        # every method's variants in one call: shared batches, shared rows run once
        log_probs = _points(prompt, ranked, counts, keep=kind == "insertion").split(len(counts))
    return {name: _curve_result(kind, order, fractions, counts, lp, prompt)
            for name, lp in zip(scores_by_name, log_probs)}


def _points(prompt: AblatedPrompt, rankings: Sequence[Tensor], counts: Sequence[int], keep: bool) -> Tensor:
    """log p(y*) with the top ``k`` ranked tokens ablated (``keep=False``) or
    with every rankable token ablated but them (``keep=True``), for each k of
    ``counts``: the R rankings' curves one after the other, (R * len(counts),)."""
    all_rankable = prompt.rankable.nonzero().flatten()
    sets = []
    for ranking in rankings:
        for k in counts:
            top = ranking[:k]
            sets.append(all_rankable[~torch.isin(all_rankable, top)] if keep else top)
    return prompt.run(prompt.masks(sets))[:, prompt.target]


def _curve_result(kind: str, order: str, fractions: tuple[float, ...], counts: tuple[int, ...],
                  log_probs: Tensor, prompt: AblatedPrompt) -> CurveResult:
    deltas = tuple(float(lp) - prompt.log_prob for lp in log_probs)
    probs = tuple(math.exp(float(lp)) for lp in log_probs)
    return CurveResult(
        kind=kind,
        order=order,
        fractions=fractions,
        n_tokens=counts,
        log_probs=tuple(float(lp) for lp in log_probs),
        probs=probs,
        deltas=deltas,
        area=trapezoid_area(fractions, deltas),
        prob_area=trapezoid_area(fractions, probs),
        target=prompt.target,
        log_prob=prompt.log_prob,
        n_rankable=prompt.m,
    )


# ============================================================ ERASER
def comprehensiveness(
    model: nn.Module, input_ids: Tensor, scores: Scores, *, position: int = -1,
    fractions: Sequence[float] = ERASER_FRACTIONS, target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None, **ablation: Any,
) -> EraserResult:
    """ERASER comprehensiveness: ``p(y*|x) - p(y*|x without its top-k% tokens)``
    per bin, averaged over the bins. Uses PROBABILITIES (as ERASER does), not
    log-probabilities like AOPC. Higher = the top tokens matter more = more
    faithful.

    Args:
        fractions: bins in (0, 1]; default (0.01, 0.05, 0.10, 0.20, 0.50), each
            removing ``max(1, floor(f * m))`` tokens.
        Other arguments as in :func:`aopc`.
    """
    return _eraser("comprehensiveness", model, input_ids, scores, position, fractions, target,
                   AblationSettings.of(settings, **ablation))


def sufficiency(
    model: nn.Module, input_ids: Tensor, scores: Scores, *, position: int = -1,
    fractions: Sequence[float] = ERASER_FRACTIONS, target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None, **ablation: Any,
) -> EraserResult:
    """ERASER sufficiency: ``p(y*|x) - p(y*|only the top-k% tokens kept)`` per
    bin, averaged over the bins. "Only kept" ablates every other rankable token;
    special tokens (BOS) stay. Uses PROBABILITIES (as ERASER does). Lower = the
    top tokens alone suffice = more faithful (it can be negative).

    Args:
        fractions: bins in (0, 1]; default (0.01, 0.05, 0.10, 0.20, 0.50), each
            keeping ``max(1, floor(f * m))`` tokens.
        Other arguments as in :func:`aopc`.
    """
    return _eraser("sufficiency", model, input_ids, scores, position, fractions, target,
                   AblationSettings.of(settings, **ablation))


def _eraser(metric: str, model: nn.Module, input_ids: Any, scores: Scores, position: Any,
            fractions: Any, target: Optional[TargetLike], settings: AblationSettings) -> EraserResult:
    # comprehensiveness removes the top tokens (a deletion curve); sufficiency
    # keeps only them (an insertion curve)
    kind = "deletion" if metric == "comprehensiveness" else "insertion"
    fractions = check_fractions(fractions, allow_zero=False, name="bins")
    curve = _curves(kind, model, input_ids, {"": scores}, position, fractions, "most", target, settings)[""]
    prob = math.exp(curve.log_prob)
    values = tuple(prob - p for p in curve.probs)
    return EraserResult(
        metric=metric,
        fractions=curve.fractions,
        n_tokens=curve.n_tokens,
        values=values,
        mean=sum(values) / len(values),
        prob=prob,
        target=curve.target,
        n_rankable=curve.n_rankable,
    )
