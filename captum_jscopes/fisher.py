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

    ``exact`` (k, B, P, d) count with weight 1; ``random`` (m, B, P, d) are
    averaged. Score = sum over exact + mean over random; the standard error comes
    from the spread of the random ones.
    """

    exact: Tensor
    random: Optional[Tensor] = None


def probes(
    fisher: Tensor,
    method: str = "deflated",
    k: Optional[int] = None,
    n_probes: int = 32,
    seed: int = 0,
) -> FisherProbes:
    """Probe directions for an estimator of ``tr(J_t^T F J_t)``.

    Args:
        fisher: (B, P, d, d) from :func:`fisher_matrix`.
        method:
            ``"exact"``: every eigen-direction ``sqrt(l_i) u_i`` (d backward passes).
            ``"eig"``: the reference's truncation to the top ``k`` (default 1):
            biased low by the dropped eigenvalues' share.
            ``"deflated"`` (default): the top ``k`` (default 16) exactly plus
            ``n_probes`` Rademacher probes ``sum_{i>k} s_i sqrt(l_i) u_i`` on the
            remainder (Hutch++ style): unbiased, with a standard error.
        seed: seeds the Rademacher signs; the same signs serve every prompt, so a
            batch gives the same scores as its prompts one at a time.
    """
    if method not in METHODS:
        raise ValueError(f"unknown Fisher method {method!r}; choose one of {METHODS}")
    values, vectors = eigen(fisher)
    d = values.shape[-1]
    scaled = vectors * values.sqrt()[..., None, :]  # columns sqrt(l_i) u_i
    if method == "exact":
        k = d
    elif k is None:
        k = 1 if method == "eig" else 16
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(k, d)
    exact = scaled[..., :k].movedim(-1, 0)  # (k, B, P, d)
    if method != "deflated" or k == d:
        return FisherProbes(exact=exact)
    if not isinstance(n_probes, int) or n_probes < 2:
        raise ValueError(f"n_probes must be an int >= 2 (the error estimate needs two), got {n_probes!r}")
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n_probes, d - k), generator=generator).to(scaled) * 2 - 1
    random = torch.einsum("bpdi,mi->mbpd", scaled[..., k:], signs)
    return FisherProbes(exact=exact, random=random)


def fisher_scores(forward: ScopeForward, found: FisherProbes, chunk_size: int) -> tuple[Tensor, Optional[Tensor]]:
    """(B, P, n) Fisher scores and their standard error (None when exact)."""
    scores = forward.squared_norms(found.exact, chunk_size).sum(0)
    if found.random is None:
        return scores, None
    samples = forward.squared_norms(found.random, chunk_size)  # (m, B, P, n)
    error = samples.std(dim=0) / samples.shape[0] ** 0.5
    return scores + samples.mean(0), error
