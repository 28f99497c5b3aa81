"""The Fisher information of the next-token distribution w.r.t. the final hidden
state, and the probe directions that estimate ``tr(J_t^T F J_t)`` from it.

``F = G^T (diag(p) - p p^T) G = sum_c p_c (g_c - mu)(g_c - mu)^T`` with ``G = dz/dy``
(the unembedding ``W`` for a linear head; ``diag(slope) W`` for a soft-capped or
scaled one, which makes this the logit-space Fisher of the paper) and
``mu = G^T p``. For any factorisation ``F = sum_i v_i v_i^T`` the Fisher score of
token t is ``sum_i ||v_i^T J_t||^2``: each ``v_i`` is one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .forward import ScopeForward

METHODS = ("deflated", "exact", "eig")


def fisher_matrix(forward: ScopeForward, vocab_chunk: int = 8192) -> Tensor:
    """(B, P, d, d) Fisher matrix at every explained position, in the compute
    dtype (float32 at least, whatever the model's dtype), built in chunks of the
    vocabulary so the (V, d) products never materialise at once."""
    probs = forward.probs()  # (B, P, V)
    dtype, device = probs.dtype, probs.device
    d = forward.weight.shape[1]
    second = torch.zeros(*probs.shape[:2], d, d, dtype=dtype, device=device)
    mean = torch.zeros(*probs.shape[:2], d, dtype=dtype, device=device)
    for start in range(0, probs.shape[-1], vocab_chunk):
        rows = forward.weight[start : start + vocab_chunk].to(device, dtype)  # (C, d)
        p = probs[..., start : start + vocab_chunk]
        scale = None if forward.head_slope is None else forward.head_slope[..., start : start + vocab_chunk]
        weight_mean = p if scale is None else p * scale
        weight_second = p if scale is None else p * scale * scale
        mean += weight_mean @ rows
        second += torch.einsum("bpc,cd,ce->bpde", weight_second, rows, rows)
    return second - mean[..., :, None] * mean[..., None, :]


def eigen(fisher: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (B, P, d), descending and clamped at 0 (F is PSD; tiny negative
    values are rounding), and eigenvectors (B, P, d, d) as columns."""
    values, vectors = torch.linalg.eigh(fisher)
    return values.flip(-1).clamp(min=0), vectors.flip(-1)


@dataclass
class FisherProbes:
    """Directions whose squared VJP norms estimate the Fisher score.

    ``exact`` (k, B, P, d) and ``sampled`` (m, B, P, d) both count with weight 1
    (the sampled ones are pre-scaled by their importance weight). Consecutive
    pairs of sampled directions come from neighbouring strata, which gives the
    error estimate.
    """

    exact: Tensor
    sampled: Optional[Tensor] = None


def probes(
    fisher: Tensor,
    method: str = "deflated",
    k: Optional[int] = None,
    n_probes: int = 24,
    seed: int = 0,
) -> FisherProbes:
    """Probe directions for an estimator of ``tr(J_t^T F J_t) = sum_i l_i ||u_i^T J_t||^2``.

    Args:
        fisher: (B, P, d, d) from :func:`fisher_matrix`.
        method:
            ``"exact"``: every eigen-direction ``sqrt(l_i) u_i`` (d backward passes).
            ``"eig"``: the reference's truncation to the top ``k`` (default 1):
            biased low by the dropped eigenvalues' share.
            ``"deflated"`` (default): the top ``k`` (default 16) eigen-directions
            exactly, plus ``n_probes`` eigen-directions of the remainder drawn with
            probability proportional to their eigenvalue (stratified over the
            eigenvalue mass, one draw per stratum) and weighted by the inverse
            probability. Unbiased; consecutive strata give a (conservative)
            standard error.
        seed: seeds the draws; the same uniform draws serve every prompt, so a
            batch gives the same scores as its prompts one at a time.
    """
    if method not in METHODS:
        raise ValueError(f"unknown Fisher method {method!r}; choose one of {METHODS}")
    values, vectors = eigen(fisher)
    d = values.shape[-1]
    if method == "exact":
        k = d
    elif k is None:
        k = 1 if method == "eig" else 16
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(k, d)
    exact = (vectors[..., :k] * values[..., None, :k].sqrt()).movedim(-1, 0)  # (k, B, P, d)
    if method != "deflated" or k == d:
        return FisherProbes(exact=exact)
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
    return FisherProbes(exact=exact, sampled=sampled)


def fisher_scores(forward: ScopeForward, found: FisherProbes, chunk_size: int) -> tuple[Tensor, Optional[Tensor]]:
    """(B, P, n) Fisher scores and their standard error (None when exact)."""
    scores = forward.squared_norms(found.exact, chunk_size).sum(0)
    if found.sampled is None:
        return scores, None
    samples = forward.squared_norms(found.sampled, chunk_size)  # (m, B, P, n)
    # collapsed strata: each pair of neighbouring strata estimates its own variance
    error = (samples[0::2] - samples[1::2]).pow(2).sum(0).sqrt()
    return scores + samples.sum(0), error
