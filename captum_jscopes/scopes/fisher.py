"""Fisher Scope: which input tokens drive the whole predictive distribution."""

from __future__ import annotations

import time
from typing import Any, Optional, Union

from torch import Tensor

from captum_jscopes.fisher.estimators import DEFAULT_BUDGET, DEFAULT_METHOD, fisher_scores, probes
from captum_jscopes.core.forward import gradient_checkpointing
from captum_jscopes.scopes.base import JacobianScope, RunForward


class FisherScope(JacobianScope):
    """Fisher Scope (arXiv 2601.16407, section 3.3): the score of token t is
    ``tr(J_t^T F J_t)``, the expected second-order KL change of the next-token
    distribution under isotropic noise on ``x_t``. Scores are not square-rooted
    (as in the reference). No target.

    Options of :meth:`attribute`:
        method (str): ``"hutchinson"`` (default: the top-k eigen-directions of F
            exactly plus random-sign combinations of the remaining ones, averaged:
            unbiased, per-token coefficient of variation <= sqrt(2/m),
            ``return_error=True`` gives its standard error; ``budget`` = 40 backward
            passes in all), ``"deflated"`` (the remainder's
            eigen-directions sampled one at a time in proportion to their
            eigenvalue; the default of 0.1.0, as accurate, formed path only), ``"exact"`` (d backward passes, equals the brute-force
            value), or ``"eig"`` (the reference's top-k truncation, biased low).
        k (int or "auto"): eigen-directions kept exactly. hutchinson: "auto"
            (default) chooses the split of ``budget`` from the spectrum; deflated:
            16; eig: 1.
        n_probes (int): sampled directions. hutchinson: ``budget - k``; deflated: 24.
        budget (int): backward passes of the hutchinson estimator. Default: 40.
        path (str): how F is reached: ``"auto"`` (default: the cheaper by operation
            count), ``"formed"`` (the d x d matrix over the whole vocabulary),
            ``"split"`` (hutchinson: head of the vocabulary eigendecomposed through
            its Gram matrix, tail sampled matrix-free) or ``"matrix_free"`` (eig:
            subspace iteration on F X products). The path that ran is in
            :attr:`last_info`.
        seed (int): seed of the probes. Default: 0.
        vocab_chunk (int): vocabulary rows per step. Default: 8192.
        progress (bool): a tqdm bar over the backward passes. Default: False.
        gradient_checkpointing (bool): run the forward with the model's own
            activation checkpointing (less memory on long prompts, one more forward
            per batch of backward passes); the model's setting is restored
            afterwards, also after an error. Default: False.
    F, its eigen-directions and the scores are computed in float32 (float64 for a
    float64 model) whatever the model's dtype.
    """

    name = "fisher"

    #: what the last call ran: path, k, n_probes (and for the split path the head size), and
    #: f_seconds, the time spent on F (eigen-directions and probes) outside the backward passes
    last_info: dict = {}

    def _scores(
        self,
        run: RunForward,
        targets: Optional[Tensor],
        method: str = DEFAULT_METHOD,
        k: Union[int, str, None] = None,
        n_probes: Optional[int] = None,
        seed: int = 0,
        vocab_chunk: int = 8192,
        path: str = "auto",
        budget: int = DEFAULT_BUDGET,
        progress: bool = False,
        gradient_checkpointing: bool = False,
        **options: Any,
    ) -> tuple[Tensor, Optional[Tensor]]:
        self._reject_options(options)
        with _checkpointing(self.model, gradient_checkpointing):
            forward = run(1.0)
            started = time.perf_counter()
            found = probes(None, method=method, k=k, n_probes=n_probes, seed=seed, forward=forward, path=path,
                           budget=budget, vocab_chunk=vocab_chunk)
            # the F side (everything between the forward and the backward passes), for the benchmarks
            self.last_info = {**found.info, "f_seconds": time.perf_counter() - started}
            scores, error = fisher_scores(forward, found, self.chunk_size, progress)
        if error is None and method == "eig":
            error = scores.new_full(scores.shape, float("nan"))  # truncation bias is not estimated
        return scores, error

    def components(
        self,
        input_ids: Tensor,
        k: int = 4,
        position: Union[int, Tensor] = -1,
        attention_mask: Optional[Tensor] = None,
        **options: Any,
    ):
        """The spectral view: the top ``k`` eigen-directions of F at ``position``,
        their share of ``tr F``, each one's token scores ``l_i ||u_i^T J_t||^2``
        (k backward passes; over all d directions they add up to the exact
        Fisher score) and the vocabulary tokens each one raises and lowers.
        See :func:`captum_jscopes.fisher.components.components`."""
        from captum_jscopes.fisher.estimators.components import components

        return components(self, input_ids, k=k, position=position, attention_mask=attention_mask, **options)


def _checkpointing(model, enabled: bool):
    from contextlib import nullcontext

    return gradient_checkpointing(model) if enabled else nullcontext()
