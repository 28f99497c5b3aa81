"""The eig estimator: the reference's truncation to the top k eigen-directions of F."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from captum_jscopes.fisher.algebra import eigen, fisher_matrix, path_cost, top_eigenpairs
from captum_jscopes.fisher.estimators.base import FisherProbes, ProbeEstimator, check_k, top_directions

__all__ = ["EigEstimator"]


@dataclass(frozen=True)
class EigEstimator(ProbeEstimator):
    """The reference's truncation to the top ``k`` eigen-directions: biased low by
    the dropped eigenvalues' share, no error estimate. ``k`` backward passes (at
    most d). On a large vocabulary the top ``k`` come matrix-free (subspace
    iteration on F X products, ``path="matrix_free"``).

    Args:
        k: eigen-directions kept. Default 1.
    """

    name: ClassVar[str] = "eig"
    biased: ClassVar[bool] = True
    summary: ClassVar[str] = "top-k truncation, biased low"
    paths: ClassVar[tuple[str, ...]] = ("formed", "matrix_free")

    k: int = field(default=1, metadata={"help": "eigen-directions kept (1)"})

    def __post_init__(self) -> None:
        check_k(self.k)

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        return min(self.k, hidden_size)

    def path_cost(self, path: str, vocab: int, hidden_size: int) -> float:
        # subspace iteration on 16 vectors, about 4 iterations
        return path_cost(path, vocab, hidden_size)

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        if fisher is None and self.choose_path(forward, path) == "matrix_free":
            values, vectors, info = top_eigenpairs(forward, self.k, seed=seed, vocab_chunk=vocab_chunk)
            exact = (vectors * values[..., None, :].sqrt()).movedim(-1, 0)
            return FisherProbes(exact=exact, info={"path": "matrix_free", "k": self.k, "n_probes": 0, **info})
        if fisher is None:
            fisher = fisher_matrix(forward, vocab_chunk)
        values, vectors = eigen(fisher)
        k = min(self.k, values.shape[-1])
        return FisherProbes(exact=top_directions(values, vectors, k), info={"path": "formed", "k": k, "n_probes": 0})
