"""The estimators of the Fisher score ``tr(J_t^T F J_t) = sum_i l_i ||u_i^T J_t||^2``,
one object each, on top of the F algebra of :mod:`captum_jscopes.fisher.algebra`.

Every estimator turns F into probe directions (:class:`FisherProbes`) whose squared
vector-Jacobian-product norms, one backward pass each, give the scores
(:func:`fisher_scores`):

============  =====================================================================
hutchinson    (default) the top ``k`` eigen-directions exactly plus random-sign
              probes of the remainder, averaged: unbiased, with a standard error;
              ``budget`` (40) backward passes, split by :func:`choose_k`
deflated      the top ``k`` (16) exactly plus ``n_probes`` (24) single remaining
              eigen-directions drawn in proportion to their eigenvalue
exact         every eigen-direction ``sqrt(l_i) u_i``: d backward passes
eig           the reference's truncation to the top ``k`` (1): biased low
============  =====================================================================

:data:`ESTIMATORS` is their table, :func:`estimator` builds one by name::

    found = estimator("deflated", k=8).probes(forward, seed=0)
    scores, error = fisher_scores(forward, found, chunk_size=32)

Each estimator holds its defaults once (its dataclass fields), knows its backward
passes per explained token (:meth:`FisherEstimator.backward_passes`) and whether
its result depends on the seed (``randomised``). The Fisher Scope
(:mod:`captum_jscopes.scopes.fisher`) builds one per call from its options.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward
from captum_jscopes.fisher.algebra import (
    HEAD_MASS,
    PATHS,
    choose_path,
    eigen,
    fisher_matrix,
    fisher_mean,
    head_rows,
    head_tokens,
    signs,
    tail_probes,
    top_eigenpairs,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FisherProbes",
    "FisherEstimator",
    "HutchinsonEstimator",
    "DeflatedEstimator",
    "ExactEstimator",
    "EigEstimator",
    "ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "estimator",
    "choose_k",
    "fisher_scores",
    "squared_norms",
    "probes",
]


@dataclass
class FisherProbes:
    """Directions whose squared VJP norms estimate the Fisher score.

    ``exact`` (k, B, P, d) count with weight 1. ``sampled`` (m, B, P, d):
    for ``"deflated"`` they count with weight 1 (pre-scaled importance samples;
    consecutive pairs of strata give the error estimate); for ``"hutchinson"``
    each one is an unbiased sample of the remainder, so they are averaged and
    their spread gives the standard error (``average=True``).
    ``info`` says which path ran and how the passes were split (``path``, ``k``,
    ``n_probes``, and the split path's ``head_tokens`` and ``head_share``).
    """

    exact: Tensor
    sampled: Optional[Tensor] = None
    average: bool = False
    info: dict = field(default_factory=dict)


# -- the estimators ------------------------------------------------------------------
@dataclass(frozen=True)
class FisherEstimator:
    """Base of the estimators: a frozen dataclass whose fields are the estimator's
    own options with their defaults. Subclasses set the class attributes and
    define :meth:`backward_passes` and :meth:`_probes`."""

    #: the name in :data:`ESTIMATORS`, the scope's ``estimator=`` and the JSON's ``fisher_method``
    name: ClassVar[str] = ""
    #: whether it draws probes: its result depends on the seed
    randomised: ClassVar[bool] = False
    #: whether its estimate is biased with no error estimate (the scope reports a NaN standard error)
    biased: ClassVar[bool] = False
    #: the ways to F it can take besides "auto" (see :data:`captum_jscopes.fisher.algebra.PATHS`)
    paths: ClassVar[tuple[str, ...]] = ("formed",)

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        """Backward passes per explained token on a model of width ``hidden_size``
        (d). ``path``: the Fisher path asked for; ``"auto"`` counts as formed
        (every model whose vocabulary makes forming F the cheaper way)."""
        raise NotImplementedError

    def probes(
        self,
        forward: Optional[ScopeForward] = None,
        *,
        fisher: Optional[Tensor] = None,
        seed: int = 0,
        path: str = "auto",
        vocab_chunk: int = 8192,
    ) -> FisherProbes:
        """The probe directions for ``forward``'s explained positions.

        Args:
            forward: the forward pass (its head, probabilities and hidden states);
                or None with ``fisher``.
            fisher: (B, P, d, d) a formed F (:func:`~captum_jscopes.fisher.algebra.fisher_matrix`);
                then the path is ``"formed"``. Default None: reached from ``forward``.
            seed: seeds the draws (default 0); the draws do not depend on the
                batch, so a batch gives the same scores as its prompts one at a time.
            path: ``"auto"`` (default: the cheaper by operation count) or one of
                the estimator's :attr:`paths`.
            vocab_chunk: vocabulary rows per step. Default 8192.
        """
        if path not in PATHS:
            raise ValueError(f"unknown Fisher path {path!r}; choose one of {', '.join(PATHS)}")
        if path != "auto" and path not in self.paths:
            raise ValueError(f"path {path!r} does not apply to method {self.name!r} (its paths: {', '.join(self.paths)})")
        if fisher is None and forward is None:
            raise ValueError("probes needs the Fisher matrix or the forward pass")
        return self._probes(forward, fisher, seed, path, vocab_chunk)

    def _probes(self, forward: Optional[ScopeForward], fisher: Optional[Tensor], seed: int, path: str,
                vocab_chunk: int) -> FisherProbes:
        raise NotImplementedError

    def options(self) -> dict:
        """The estimator's own options, name -> value (its dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_k(k: Any) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return k


def _top_directions(values: Tensor, vectors: Tensor, k: int) -> Tensor:
    """(k, B, P, d) ``sqrt(l_i) u_i`` of the top ``k`` eigenpairs (B, P, r), (B, P, d, r)."""
    return (vectors[..., :k] * values[..., None, :k].sqrt()).movedim(-1, 0)


@dataclass(frozen=True)
class ExactEstimator(FisherEstimator):
    """Every eigen-direction ``sqrt(l_i) u_i`` of the formed F: d backward passes,
    equal to the brute-force score. No options."""

    name: ClassVar[str] = "exact"

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        return hidden_size

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        if fisher is None:
            fisher = fisher_matrix(forward, vocab_chunk)
        values, vectors = eigen(fisher)
        d = values.shape[-1]
        return FisherProbes(exact=_top_directions(values, vectors, d), info={"path": "formed", "k": d, "n_probes": 0})


@dataclass(frozen=True)
class EigEstimator(FisherEstimator):
    """The reference's truncation to the top ``k`` eigen-directions: biased low by
    the dropped eigenvalues' share, no error estimate. ``k`` backward passes (at
    most d). On a large vocabulary the top ``k`` come matrix-free (subspace
    iteration on F X products, ``path="matrix_free"``).

    Args:
        k: eigen-directions kept. Default 1.
    """

    name: ClassVar[str] = "eig"
    biased: ClassVar[bool] = True
    paths: ClassVar[tuple[str, ...]] = ("formed", "matrix_free")

    k: int = 1

    def __post_init__(self) -> None:
        _check_k(self.k)

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        return min(self.k, hidden_size)

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        if fisher is None and choose_path(forward, path, "eig") == "matrix_free":
            values, vectors, info = top_eigenpairs(forward, self.k, seed=seed, vocab_chunk=vocab_chunk)
            exact = (vectors * values[..., None, :].sqrt()).movedim(-1, 0)
            return FisherProbes(exact=exact, info={"path": "matrix_free", "k": self.k, "n_probes": 0, **info})
        if fisher is None:
            fisher = fisher_matrix(forward, vocab_chunk)
        values, vectors = eigen(fisher)
        k = min(self.k, values.shape[-1])
        return FisherProbes(exact=_top_directions(values, vectors, k), info={"path": "formed", "k": k, "n_probes": 0})


@dataclass(frozen=True)
class DeflatedEstimator(FisherEstimator):
    """The top ``k`` eigen-directions of the formed F exactly plus ``n_probes``
    single eigen-directions of the remainder drawn in proportion to their
    eigenvalue (stratified, importance-weighted: each counts with weight
    ``remaining mass / n_probes``); neighbouring pairs of strata give the
    standard error. ``k + n_probes`` backward passes (d when ``k >= d``: then it
    is exact). Formed path only.

    Args:
        k: eigen-directions kept exactly. Default 16.
        n_probes: sampled directions, an even int >= 2. Default 24.
    """

    name: ClassVar[str] = "deflated"
    randomised: ClassVar[bool] = True

    k: int = 16
    n_probes: int = 24

    def __post_init__(self) -> None:
        _check_k(self.k)
        n = self.n_probes
        if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n % 2:
            raise ValueError(f"n_probes must be an even int >= 2 (pairs give the error estimate), got {n!r}")

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        return hidden_size if self.k >= hidden_size else self.k + self.n_probes

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        if fisher is None:
            fisher = fisher_matrix(forward, vocab_chunk)
        values, vectors = eigen(fisher)
        d = values.shape[-1]
        k = min(self.k, d)
        exact = _top_directions(values, vectors, k)  # (k, B, P, d)
        info = {"path": "formed", "k": k, "n_probes": 0}
        if k == d:
            return FisherProbes(exact=exact, info=info)
        n_probes = self.n_probes
        rest = values[..., k:]  # (B, P, d - k)
        mass = rest.sum(-1, keepdim=True)
        cdf = (rest / mass.clamp_min(torch.finfo(rest.dtype).tiny)).cumsum(-1)
        generator = torch.Generator().manual_seed(seed)
        strata = (torch.rand(n_probes, generator=generator, dtype=torch.float64) + torch.arange(n_probes)) / n_probes
        strata = strata.to(cdf).expand(*cdf.shape[:-1], n_probes).contiguous()
        index = torch.searchsorted(cdf, strata).clamp(max=d - k - 1)  # (B, P, m)
        chosen = vectors[..., k:].gather(-1, index[..., None, :].expand(*vectors.shape[:-1], n_probes))
        # weight l_i / p_i = mass / m for every draw: sqrt of it scales the unit eigenvectors
        sampled = (chosen * (mass[..., None, :] / n_probes).sqrt()).movedim(-1, 0)  # (m, B, P, d)
        return FisherProbes(exact=exact, sampled=sampled, info={**info, "n_probes": n_probes})


@dataclass(frozen=True)
class HutchinsonEstimator(FisherEstimator):
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
    randomised: ClassVar[bool] = True
    paths: ClassVar[tuple[str, ...]] = ("formed", "split")

    k: Union[int, str] = "auto"
    n_probes: Optional[int] = None
    budget: int = 40
    head_mass: float = HEAD_MASS
    max_head: Optional[int] = None

    def __post_init__(self) -> None:
        budget = self.budget
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 3:
            raise ValueError(f"budget must be an int >= 3, got {budget!r}")
        if self.k != "auto":
            _check_k(self.k)
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

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        k, n_probes, budget = self.k, self.n_probes, self.budget
        if fisher is not None:
            path = "formed"
        else:
            path = choose_path(forward, path, "hutchinson", n_probes or budget, self.max_head)
        tail = None
        if path == "formed":
            if fisher is None:
                fisher = fisher_matrix(forward, vocab_chunk)
            values, vectors = eigen(fisher)  # full spectrum: no tail
            # factor rows sqrt(l_i) u_i^T, (B, P, r, d)
            factor = (vectors * values[..., None, :].sqrt()).transpose(-1, -2)
            rest_mass = values.new_zeros(values.shape[:-1])
            info: dict = {"path": "formed"}
        else:
            mean = fisher_mean(forward, vocab_chunk)
            cap = self.max_head or forward.weight.shape[1]
            head_ids, contribution = head_tokens(forward, mean, self.head_mass, cap, vocab_chunk)
            rows = head_rows(forward, head_ids, mean)  # (B, P, N, d): F_head = rows^T rows
            gram = rows @ rows.transpose(-1, -2)  # (B, P, N, N)
            values, small = torch.linalg.eigh(gram)
            values, small = values.flip(-1).clamp(min=0), small.flip(-1)
            # sqrt(l_i) u_i = rows^T v_i: the head's eigen-directions, scaled, as rows (B, P, N, d)
            factor = small.transpose(-1, -2) @ rows
            total = contribution.sum(-1)
            rest_mass = (total - values.sum(-1)).clamp(min=0)
            tail = (mean, head_ids)
            info = {"path": "split", "head_tokens": int(head_ids.shape[-1]),
                    "head_share": float((values.sum(-1) / total.clamp_min(1e-300)).min())}
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


# -- the table -----------------------------------------------------------------------
#: name -> estimator class, in the order of the tables and of ``--fisher-method``
ESTIMATORS: dict[str, type[FisherEstimator]] = {
    cls.name: cls for cls in (HutchinsonEstimator, DeflatedEstimator, ExactEstimator, EigEstimator)
}
#: the estimator every entry point uses unless told otherwise: as accurate as "deflated" at the
#: same 40 backward passes (docs/fisher.md), unbiased with a per-token variance bound and standard
#: errors, and on large vocabularies (Gemma-3) its split path never forms the d x d matrix
DEFAULT_ESTIMATOR = "hutchinson"

# the names of 0.2.0, derived from the table so that nothing is written twice
METHODS = tuple(ESTIMATORS)
DEFAULT_METHOD = DEFAULT_ESTIMATOR
DEFAULT_BUDGET: int = HutchinsonEstimator.budget


def estimator(name: str = DEFAULT_ESTIMATOR, **options: Any) -> FisherEstimator:
    """The estimator ``name`` of :data:`ESTIMATORS` with ``options`` (its fields;
    the rest, and those given as None, keep their defaults)::

        estimator("eig", k=4)          # EigEstimator(k=4)
        estimator("hutchinson")        # HutchinsonEstimator(k='auto', n_probes=None, budget=40, ...)

    Raises:
        ValueError: an unknown name (the message lists the names) or a bad value.
        TypeError: an option the estimator does not take.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown Fisher method {name!r}; the estimators are {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[name]
    # None is "not given", so that a caller can pass k=..., n_probes=... to any estimator
    given = {option: value for option, value in options.items() if value is not None}
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"the {name} estimator takes no option {', '.join(unknown)} "
                        f"(its options: {', '.join(known) or 'none'})")
    return cls(**given)


def probes(
    fisher: Optional[Tensor] = None,
    method: str = DEFAULT_ESTIMATOR,
    *,
    forward: Optional[ScopeForward] = None,
    seed: int = 0,
    path: str = "auto",
    vocab_chunk: int = 8192,
    **options: Any,
) -> FisherProbes:
    """Shorthand for ``estimator(method, **options).probes(forward, fisher=fisher, ...)``:
    the probe directions of estimator ``method`` from a formed ``fisher`` (B, P, d, d)
    or from ``forward``. ``options`` are the estimator's own (``k``, ``n_probes``,
    ``budget``, ...); None values mean its defaults."""
    chosen = estimator(method, **options)
    return chosen.probes(forward, fisher=fisher, seed=seed, path=path, vocab_chunk=vocab_chunk)


# -- scores --------------------------------------------------------------------------
def squared_norms(forward: ScopeForward, directions: Tensor, chunk_size: int, progress: bool = False,
                  desc: str = "Fisher backward passes") -> Tensor:
    """(m, B, P, n) ``forward.squared_norms`` of the directions (m, B, P, d) in
    chunks of ``chunk_size`` backward passes, with an optional tqdm bar."""
    if not progress or directions.shape[0] == 0:
        return forward.squared_norms(directions, chunk_size)
    from tqdm.auto import tqdm

    per_chunk = max(1, chunk_size // directions.shape[2])
    parts = []
    with tqdm(total=directions.shape[0], desc=desc, unit="pass") as bar:
        for chunk in directions.split(per_chunk, dim=0):
            parts.append(forward.squared_norms(chunk, chunk_size))
            bar.update(chunk.shape[0])
    return torch.cat(parts)


def fisher_scores(forward: ScopeForward, found: FisherProbes, chunk_size: int,
                  progress: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """(B, P, n) Fisher scores and their standard error (None when exact) from
    the probes ``found``: one backward pass per direction, ``chunk_size`` at a time."""
    directions = found.exact if found.sampled is None else torch.cat([found.exact, found.sampled])
    norms = squared_norms(forward, directions, chunk_size, progress)
    k = found.exact.shape[0]
    scores = norms[:k].sum(0)
    if found.sampled is None:
        return scores, None
    samples = norms[k:]  # (m, B, P, n)
    if found.average:
        m = samples.shape[0]
        error = samples.std(0, correction=1) / math.sqrt(m)
        return scores + samples.mean(0), error
    # collapsed strata: each pair of neighbouring strata estimates its own variance
    error = (samples[0::2] - samples[1::2]).pow(2).sum(0).sqrt()
    return scores + samples.sum(0), error
