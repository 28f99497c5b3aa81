"""The hutchinson estimator (the default of 0.2.0): the top k eigen-directions of F
exactly plus random-sign probes of the remainder, averaged; and :func:`choose_k`, its
split of the budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch
from torch import Tensor

from captum_jscopes.fisher.algebra import HEAD_MASS, path_cost, signs, tail_probes
from captum_jscopes.fisher.estimators.base import FisherProbes, ProbeEstimator, check_k
from captum_jscopes.fisher.estimators.factor import fisher_factor

logger = logging.getLogger(__name__)

__all__ = ["HutchinsonEstimator", "choose_k"]


@dataclass(frozen=True)
class HutchinsonEstimator(ProbeEstimator):
    """The top ``k`` eigen-directions exactly plus ``m`` random-sign combinations
    ``z = sum_{i>k} sqrt(l_i) e_i u_i`` (``e_i = +-1``) of the remainder, averaged.
    Unbiased; per-token coefficient of variation ``<= sqrt(2/m)``, 0 when the
    token's Jacobian is isotropic on the remainder; the standard error is the
    probes' spread. On the split path (large vocabularies) the tail of the
    vocabulary enters each probe as ``sum_c sqrt(p_c) e_c (g_c - mu)``, which keeps
    it unbiased for the full F; nothing d x d is formed.

    Args:
        k: eigen-directions kept exactly, or ``"auto"`` (default): the split of
            ``budget`` (``budget - n_probes`` when ``n_probes`` is given) that
            minimises the predicted error (:func:`choose_k`).
        n_probes: random-sign probes, an int >= 2. Default None: ``budget - k``
            (at least 2).
        budget: backward passes in all when neither ``k`` nor ``n_probes`` is
            given, an int >= 3. Default 40.
        head_mass: share of ``tr F`` the split path's head aims to hold. Default 0.999.
        max_head: at most this many head tokens on the split path. Default None: d.
    """

    name: ClassVar[str] = "hutchinson"
    summary: ClassVar[str] = ("top-k eigen-directions of F exactly + random-sign probes, unbiased, with a standard "
                              "error; 40 backward passes")
    randomised: ClassVar[bool] = True
    paths: ClassVar[tuple[str, ...]] = ("formed", "split")

    k: Union[int, str] = field(default="auto", metadata={
        "help": "eigen-directions kept exactly, or 'auto': the split of the budget chosen from the spectrum"})
    n_probes: Optional[int] = field(default=None, metadata={"help": "random-sign probes (budget - k)"})
    budget: int = field(default=40, metadata={"help": "backward passes in all (40)"})
    head_mass: float = field(default=HEAD_MASS, metadata={
        "help": f"share of tr F the split path's head aims to hold ({HEAD_MASS})"})
    max_head: Optional[int] = field(default=None, metadata={
        "help": "at most this many head tokens on the split path (d)"})

    def __post_init__(self) -> None:
        budget = self.budget
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 3:
            raise ValueError(f"budget must be an int >= 3, got {budget!r}")
        if self.k != "auto":
            check_k(self.k)
        n = self.n_probes
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 2):
            raise ValueError(f"n_probes must be an int >= 2 (their spread gives the error estimate), got {n!r}")

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        # mirrors _probes on the formed path (rank d); the split path's head has
        # rank N <= d and its tail is always sampled, so it never stops at d exact
        d, formed = hidden_size, path != "split"
        if self.k == "auto":
            if self.n_probes is None:
                return self.budget  # choose_k keeps >= 2 probes: the whole budget is spent
            k = max(0, min(d, self.budget - self.n_probes))
        else:
            k = min(self.k, d)
        if formed and k == d:
            return d
        return k + (self.n_probes if self.n_probes is not None else max(2, self.budget - k))

    def path_cost(self, path: str, vocab: int, hidden_size: int) -> float:
        # the split path: n_probes (else the budget) tail probes and a head of at most max_head (d) tokens
        return path_cost(path, vocab, hidden_size, n_probes=self.n_probes or self.budget, head=self.max_head)

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        k, n_probes, budget = self.k, self.n_probes, self.budget
        path = "formed" if fisher is not None else self.choose_path(forward, path)
        values, factor, rest_mass, tail, info = fisher_factor(
            forward, fisher, path, n_probes or budget, self.head_mass, self.max_head, vocab_chunk)
        rank = values.shape[-1]
        if k == "auto":
            if n_probes is not None:
                k = max(0, min(rank, budget - n_probes))
            else:
                k = choose_k(values, rest_mass, budget)
        k = min(k, rank)
        m = n_probes if n_probes is not None else max(2, budget - k)
        exact = factor[..., :k, :].movedim(-2, 0)  # (k, B, P, d)
        info.update({"k": k, "n_probes": m})
        if k == rank and tail is None:
            return FisherProbes(exact=exact, info={**info, "n_probes": 0})
        coefficients = signs((m, rank - k), seed).to(factor)  # the same draws at every position
        sampled = torch.einsum("mi,bpid->mbpd", coefficients, factor[..., k:, :])
        if tail is not None:
            mean, head_ids = tail
            # seed + 1: the tail's draws are independent of the head's
            sampled = sampled + tail_probes(forward, mean, head_ids, signs((m, forward.weight.shape[0]), seed + 1),
                                            vocab_chunk)
        logger.debug("Fisher probes: %s", info)
        return FisherProbes(exact=exact, sampled=sampled, average=True, info=info)


def choose_k(values: Tensor, rest_mass: Tensor, budget: int) -> int:
    """The split of ``budget`` backward passes into exact directions and probes
    that minimises the predicted error of the hutchinson remainder estimate.

    For ``m`` random-sign probes of a remainder with eigenvalues ``l_i`` the
    per-token variance is ``(2/m) sum_{i != j} l_i l_j (u_i^T J J^T u_j)^2``;
    with exchangeable off-diagonal terms that is proportional to
    ``(R_k^2 - Q_k) / (budget - k)``, ``R_k`` (``Q_k``) the sum of the remaining
    eigenvalues (squares). ``values`` (B, P, r) descending; ``rest_mass`` (B, P) is the
    part of tr F beyond them (the sampled tail). The mean of the predicted relative
    variance over positions is minimised, keeping at least 2 probes."""
    values = values.double()
    r = values.shape[-1]
    total = values.sum(-1) + rest_mass.double()
    best, best_cost = 0, float("inf")
    for k in range(0, min(r, budget - 2) + 1):
        rest = values[..., k:]
        mass = rest.sum(-1) + rest_mass.double()
        squares = rest.pow(2).sum(-1)
        cost = float((((mass.pow(2) - squares).clamp(min=0) / (budget - k)) / total.pow(2).clamp_min(1e-300)).mean())
        if cost < best_cost * (1 - 1e-9):
            best, best_cost = k, cost
    return best
