"""The Fisher information of the next-token distribution w.r.t. the final hidden
state, and the probe directions that estimate ``tr(J_t^T F J_t)`` from it.

``F = G^T (diag(p) - p p^T) G = sum_c p_c (g_c - mu)(g_c - mu)^T`` with ``G = dz/dy``
(the unembedding ``W`` for a linear head; ``diag(slope) W`` for a soft-capped or
scaled one, which makes this the logit-space Fisher of the paper) and
``mu = G^T p``. For any factorisation ``F = sum_i v_i v_i^T`` the Fisher score of
token t is ``sum_i ||v_i^T J_t||^2``: each ``v_i`` is one backward pass.

Two ways to get at ``F`` (see docs/fisher.md):

- ``"formed"``: the (d, d) matrix over the whole vocabulary and its full
  eigendecomposition (cost ``V d^2 + d^3`` per explained position);
- ``"split"``: the vocabulary is split into a *head* (the tokens holding most of
  ``tr F``, at most ``d`` of them) and a *tail*. ``F = F_head + F_tail`` exactly,
  both PSD. ``F_head`` is eigendecomposed through its small (N, N) Gram matrix;
  ``F_tail`` is never formed: its probes are random-sign combinations of the tail
  rows, ``sum_c sqrt(p_c) e_c (g_c - mu)``, built from ``W`` and ``p`` in vocabulary
  chunks (cost ``V d`` per probe). Nothing of size ``d x d`` is formed.

Matrix-free products ``F X = G^T (p * (G X)) - mu (mu^T X)`` (:func:`fisher_matvec`)
give the top eigenpairs of the full ``F`` by block subspace iteration
(:func:`top_eigenpairs`) for ``method="eig"`` and the spectral view.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward

logger = logging.getLogger(__name__)

METHODS = ("hutchinson", "deflated", "exact", "eig")
#: the estimator every entry point uses unless told otherwise: as accurate as "deflated" at the
#: same 40 backward passes (docs/fisher.md), unbiased with a per-token variance bound and standard
#: errors, and on large vocabularies (Gemma-3) its split path never forms the d x d matrix
DEFAULT_METHOD = "hutchinson"
PATHS = ("auto", "formed", "split", "matrix_free")
#: backward passes of the default estimator (exact directions + probes)
DEFAULT_BUDGET = 40
#: share of tr F the head of the split path aims to hold (the tail is sampled)
HEAD_MASS = 0.999


# -- the pieces of F, in vocabulary chunks ------------------------------------------
def _chunks(forward: ScopeForward, vocab_chunk: int):
    """(start, rows (C, d), p (B, P, C), slope (B, P, C) or None) over the vocabulary,
    in the compute dtype (float32 at least)."""
    probs = forward.probs()
    dtype, device = probs.dtype, probs.device
    for start in range(0, probs.shape[-1], vocab_chunk):
        rows = forward.weight[start : start + vocab_chunk].to(device, dtype)
        scale = None if forward.head_slope is None else forward.head_slope[..., start : start + vocab_chunk]
        yield start, rows, probs[..., start : start + vocab_chunk], scale


def fisher_mean(forward: ScopeForward, vocab_chunk: int = 8192) -> Tensor:
    """(B, P, d) ``mu = G^T p``."""
    total = 0
    for _, rows, p, scale in _chunks(forward, vocab_chunk):
        total = total + (p if scale is None else p * scale) @ rows
    return total


def fisher_matrix(forward: ScopeForward, vocab_chunk: int = 8192) -> Tensor:
    """(B, P, d, d) Fisher matrix at every explained position, in the compute
    dtype (float32 at least, whatever the model's dtype), built in chunks of the
    vocabulary so the (V, d) products never materialise at once."""
    probs = forward.probs()
    d = forward.weight.shape[1]
    second = probs.new_zeros(*probs.shape[:2], d, d)
    mean = probs.new_zeros(*probs.shape[:2], d)
    for _, rows, p, scale in _chunks(forward, vocab_chunk):
        mean += (p if scale is None else p * scale) @ rows
        weight_second = p if scale is None else p * scale * scale
        second += torch.einsum("bpc,cd,ce->bpde", weight_second, rows, rows)
    return second - mean[..., :, None] * mean[..., None, :]


def fisher_matvec(forward: ScopeForward, vectors: Tensor, mean: Optional[Tensor] = None,
                  vocab_chunk: int = 8192) -> Tensor:
    """Matrix-free ``F X`` for X (B, P, d, b): ``G^T (p * (G X)) - mu (mu^T X)``,
    2 V d b multiply-adds, never forming F."""
    if mean is None:
        mean = fisher_mean(forward, vocab_chunk)
    out = torch.zeros_like(vectors)
    for _, rows, p, scale in _chunks(forward, vocab_chunk):
        logits = torch.einsum("cd,bpdj->bpcj", rows, vectors)  # (B, P, C, b)
        weight = p if scale is None else p * scale * scale
        out += torch.einsum("cd,bpcj->bpdj", rows, logits * weight[..., None])
    return out - mean[..., :, None] * torch.einsum("bpd,bpdj->bpj", mean, vectors)[..., None, :]


def fisher_trace(forward: ScopeForward, mean: Optional[Tensor] = None, vocab_chunk: int = 8192) -> Tensor:
    """(B, P) ``tr F = sum_c p_c ||g_c||^2 - ||mu||^2``."""
    if mean is None:
        mean = fisher_mean(forward, vocab_chunk)
    total = 0
    for _, rows, p, scale in _chunks(forward, vocab_chunk):
        weight = p if scale is None else p * scale * scale
        total = total + weight @ rows.pow(2).sum(-1)
    return total - mean.pow(2).sum(-1)


def eigen(fisher: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (B, P, d), descending and clamped at 0 (F is PSD; tiny negative
    values are rounding), and eigenvectors (B, P, d, d) as columns."""
    values, vectors = torch.linalg.eigh(fisher)
    return values.flip(-1).clamp(min=0), vectors.flip(-1)


def top_eigenpairs(
    forward: ScopeForward,
    k: int,
    *,
    start: Optional[Tensor] = None,
    oversample: int = 8,
    max_iters: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    vocab_chunk: int = 8192,
) -> tuple[Tensor, Tensor, dict]:
    """Top ``k`` eigenpairs of F at every position, matrix-free: block subspace
    iteration with Rayleigh-Ritz on ``k + oversample`` vectors, one block of
    :func:`fisher_matvec` (2 V d (k + oversample)) per iteration.

    Args:
        start: (B, P, d, b) starting block (e.g. the head's eigenvectors); default
            seeded Gaussian.
        tol: stop when every top-k Ritz residual ``||F x - theta x||`` is below
            ``tol * theta_1``.
    Returns:
        values (B, P, k) descending, vectors (B, P, d, k), and an info dict
        (``iterations``, ``residual``: the largest relative residual).
    """
    mean = fisher_mean(forward, vocab_chunk)
    batch, n_pos, d = mean.shape
    block = min(d, k + oversample)
    k = min(k, d)
    if start is None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(batch, n_pos, d, block, generator=generator, dtype=torch.float64)
    elif start.shape[-1] < block:
        generator = torch.Generator().manual_seed(seed)
        extra = torch.randn(*start.shape[:-1], block - start.shape[-1], generator=generator, dtype=torch.float64)
        start = torch.cat([start, extra.to(start)], dim=-1)
    basis = torch.linalg.qr(start[..., :block].to(mean))[0]
    residual, iterations = float("inf"), 0
    for iterations in range(1, max_iters + 1):
        image = fisher_matvec(forward, basis, mean, vocab_chunk)
        small = basis.transpose(-1, -2) @ image
        theta, rotation = torch.linalg.eigh((small + small.transpose(-1, -2)) / 2)
        theta, rotation = theta.flip(-1), rotation.flip(-1)
        ritz, ritz_image = basis @ rotation, image @ rotation
        gaps = (ritz_image - ritz * theta[..., None, :])[..., :k].norm(dim=-2)
        residual = float((gaps / theta[..., :1].clamp_min(torch.finfo(theta.dtype).tiny)).max())
        if residual <= tol:
            break
        basis = torch.linalg.qr(ritz_image)[0]
    return theta[..., :k].clamp(min=0), ritz[..., :k], {"iterations": iterations, "residual": residual}


# -- the probes ---------------------------------------------------------------------
@dataclass
class FisherProbes:
    """Directions whose squared VJP norms estimate the Fisher score.

    ``exact`` (k, B, P, d) count with weight 1. ``sampled`` (m, B, P, d):
    for ``"deflated"`` they count with weight 1 (pre-scaled importance samples;
    consecutive pairs of strata give the error estimate); for ``"hutchinson"``
    each one is an unbiased sample of the remainder, so they are averaged and
    their spread gives the standard error (``average=True``).
    ``info`` says which path ran and how the budget was split.
    """

    exact: Tensor
    sampled: Optional[Tensor] = None
    average: bool = False
    info: dict = field(default_factory=dict)


def signs(shape: tuple[int, ...], seed: int) -> Tensor:
    """Seeded Rademacher (+-1) draws, float64, the same on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).double().mul_(2).sub_(1)


def choose_k(values: Tensor, rest_mass: Tensor, budget: int) -> int:
    """The split of ``budget`` backward passes into exact directions and probes
    that minimises the predicted error of the remainder estimate.

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


def _head_tokens(forward: ScopeForward, mean: Tensor, head_mass: float, max_tokens: int,
                 vocab_chunk: int) -> tuple[Tensor, Tensor]:
    """Per position, the vocabulary ids of the head: the fewest tokens holding
    ``head_mass`` of ``tr F`` by their contribution ``p_c ||g_c - mu||^2``, at most
    ``max_tokens`` (the same count at every position). Returns ids (B, P, N) and
    the contributions (B, P, V)."""
    parts = []
    for _, rows, p, scale in _chunks(forward, vocab_chunk):
        g = rows if scale is None else None
        if g is not None:
            centred = rows.pow(2).sum(-1) - 2 * torch.einsum("cd,bpd->bpc", rows, mean)
        else:
            centred = scale.pow(2) * rows.pow(2).sum(-1) - 2 * scale * torch.einsum("cd,bpd->bpc", rows, mean)
        parts.append(p * (centred + mean.pow(2).sum(-1, keepdim=True)))
    contribution = torch.cat(parts, -1).clamp(min=0)
    ordered, order = contribution.sort(-1, descending=True)
    share = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True).clamp_min(torch.finfo(ordered.dtype).tiny)
    needed = int((share < head_mass).sum(-1).max()) + 1
    count = max(1, min(needed, max_tokens, contribution.shape[-1]))
    return order[..., :count], contribution


def _head_rows(forward: ScopeForward, ids: Tensor, mean: Tensor) -> Tensor:
    """(B, P, N, d) rows ``sqrt(p_c) (g_c - mu)`` of the head tokens ``ids`` (B, P, N)."""
    probs = forward.probs()
    rows = forward.weight[ids.to(forward.weight.device)].to(probs.device, probs.dtype)  # (B, P, N, d)
    if forward.head_slope is not None:
        rows = rows * forward.head_slope.gather(-1, ids)[..., None]
    p = probs.gather(-1, ids)
    return p.sqrt()[..., None] * (rows - mean[..., None, :])


def _tail_probes(forward: ScopeForward, mean: Tensor, head_ids: Tensor, draws: Tensor,
                 vocab_chunk: int) -> Tensor:
    """(m, B, P, d) ``sum_{c in tail} sqrt(p_c) e_c (g_c - mu)`` for the sign draws
    ``draws`` (m, V), built in vocabulary chunks from W and p."""
    probs = forward.probs()
    weights_all = probs.sqrt()
    tail = torch.ones_like(weights_all).scatter_(-1, head_ids, 0.0)
    weights_all = weights_all * tail
    out = 0
    coefficient = 0
    draws = draws.to(probs)
    for start, rows, _, scale in _chunks(forward, vocab_chunk):
        stop = start + rows.shape[0]
        weight = weights_all[..., start:stop][None] * draws[:, None, None, start:stop]  # (m, B, P, C)
        coefficient = coefficient + weight.sum(-1)
        if scale is not None:
            weight = weight * scale[None]
        out = out + weight @ rows
    return out - coefficient[..., None] * mean[None]


def probes(
    fisher: Optional[Tensor] = None,
    method: str = DEFAULT_METHOD,
    k: Union[int, str, None] = None,
    n_probes: Optional[int] = None,
    seed: int = 0,
    *,
    forward: Optional[ScopeForward] = None,
    path: str = "auto",
    budget: int = DEFAULT_BUDGET,
    head_mass: float = HEAD_MASS,
    max_head: Optional[int] = None,
    vocab_chunk: int = 8192,
) -> FisherProbes:
    """Probe directions for an estimator of ``tr(J_t^T F J_t) = sum_i l_i ||u_i^T J_t||^2``.

    Args:
        fisher: (B, P, d, d) from :func:`fisher_matrix` (the formed path), or None
            with ``forward`` (then ``path`` decides how F is reached).
        method:
            ``"hutchinson"`` (default): the top ``k`` eigen-directions exactly plus
            ``n_probes`` random-sign combinations ``z = sum_{i>k} sqrt(l_i) e_i u_i``
            (``e_i = +-1``) of the remainder, averaged. Unbiased; per-token
            coefficient of variation ``<= sqrt(2/m)``, 0 when the token's Jacobian
            is isotropic on the remainder; the standard error is the probes' spread.
            On the split path the tail of the vocabulary enters each probe as
            ``sum_c sqrt(p_c) e_c (g_c - mu)``, which keeps it unbiased for the full F.
            ``k="auto"`` (default) splits ``budget`` (default 40) backward passes
            between exact directions and probes with :func:`choose_k`.
            ``"deflated"``: the top ``k`` (default 16) exactly plus ``n_probes``
            (default 24) single eigen-directions of the remainder drawn in proportion
            to their eigenvalue (stratified, importance-weighted); formed path only.
            ``"exact"``: every eigen-direction ``sqrt(l_i) u_i`` (d backward passes).
            ``"eig"``: the reference's truncation to the top ``k`` (default 1):
            biased low by the dropped eigenvalues' share.
        path: ``"auto"`` (default), ``"formed"``, ``"split"`` (hutchinson) or
            ``"matrix_free"`` (eig: subspace iteration on F X products).
        seed: seeds the draws; the draws do not depend on the batch, so a batch
            gives the same scores as its prompts one at a time.
    """
    if method not in METHODS:
        raise ValueError(f"unknown Fisher method {method!r}; choose one of {METHODS}")
    if path not in PATHS:
        raise ValueError(f"unknown Fisher path {path!r}; choose one of {PATHS}")
    if fisher is None and forward is None:
        raise ValueError("probes needs the Fisher matrix or the forward pass")
    if method == "hutchinson":
        return _hutchinson(fisher, forward, k, n_probes, seed, path, budget, head_mass, max_head, vocab_chunk)
    if fisher is None and method == "eig" and choose_path(forward, path, method) == "matrix_free":
        k = 1 if k is None else _check_k(k)
        values, vectors, info = top_eigenpairs(forward, k, seed=seed, vocab_chunk=vocab_chunk)
        exact = (vectors * values[..., None, :].sqrt()).movedim(-1, 0)
        return FisherProbes(exact=exact, info={"path": "matrix_free", "k": k, "n_probes": 0, **info})
    if fisher is None:
        fisher = fisher_matrix(forward, vocab_chunk)
    values, vectors = eigen(fisher)
    d = values.shape[-1]
    if method == "exact":
        k = d
    elif k is None:
        k = 1 if method == "eig" else 16
    k = min(_check_k(k), d)
    exact = (vectors[..., :k] * values[..., None, :k].sqrt()).movedim(-1, 0)  # (k, B, P, d)
    info = {"path": "formed", "k": k, "n_probes": 0}
    if method != "deflated" or k == d:
        return FisherProbes(exact=exact, info=info)
    n_probes = 24 if n_probes is None else n_probes
    if not isinstance(n_probes, int) or n_probes < 2 or n_probes % 2:
        raise ValueError(f"n_probes must be an even int >= 2 (pairs give the error estimate), got {n_probes!r}")
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


def _check_k(k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return k


def choose_path(forward: ScopeForward, path: str = "auto", method: str = "hutchinson",
                n_probes: int = DEFAULT_BUDGET, max_head: Optional[int] = None) -> str:
    """Which way to F is cheaper for this head (V, d), by multiply-add counts:
    formed ``V d^2 + 10 d^3`` against split ``V d (m + 3) + N d min(N, d) + 10 min(N, d)^3``
    (head of at most N = d tokens) or, for ``eig``, matrix-free subspace
    iteration ``2 V d b x 4`` (b = k + 8)."""
    if path != "auto":
        if path == "split" and method != "hutchinson" or path == "matrix_free" and method != "eig":
            raise ValueError(f"path {path!r} does not apply to method {method!r}")
        return path
    vocab, d = forward.weight.shape
    formed = vocab * d * d + 10 * d**3
    if method == "hutchinson":
        head = min(max_head or d, vocab, d)
        split = vocab * d * (n_probes + 3) + head * d * head + 10 * head**3
        return "split" if 2 * split < formed else "formed"
    if method == "eig":
        return "matrix_free" if 2 * (2 * vocab * d * 16 * 4) < formed else "formed"
    return "formed"


def _hutchinson(fisher, forward, k, n_probes, seed, path, budget, head_mass, max_head, vocab_chunk) -> FisherProbes:
    if not isinstance(budget, int) or budget < 3:
        raise ValueError(f"budget must be an int >= 3, got {budget!r}")
    if k is not None and k != "auto":
        k = _check_k(k)
    if n_probes is not None and (not isinstance(n_probes, int) or n_probes < 2):
        raise ValueError(f"n_probes must be an int >= 2 (their spread gives the error estimate), got {n_probes!r}")
    if fisher is not None:
        path = "formed"
    else:
        path = choose_path(forward, path, "hutchinson", n_probes or budget, max_head)
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
        cap = max_head or forward.weight.shape[1]
        head_ids, contribution = _head_tokens(forward, mean, head_mass, cap, vocab_chunk)
        rows = _head_rows(forward, head_ids, mean)  # (B, P, N, d): F_head = rows^T rows
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
    if k is None or k == "auto":
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
        sampled = sampled + _tail_probes(forward, mean, head_ids, signs((m, forward.weight.shape[0]), seed + 1),
                                         vocab_chunk)
    logger.debug("Fisher probes: %s", info)
    return FisherProbes(exact=exact, sampled=sampled, average=True, info=info)


def squared_norms(forward: ScopeForward, directions: Tensor, chunk_size: int, progress: bool = False,
                  desc: str = "Fisher backward passes") -> Tensor:
    """``forward.squared_norms`` of (m, B, P, d) in chunks, with an optional tqdm bar."""
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
    """(B, P, n) Fisher scores and their standard error (None when exact)."""
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
