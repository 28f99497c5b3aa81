"""F as factor rows ``sqrt(l_i) u_i^T``, by the formed or the split path: what the
hutchinson and the krylov estimators deflate and sample."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward
from captum_jscopes.fisher.algebra import (
    HEAD_MASS,
    cheapest_path,
    eigen,
    fisher_matrix,
    fisher_mean,
    head_fisher,
    head_rows,
    head_tokens,
    path_cost,
)

__all__ = ["FACTOR_PATHS", "fisher_factor"]

#: the ways to F :func:`fisher_factor` takes
FACTOR_PATHS = ("formed", "split")


def fisher_factor(forward: Optional[ScopeForward], fisher: Optional[Tensor], path: str, n_probes: int,
                  head_mass: float = HEAD_MASS, max_head: Optional[int] = None, vocab_chunk: int = 8192):
    """F as factor rows ``sqrt(l_i) u_i^T`` (its eigen-directions, descending), by the
    formed or the split path: ``(values, factor, rest_mass, tail, info)`` with values
    (B, P, r), factor (B, P, r, d), ``rest_mass`` (B, P) the part of tr F left to the
    sampled tail (0 on the formed path), ``tail`` None or ``(mean, head_ids)`` for
    :func:`~captum_jscopes.fisher.algebra.tail_probes`, and ``info`` (``path``, and the
    split path's ``head_tokens`` and ``head_share``). ``path``: ``"formed"``,
    ``"split"`` or ``"auto"``, the cheaper of the two for ``n_probes`` probes and a
    head of at most ``max_head`` tokens (:func:`~captum_jscopes.fisher.algebra.path_cost`);
    with ``fisher`` given, formed."""
    if fisher is not None:
        path = "formed"
    elif path == "auto":
        vocab, d = forward.weight.shape
        path = cheapest_path({way: path_cost(way, vocab, d, n_probes=n_probes, head=max_head)
                              for way in FACTOR_PATHS})
    elif path not in FACTOR_PATHS:
        raise ValueError(f"path {path!r} does not apply to fisher_factor (its paths: {', '.join(FACTOR_PATHS)})")
    tail = None
    if path == "formed":
        if fisher is None:
            fisher = fisher_matrix(forward, vocab_chunk)
        values, vectors = eigen(fisher)  # full spectrum: no tail
        factor = (vectors * values[..., None, :].sqrt()).transpose(-1, -2)
        rest_mass = values.new_zeros(values.shape[:-1])
        info: dict = {"path": "formed"}
    else:
        mean = fisher_mean(forward, vocab_chunk)
        cap = max_head or forward.weight.shape[1]
        head_ids, contribution = head_tokens(forward, mean, head_mass, cap, vocab_chunk)
        if head_ids.shape[-1] <= forward.weight.shape[1]:
            rows = head_rows(forward, head_ids, mean)  # (B, P, N, d): F_head = rows^T rows
            gram = rows @ rows.transpose(-1, -2)  # (B, P, N, N)
            values, small = torch.linalg.eigh(gram)
            values, small = values.flip(-1).clamp(min=0), small.flip(-1)
            # sqrt(l_i) u_i = rows^T v_i: the head's eigen-directions, scaled, as rows (B, P, N, d)
            factor = small.transpose(-1, -2) @ rows
        else:  # more head tokens than d: F_head (d x d) formed, each position from its own head
            head, head_ids = head_fisher(forward, head_ids, mean, contribution, head_mass, vocab_chunk)
            values, vectors = eigen(head)
            factor = (vectors * values[..., None, :].sqrt()).transpose(-1, -2)
        total = contribution.sum(-1)
        rest_mass = (total - values.sum(-1)).clamp(min=0)
        tail = (mean, head_ids)
        info = {"path": "split", "head_tokens": int(head_ids.shape[-1]),
                "head_share": float((values.sum(-1) / total.clamp_min(1e-300)).min())}
    return values, factor, rest_mass, tail, info
