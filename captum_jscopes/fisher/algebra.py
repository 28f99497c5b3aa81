"""The algebra of the Fisher matrix F of the next-token distribution w.r.t. the
final hidden state: forming it, its eigenpairs, and the pieces of the split path.
No estimator logic lives here (that is :mod:`captum_jscopes.fisher.estimators`).

``F = G^T (diag(p) - p p^T) G = sum_c p_c (g_c - mu)(g_c - mu)^T`` with ``G = dz/dy``
(the unembedding ``W`` for a linear head; ``diag(slope) W`` for a soft-capped or
scaled one, which makes this the logit-space Fisher of the paper) and
``mu = G^T p``. For any factorisation ``F = sum_i v_i v_i^T`` the Fisher score of
token t is ``sum_i ||v_i^T J_t||^2``: each ``v_i`` is one backward pass.

Three ways to get at ``F`` (see docs/fisher.md), named by :data:`PATHS`:

- ``"formed"``: the (d, d) matrix over the whole vocabulary (:func:`fisher_matrix`)
  and its full eigendecomposition (:func:`eigen`; cost ``V d^2 + d^3`` per
  explained position);
- ``"split"``: the vocabulary is split into a *head* (the tokens holding most of
  ``tr F``: :func:`head_tokens`, :func:`head_rows`; the hutchinson estimator takes
  at most ``d`` of them, the krylov estimator as many as 99.9% of ``tr F`` needs) and
  a *tail*. ``F = F_head + F_tail`` exactly, both PSD. ``F_head`` is eigendecomposed
  through its small (N, N) Gram matrix, or, for N > d, formed (d, d) from the head
  rows (``N d^2``); ``F_tail`` is never formed: its probes are
  random-sign combinations of the tail rows, ``sum_c sqrt(p_c) e_c (g_c - mu)``,
  built from ``W`` and ``p`` in vocabulary chunks (:func:`tail_probes`, cost
  ``V d`` per probe);
- ``"matrix_free"``: products ``F X = G^T (p * (G X)) - mu (mu^T X)``
  (:func:`fisher_matvec`) give the top eigenpairs of the full ``F`` by block
  subspace iteration (:func:`top_eigenpairs`).

:func:`choose_path` picks the cheaper by operation count (:func:`path_cost`) among the
ways the estimator takes. Everything is computed
in the forward's compute dtype (float32 at least, float64 for a float64 model).
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward

__all__ = [
    "PATHS",
    "HEAD_MASS",
    "vocabulary_chunks",
    "fisher_mean",
    "fisher_matrix",
    "fisher_matvec",
    "fisher_trace",
    "eigen",
    "top_eigenpairs",
    "signs",
    "head_tokens",
    "head_rows",
    "head_fisher",
    "tail_probes",
    "path_cost",
    "cheapest_path",
    "choose_path",
]

#: the ways to F (see the module docstring); "auto" lets :func:`choose_path` pick
PATHS = ("auto", "formed", "split", "matrix_free")
#: share of tr F the head of the split path aims to hold (the tail is sampled)
HEAD_MASS = 0.999


# -- the pieces of F, in vocabulary chunks ------------------------------------------
def vocabulary_chunks(forward: ScopeForward, vocab_chunk: int = 8192) -> Iterator[tuple[int, Tensor, Tensor, Optional[Tensor]]]:
    """``(start, rows, p, slope)`` over the vocabulary in steps of ``vocab_chunk``:
    ``rows`` (C, d) of the head weight, ``p`` (B, P, C) the probabilities and
    ``slope`` (B, P, C) the head's slope (None for a linear head), in the compute
    dtype, so that no (V, d)-sized product materialises at once."""
    probs = forward.probs()
    dtype, device = probs.dtype, probs.device
    for start in range(0, probs.shape[-1], vocab_chunk):
        rows = forward.weight[start : start + vocab_chunk].to(device, dtype)
        scale = None if forward.head_slope is None else forward.head_slope[..., start : start + vocab_chunk]
        yield start, rows, probs[..., start : start + vocab_chunk], scale


def fisher_mean(forward: ScopeForward, vocab_chunk: int = 8192) -> Tensor:
    """(B, P, d) ``mu = G^T p``."""
    total = 0
    for _, rows, p, scale in vocabulary_chunks(forward, vocab_chunk):
        total = total + (p if scale is None else p * scale) @ rows
    return total


def fisher_matrix(forward: ScopeForward, vocab_chunk: int = 8192, dtype: Optional[torch.dtype] = None) -> Tensor:
    """(B, P, d, d) Fisher matrix at every explained position, in the compute
    dtype (float32 at least, whatever the model's dtype) or ``dtype``, built in
    chunks of the vocabulary so the (V, d) products never materialise at once.
    ``dtype=torch.float64`` is what an exact reference needs: ``second - mu mu^T``
    cancels, and in float32 its small eigenvalues, where a token's Jacobian can
    lie, are off by enough to move the largest scores by 0.1-0.2% (measured on
    SmolLM2)."""
    probs = forward.probs() if dtype is None else forward.probs().to(dtype)
    d = forward.weight.shape[1]
    second = probs.new_zeros(*probs.shape[:2], d, d)
    mean = probs.new_zeros(*probs.shape[:2], d)
    for _, rows, p, scale in vocabulary_chunks(forward, vocab_chunk):
        if dtype is not None:
            rows, p = rows.to(dtype), p.to(dtype)
            scale = None if scale is None else scale.to(dtype)
        mean += (p if scale is None else p * scale) @ rows
        weight_second = p if scale is None else p * scale * scale
        second += torch.einsum("bpc,cd,ce->bpde", weight_second, rows, rows)
    return second - mean[..., :, None] * mean[..., None, :]


def fisher_matvec(forward: ScopeForward, vectors: Tensor, mean: Optional[Tensor] = None,
                  vocab_chunk: int = 8192) -> Tensor:
    """Matrix-free ``F X`` for X (B, P, d, b): ``G^T (p * (G X)) - mu (mu^T X)``,
    2 V d b multiply-adds, never forming F. ``mean``: :func:`fisher_mean` if known."""
    if mean is None:
        mean = fisher_mean(forward, vocab_chunk)
    out = torch.zeros_like(vectors)
    for _, rows, p, scale in vocabulary_chunks(forward, vocab_chunk):
        logits = torch.einsum("cd,bpdj->bpcj", rows, vectors)  # (B, P, C, b)
        weight = p if scale is None else p * scale * scale
        out += torch.einsum("cd,bpcj->bpdj", rows, logits * weight[..., None])
    return out - mean[..., :, None] * torch.einsum("bpd,bpdj->bpj", mean, vectors)[..., None, :]


def fisher_trace(forward: ScopeForward, mean: Optional[Tensor] = None, vocab_chunk: int = 8192) -> Tensor:
    """(B, P) ``tr F = sum_c p_c ||g_c||^2 - ||mu||^2``."""
    if mean is None:
        mean = fisher_mean(forward, vocab_chunk)
    total = 0
    for _, rows, p, scale in vocabulary_chunks(forward, vocab_chunk):
        weight = p if scale is None else p * scale * scale
        total = total + weight @ rows.pow(2).sum(-1)
    return total - mean.pow(2).sum(-1)


# -- eigenpairs ----------------------------------------------------------------------
def eigen(fisher: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (B, P, d), descending and clamped at 0 (F is PSD; tiny negative
    values are rounding), and eigenvectors (B, P, d, d) as columns, of a formed
    (B, P, d, d) F."""
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
    iteration with Rayleigh-Ritz on ``k + oversample`` vectors (default 8 extra),
    one block of :func:`fisher_matvec` (2 V d (k + oversample)) per iteration.

    Args:
        start: (B, P, d, b) starting block (e.g. the head's eigenvectors); default
            a seeded Gaussian block (``seed``, default 0), topped up the same way
            when ``b`` is short.
        max_iters: at most this many iterations. Default 50.
        tol: stop when every top-k Ritz residual ``||F x - theta x||`` is below
            ``tol * theta_1``. Default 1e-4.
    Returns:
        values (B, P, min(k, d)) descending, vectors (B, P, d, min(k, d)), and an
        info dict (``iterations``, ``residual``: the largest relative residual).
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


def signs(shape: tuple[int, ...], seed: int) -> Tensor:
    """Seeded Rademacher (+-1) draws of ``shape``, float64, the same on every
    device (drawn on the CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).double().mul_(2).sub_(1)


# -- the split path --------------------------------------------------------------------
def head_tokens(forward: ScopeForward, mean: Tensor, head_mass: float, max_tokens: int,
                vocab_chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per position, the vocabulary ids of the head: the fewest tokens holding
    ``head_mass`` of ``tr F`` by their contribution ``p_c ||g_c - mu||^2``, at most
    ``max_tokens`` (the same count at every position, so they stack).

    Args:
        mean: (B, P, d) :func:`fisher_mean`.
    Returns:
        ids (B, P, N) and the contributions (B, P, V) (their sum is ``tr F``).
    """
    parts = []
    for _, rows, p, scale in vocabulary_chunks(forward, vocab_chunk):
        if scale is None:
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


def head_rows(forward: ScopeForward, ids: Tensor, mean: Tensor) -> Tensor:
    """(B, P, N, d) rows ``sqrt(p_c) (g_c - mu)`` of the head tokens ``ids`` (B, P, N):
    ``F_head = rows^T rows``."""
    probs = forward.probs()
    rows = forward.weight[ids.to(forward.weight.device)].to(probs.device, probs.dtype)  # (B, P, N, d)
    if forward.head_slope is not None:
        rows = rows * forward.head_slope.gather(-1, ids)[..., None]
    p = probs.gather(-1, ids)
    return p.sqrt()[..., None] * (rows - mean[..., None, :])


def head_fisher(forward: ScopeForward, ids: Tensor, mean: Tensor, contribution: Tensor, head_mass: float,
                vocab_chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """``F_head`` (B, P, d, d) formed from the centred head rows, for heads of more
    than d tokens, and the head ids with each position's own head.

    :func:`head_tokens` gives every position the largest count any of them needs;
    here each position sums only the ``N_p`` tokens that hold its ``head_mass``
    (``N_p d^2`` multiply-adds: one uncertain position does not make the confident
    ones pay for its head), and its ids past ``N_p`` repeat its first id, so that
    the tail (every token not among the ids, :func:`tail_probes`) is exactly what
    ``F_head`` leaves out.

    Args:
        ids: (B, P, N) from :func:`head_tokens`, largest contribution first.
        mean: (B, P, d) :func:`fisher_mean`; contribution: (B, P, V) from :func:`head_tokens`.
    Returns:
        ``(F_head, ids)``, ids (B, P, N) padded as above.
    """
    held = contribution.gather(-1, ids).cumsum(-1) / contribution.sum(-1, keepdim=True).clamp_min(1e-300)
    counts = ((held < head_mass).sum(-1) + 1).clamp(max=ids.shape[-1])  # (B, P)
    probs = forward.probs()
    d = forward.weight.shape[1]
    fisher = probs.new_zeros(*ids.shape[:2], d, d)
    for b, p in itertools.product(range(ids.shape[0]), range(ids.shape[1])):
        for chunk in ids[b, p, : counts[b, p]].split(vocab_chunk):
            rows = forward.weight[chunk.to(forward.weight.device)].to(probs.device, probs.dtype)
            if forward.head_slope is not None:
                rows = rows * forward.head_slope[b, p, chunk, None]
            rows = probs[b, p, chunk].sqrt()[:, None] * (rows - mean[b, p])
            fisher[b, p] += rows.T @ rows
    beyond = torch.arange(ids.shape[-1], device=ids.device) >= counts[..., None]
    return fisher, torch.where(beyond, ids[..., :1], ids)


def tail_probes(forward: ScopeForward, mean: Tensor, head_ids: Tensor, draws: Tensor,
                vocab_chunk: int = 8192) -> Tensor:
    """(m, B, P, d) ``sum_{c in tail} sqrt(p_c) e_c (g_c - mu)`` for the sign draws
    ``draws`` (m, V) (:func:`signs`), the tail being every token not in
    ``head_ids`` (B, P, N); built in vocabulary chunks from W and p. Each is an
    unbiased sample of ``F_tail``: ``E[z z^T] = F_tail``."""
    probs = forward.probs()
    weights_all = probs.sqrt()
    tail = torch.ones_like(weights_all).scatter_(-1, head_ids, 0.0)
    weights_all = weights_all * tail
    out = 0
    coefficient = 0
    draws = draws.to(probs)
    for start, rows, _, scale in vocabulary_chunks(forward, vocab_chunk):
        stop = start + rows.shape[0]
        weight = weights_all[..., start:stop][None] * draws[:, None, None, start:stop]  # (m, B, P, C)
        coefficient = coefficient + weight.sum(-1)
        if scale is not None:
            weight = weight * scale[None]
        out = out + weight @ rows
    return out - coefficient[..., None] * mean[None]


# -- which path ----------------------------------------------------------------------
def path_cost(path: str, vocab: int, d: int, *, n_probes: int = 0, head: Optional[int] = None,
              block: int = 16, iterations: int = 4) -> int:
    """Multiply-adds of reaching F by ``path`` on a head (``vocab``, ``d``):

    - ``"formed"``: ``V d^2 + 10 d^3`` (F and its eigendecomposition);
    - ``"split"``: ``V d (m + 3) + N d N + 10 N^3`` for ``m = n_probes`` probes of the
      tail and a head of ``N = min(head, V, d)`` tokens (``head`` None: d);
    - ``"matrix_free"``: ``2 V d b x iterations`` for subspace iteration on ``b = block``
      vectors (defaults 16 and 4).

    What the estimators' :meth:`~captum_jscopes.fisher.estimators.FisherEstimator.path_cost`
    give :func:`choose_path`."""
    if path == "formed":
        return vocab * d * d + 10 * d**3
    if path == "split":
        size = min(head or d, vocab, d)
        return vocab * d * (n_probes + 3) + size * d * size + 10 * size**3
    if path == "matrix_free":
        return 2 * vocab * d * block * iterations
    raise ValueError(f"unknown Fisher path {path!r}; choose one of {', '.join(PATHS[1:])}")


def cheapest_path(costs: dict[str, float]) -> str:
    """The path of ``costs`` (path -> multiply-adds) to take: forming F (tested,
    exact, one eigendecomposition for every estimator) unless another path costs
    less than half of it; without ``"formed"`` among them, the cheapest."""
    if "formed" not in costs:
        return min(costs, key=costs.__getitem__)
    others = [path for path in costs if path != "formed"]
    if not others:
        return "formed"
    best = min(others, key=costs.__getitem__)
    return best if 2 * costs[best] < costs["formed"] else "formed"


def choose_path(forward: ScopeForward, path: str, estimator) -> str:
    """The way to F for ``estimator`` on this head (V, d); the estimator is asked,
    never its name.

    A ``path`` other than ``"auto"`` is checked against :data:`PATHS` and the
    estimator's ``paths`` (a one-line ValueError otherwise) and returned.
    ``"auto"`` takes the cheapest of the estimator's ``paths`` by its
    ``path_cost(path, V, d)`` (:func:`cheapest_path`: forming F unless another way
    costs less than half). ``forward`` needs only ``weight`` (V, d)."""
    if path not in PATHS:
        raise ValueError(f"unknown Fisher path {path!r}; choose one of {', '.join(PATHS)}")
    if path != "auto":
        if path not in estimator.paths:
            raise ValueError(f"path {path!r} does not apply to method {estimator.name!r} "
                             f"(its paths: {', '.join(estimator.paths)})")
        return path
    vocab, d = forward.weight.shape
    return cheapest_path({way: estimator.path_cost(way, vocab, d) for way in estimator.paths})
