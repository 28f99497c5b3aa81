"""The statistics of random-sign probes: the standard error of their mean, such that
``mean +- 1.96 error`` is a 95% interval also where a token's remainder lies in few
directions (docs/fisher.md, "Estimators")."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["probe_standard_error", "pairwise_square_mean", "student_t"]


def pairwise_square_mean(vectors: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, P, n) ``mean_{j != k} (y_j . y_k)^2`` over the m probes' VJPs (m, B, P, n, e),
    in token chunks so the (m, m) Gram matrices stay small."""
    m = vectors.shape[0]
    out = []
    step = max(1, 2**24 // (m * m * vectors.shape[1] * vectors.shape[2]))
    for chunk in vectors.split(step, dim=3):
        chunk = chunk.to(dtype)
        gram = torch.einsum("jbpne,kbpne->bpnjk", chunk, chunk).pow(2)
        out.append(gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1))
    return torch.cat(out, dim=-1) / (m * (m - 1))


def probe_standard_error(mean: Tensor, pairwise: Tensor, m: int, skew: bool = True) -> Tensor:
    """The standard error of a mean of ``m`` random-sign probes of a token's remainder, such
    that ``mean +- 1.96 error`` is a 95% interval.

    Args:
        mean: the probes' mean squared VJP norm, any shape.
        pairwise: ``mean_{j != k} (y_j . y_k)^2`` over the probes' VJPs ``y`` (same shape),
            an unbiased estimate of ``||R_t R_t^T||_F^2`` (the off-diagonal part), which bounds a
            probe's variance by twice itself.
        m: the number of probes (>= 2).
        skew: widen where the remainder lies in few directions (:func:`_skewed_half_width`).
    Returns:
        ``sqrt(2 pairwise / m)`` widened by Student's t with ``m - 1`` degrees of freedom, and
        with ``skew`` at least the chi-square interval's upper half-width over 1.96.
    """
    error = (2 * pairwise / m).clamp(min=0).sqrt() * (student_t(m - 1) / 1.959963984540054)
    return torch.maximum(error, _skewed_half_width(mean, pairwise, m)) if skew else error


def _skewed_half_width(mean: Tensor, pairwise: Tensor, m: int) -> Tensor:
    """A standard error that keeps the 95% interval honest when a token's remainder
    lies in few directions. A probe of a remainder ``G = R_t R_t^T`` is then close to
    a scaled chi-square with ``nu = (tr G)^2 / ||G||_F^2`` degrees of freedom, so the
    mean of m is right-skewed: when it comes out low the symmetric interval misses the
    score above it. Here ``nu`` is estimated as ``mean^2 / pairwise`` (at least 1), and
    the interval ``[mean m nu / chi2_0.975, mean m nu / chi2_0.025]`` (Satterthwaite)
    gives its upper half-width over 1.96, which the caller takes where it is wider."""
    from scipy.stats import chi2

    # at most 1e6 degrees of freedom: beyond, the interval is symmetric (and chi2.ppf stays finite)
    dof = (m * (mean.pow(2) / pairwise.clamp_min(torch.finfo(pairwise.dtype).tiny)).clamp(min=1)).clamp(max=1e6)
    low = torch.from_numpy(chi2.ppf(0.025, dof.detach().cpu().double().numpy())).to(mean)
    return (mean * (dof / low - 1)).clamp(min=0) / 1.959963984540054


def student_t(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))
