"""The exact estimator: every eigen-direction of F, d backward passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from captum_jscopes.fisher.algebra import eigen, fisher_matrix
from captum_jscopes.fisher.estimators.base import FisherProbes, ProbeEstimator, top_directions

__all__ = ["ExactEstimator"]


@dataclass(frozen=True)
class ExactEstimator(ProbeEstimator):
    """Every eigen-direction ``sqrt(l_i) u_i`` of the formed F: d backward passes,
    equal to the brute-force score. No options."""

    name: ClassVar[str] = "exact"
    summary: ClassVar[str] = "d backward passes"

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        return hidden_size

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        if fisher is None:
            # F and its eigenpairs in float64: the reference must not carry float32's error in the
            # small eigenvalues (see fisher_matrix); the directions go back to the compute dtype
            fisher = fisher_matrix(forward, vocab_chunk, dtype=torch.float64)
            values, vectors = eigen(fisher)
            dtype = forward.compute_dtype
        else:
            values, vectors = eigen(fisher)
            dtype = fisher.dtype
        d = values.shape[-1]
        return FisherProbes(exact=top_directions(values, vectors, d).to(dtype),
                            info={"path": "formed", "k": d, "n_probes": 0})
