"""Leave-one-out influence, the ground truth the paper compares attributions
with: ablate each token alone and measure how far the next-token distribution
moves (KL divergence), then score a method by how well its ranking agrees."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from scipy import stats
from torch import Tensor, nn

from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.metrics.ablation import AblatedPrompt, n_tokens_for_fraction, rank_tokens
from captum_jscopes.metrics.checks import Scores, as_real_vector, check_fractions, check_scores
from captum_jscopes.metrics.settings import AblationSettings

__all__ = ["LeaveOneOutResult", "LooAgreement", "leave_one_out", "loo_agreement", "single_token_kl"]


@dataclass(frozen=True)
class LeaveOneOutResult:
    """Leave-one-out influence of each token of one prompt.

    Attributes:
        kl: (n,) float64 CPU tensor, ``KL(P_orig || P_ablated)`` at ``position``
            when that token alone is ablated; 0 for tokens that are not rankable.
        rankable: (n,) bool CPU tensor, the tokens that were ablated.
        position: the explained position, non-negative.
        target: y*, the intact prompt's top-1 prediction (the KL uses the whole
            distribution; y* is for reference).
        mode: the ablation mode.
    """

    kl: Tensor
    rankable: Tensor
    position: int
    target: int
    mode: str


@dataclass(frozen=True)
class LooAgreement:
    """How a score vector agrees with leave-one-out influence, over the rankable
    tokens of one prompt.

    Attributes:
        spearman: Spearman rho (NaN if either vector is constant or m < 2).
        kendall: Kendall tau-b (NaN likewise).
        top1_percentile: ``100 * r / m`` where r is the number of tokens whose
            LOO influence is strictly greater than that of the method's top-1
            token. 0 = the method's top token is the LOO top token; lower is
            better; random scores average ``50 (m - 1) / m``.
        top_jaccard: Jaccard overlap |A & B| / |A | B| of the method's and the
            LOO's top ``max(1, floor(top_fraction * m))`` tokens.
        top_fraction: the fraction used for ``top_jaccard`` (default 0.10).
        n_tokens: m, the number of tokens compared.
    """

    spearman: float
    kendall: float
    top1_percentile: float
    top_jaccard: float
    top_fraction: float
    n_tokens: int


def leave_one_out(
    model: nn.Module,
    input_ids: Tensor,
    *,
    position: int = -1,
    settings: Optional[AblationSettings] = None,
    **ablation: Any,
) -> LeaveOneOutResult:
    """Ground-truth influence of each token: ablate it alone and take
    ``KL(P_orig || P_ablated)`` of the next-token distributions at ``position``
    (float64 softmax). One forward per rankable token, run in batches.

    Args:
        model: a Hugging Face causal LM (not modified).
        input_ids: (n,) or (1, n) token ids.
        position: explained position. Default -1.
        settings, **ablation: as in :func:`captum_jscopes.metrics.aopc`.
    Returns:
        :class:`LeaveOneOutResult`; ``kl`` is 0 for tokens that are not rankable.
    """
    settings = AblationSettings.of(settings, **ablation)
    with preserved_state(model, grad=False):
        prompt = AblatedPrompt.prepare(model, input_ids, position, settings)
        kl = single_token_kl(prompt)
    return LeaveOneOutResult(
        kl=kl, rankable=prompt.rankable, position=prompt.position, target=prompt.target, mode=settings.mode
    )


def single_token_kl(prompt: AblatedPrompt) -> Tensor:
    """(n,) float64 ``KL(P_orig || P_without_t)`` for every rankable token t of a
    prepared prompt (each ablated alone), 0 for the others."""
    kl = torch.zeros(prompt.n, dtype=torch.float64)
    reference = prompt.log_probs
    # one batch at a time: all m x vocab log-probs at once would be ~1 GB for
    # a 1000-token prompt and a 128k vocabulary
    for chunk in prompt.rankable.nonzero().flatten().split(prompt.settings.batch_size):
        ablated = prompt.run(prompt.masks([t.view(1) for t in chunk]))
        kl[chunk] = (reference.exp() * (reference - ablated)).sum(-1)
    return kl.clamp_(min=0.0)  # float rounding can dip a tiny KL below 0


def loo_agreement(
    scores: Scores,
    loo: Union[LeaveOneOutResult, Tensor, Sequence[float]],
    *,
    rankable: Optional[Tensor] = None,
    top_fraction: float = 0.10,
) -> LooAgreement:
    """Agreement of a score vector with leave-one-out influence.

    Args:
        scores: (n,) scores of any method; higher = more relevant.
        loo: a :class:`LeaveOneOutResult` (its ``rankable`` tokens are compared)
            or an (n,) influence vector.
        rankable: (n,) bool, the tokens to compare; default the LOO result's
            ``rankable``, or every token for a plain vector.
        top_fraction: fraction in (0, 1] for the top-k Jaccard. Default 0.10.
    Returns:
        :class:`LooAgreement` (Spearman, Kendall, top-1 LOO percentile, top-k Jaccard).
    """
    if isinstance(loo, LeaveOneOutResult):
        influence = loo.kl
        if rankable is None:
            rankable = loo.rankable
    else:
        influence = as_real_vector(loo, "loo")
    n = influence.shape[0]
    s = check_scores(scores, n)
    if rankable is None:
        rankable = torch.ones(n, dtype=torch.bool)
    if not isinstance(rankable, Tensor) or rankable.dtype != torch.bool or rankable.shape != (n,):
        raise ValueError(f"rankable must be a bool tensor of shape ({n},)")
    rankable = rankable.cpu()
    m = int(rankable.sum())
    if m == 0:
        raise ValueError("no token to compare: rankable is all False")
    (top_fraction,) = check_fractions((top_fraction,), allow_zero=False, name="top_fraction")

    method_rank = rank_tokens(s, rankable)
    loo_rank = rank_tokens(influence, rankable)
    top1 = method_rank[0]
    above = int((influence[rankable] > influence[top1]).sum())
    k = n_tokens_for_fraction(top_fraction, m)
    a, b = set(method_rank[:k].tolist()), set(loo_rank[:k].tolist())
    x, y = s[rankable].numpy(), influence[rankable].numpy()
    return LooAgreement(
        spearman=_correlation(stats.spearmanr, x, y),
        kendall=_correlation(stats.kendalltau, x, y),
        top1_percentile=100.0 * above / m,
        top_jaccard=len(a & b) / len(a | b),
        top_fraction=top_fraction,
        n_tokens=m,
    )


def _correlation(fn, x, y) -> float:
    """A scipy rank correlation, NaN (without a warning) when undefined."""
    if len(x) < 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y)[0])
