"""Fisher Scope: which input tokens drive the whole predictive distribution."""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from .fisher import fisher_matrix, fisher_scores, probes
from .scope import JacobianScope, RunForward


class FisherScope(JacobianScope):
    """Fisher Scope (arXiv 2601.16407, section 3.3): the score of token t is
    ``tr(J_t^T F J_t)``, the expected second-order KL change of the next-token
    distribution under isotropic noise on ``x_t``. Scores are not square-rooted
    (as in the reference). No target.

    Options of :meth:`attribute`:
        method (str): ``"deflated"`` (default; the top-k eigen-directions exactly
            plus eigen-directions of the remainder sampled in proportion to their
            eigenvalue: unbiased, ``return_error=True`` gives its standard error;
            k + n_probes = 40 backward passes), ``"exact"`` (d backward passes,
            equals the brute-force value), or ``"eig"`` (the reference's top-k
            truncation, biased low).
        k (int): eigen-directions kept exactly; default 16 (deflated), 1 (eig).
        n_probes (int): sampled directions of the deflated estimator (even).
            Default: 24.
        seed (int): seed of the probes. Default: 0.
        vocab_chunk (int): vocabulary rows per step when building F. Default: 8192.
    F, its eigendecomposition and the scores are computed in float32 (float64 for
    a float64 model) whatever the model's dtype.
    """

    name = "fisher"

    def _scores(
        self,
        run: RunForward,
        targets: Optional[Tensor],
        method: str = "deflated",
        k: Optional[int] = None,
        n_probes: int = 24,
        seed: int = 0,
        vocab_chunk: int = 8192,
        **options: Any,
    ) -> tuple[Tensor, Optional[Tensor]]:
        self._reject_options(options)
        forward = run(1.0)
        found = probes(fisher_matrix(forward, vocab_chunk), method=method, k=k, n_probes=n_probes, seed=seed)
        scores, error = fisher_scores(forward, found, self.chunk_size)
        if error is None and method == "eig":
            error = scores.new_full(scores.shape, float("nan"))  # truncation bias is not estimated
        return scores, error
