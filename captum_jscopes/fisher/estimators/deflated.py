"""The deflated estimator (the default of 0.1.0): the top k eigen-directions of the
formed F exactly plus single eigen-directions of the remainder drawn in proportion to
their eigenvalue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from captum_jscopes.fisher.algebra import eigen, fisher_matrix
from captum_jscopes.fisher.estimators.base import FisherProbes, ProbeEstimator, check_k, top_directions

__all__ = ["DeflatedEstimator"]


@dataclass(frozen=True)
class DeflatedEstimator(ProbeEstimator):
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
    summary: ClassVar[str] = "top-16 + 24 sampled eigen-directions"
    randomised: ClassVar[bool] = True

    k: int = field(default=16, metadata={"help": "eigen-directions kept exactly (16)"})
    n_probes: int = field(default=24, metadata={"help": "sampled eigen-directions, an even int (24)"})

    def __post_init__(self) -> None:
        check_k(self.k)
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
        exact = top_directions(values, vectors, k)  # (k, B, P, d)
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
