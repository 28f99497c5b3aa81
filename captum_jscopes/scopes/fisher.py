"""Fisher Scope: which input tokens drive the whole predictive distribution."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward, gradient_checkpointing
from captum_jscopes.fisher.algebra import PATHS
from captum_jscopes.fisher.estimators import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    ExactEstimator,
    FisherEstimator,
    estimator,
)
from captum_jscopes.scopes.base import JacobianScope, RunForward, ScopeOptions

__all__ = ["FisherScope", "FisherOptions"]


class _DefaultEstimator(str):
    """The default estimator name, marked as not chosen by the user: it equals
    the plain name, but :meth:`FisherScope.local_options` can tell it apart (the
    linearity check runs the exact estimator unless one was chosen)."""

    __slots__ = ()


@dataclass(frozen=True)
class FisherOptions(ScopeOptions):
    """Options of :meth:`FisherScope.attribute`. ``k``, ``n_probes`` and
    ``budget`` left at None take the chosen estimator's own default (see
    :mod:`captum_jscopes.fisher.estimators`); one the estimator does not take is
    a TypeError."""

    estimator: str = field(
        default=_DefaultEstimator(DEFAULT_ESTIMATOR),
        metadata={"help": "Fisher estimator: krylov (the tokens' Fisher mass deflated by block Krylov iteration "
                          "+ random-sign probes; unbiased, with a standard error, tol=; 48 passes), hutchinson "
                          "(top-k eigen-directions of F exactly + random-sign probes, unbiased, with a standard "
                          "error; 40 backward passes), deflated (top-16 + 24 sampled "
                          "eigen-directions), exact (d backward passes) or eig (top-k truncation, biased low). "
                          f"Default: {DEFAULT_ESTIMATOR}",
                  "choices": tuple(ESTIMATORS)},
    )
    k: Union[int, str, None] = field(
        default=None,
        metadata={"help": "eigen-directions kept exactly: hutchinson 'auto' (the split of the budget chosen from "
                          "the spectrum), deflated 16, eig 1. Default: the estimator's"},
    )
    n_probes: Optional[int] = field(
        default=None,
        metadata={"help": "sampled directions: hutchinson budget - k, krylov a third of the budget, deflated 24 (even). "
                          "Default: the estimator's"},
    )
    budget: Optional[int] = field(
        default=None,
        metadata={"help": "passes of the hutchinson (40) or krylov (48) estimator in all. Default: the estimator's"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the sampled probes. Default: 0"})
    tol: Optional[float] = field(
        default=None,
        metadata={"help": "krylov: add probes until the estimated relative L2 error of the map is below this "
                          "(e.g. 0.02), up to max_passes. Default: none (the estimator's fixed passes)"},
    )
    max_passes: Optional[int] = field(
        default=None,
        metadata={"help": "with tol: at most this many passes in all, then a warning. Default: d (exact's cost)"},
    )
    path: str = field(
        default="auto",
        metadata={"help": "how F is reached: auto (the cheaper by operation count), formed (the d x d matrix), "
                          "split (hutchinson: head eigendecomposed, tail sampled) or matrix_free (eig: subspace "
                          "iteration). Default: auto",
                  "choices": PATHS},
    )
    vocab_chunk: int = field(default=8192, metadata={"help": "vocabulary rows per step. Default: 8192"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "run the forward with the model's activation checkpointing (less memory on long "
                          "prompts; the model's setting is restored). Default: off"},
    )


class FisherScope(JacobianScope):
    """Fisher Scope (arXiv 2601.16407, section 3.3): the score of token t is
    ``tr(J_t^T F J_t)``, the expected second-order KL change of the next-token
    distribution under isotropic noise on ``x_t``. Scores are not square-rooted
    (as in the reference). No target.

    Options of :meth:`attribute` (:class:`FisherOptions`):
        estimator (str): ``"krylov"`` (default: the directions that carry the
            tokens' Fisher mass, the top of ``T = F^{1/2} J J^T F^{1/2}``, found by
            block Krylov iteration from Jacobian-vector products and computed
            exactly, plus random-sign probes of the rest, Hutch++-style: unbiased,
            ``return_error=True`` gives standard errors whose +-1.96 is a 95% interval
            (widened where a token's remainder lies in few directions, whose probes
            are skewed), ``tol=`` adds probes to a target error; ``budget`` = 48 passes in all, see
            :class:`~captum_jscopes.fisher.estimators.KrylovEstimator`),
            ``"hutchinson"`` (the top-k eigen-directions of F exactly plus
            random-sign combinations of the remaining ones, averaged: unbiased,
            per-token coefficient of variation <= sqrt(2/m), with a standard error;
            40 backward passes; the default of 0.2.0), ``"deflated"`` (the remainder's eigen-directions
            sampled one at a time in proportion to their eigenvalue; the default
            of 0.1.0, as accurate, formed path only), ``"exact"`` (d backward
            passes, equals the brute-force value), or ``"eig"`` (the reference's
            top-k truncation, biased low; its standard error is NaN). The
            estimators are the classes of :mod:`captum_jscopes.fisher.estimators`.
            ``method=`` is a deprecated alias.
        k (int or "auto"): eigen-directions kept exactly. hutchinson: "auto"
            (default) chooses the split of ``budget`` from the spectrum; deflated:
            16; eig: 1.
        n_probes (int): sampled directions. hutchinson: ``budget - k``; krylov:
            a third of ``budget`` (the rest finds and runs the Krylov directions);
            deflated: 24.
        budget (int): passes of the hutchinson (default 40) or krylov (48) estimator.
        tol (float): krylov only: add probes until the estimated relative L2 error
            of every map (``sqrt(sum_t se_t^2) / ||scores||``) is below ``tol``,
            e.g. 0.02; the passes used are in ``last_info["passes"]``. Default: None.
        max_passes (int): with ``tol``: at most this many passes in all, then a
            RuntimeWarning. Default: d (exact's cost).
        path (str): how F is reached: ``"auto"`` (default: the cheaper by operation
            count), ``"formed"`` (the d x d matrix over the whole vocabulary),
            ``"split"`` (hutchinson: head of the vocabulary eigendecomposed through
            its Gram matrix, tail sampled matrix-free) or ``"matrix_free"`` (eig:
            subspace iteration on F X products). The path that ran is in
            :attr:`last_info`.
        seed (int): seed of the probes. Default: 0.
        vocab_chunk (int): vocabulary rows per step. Default: 8192.
        gradient_checkpointing (bool): run the forward with the model's own
            activation checkpointing (less memory on long prompts, one more forward
            per batch of backward passes); the model's setting is restored
            afterwards, also after an error. Default: False.
    ``progress=True`` shows a bar over all the backward passes (every explained
    position's at once). F, its eigen-directions and the scores are computed in
    float32 (float64 for a float64 model) whatever the model's dtype.
    """

    name = "fisher"
    explains = "the whole next-token distribution"
    takes_target = False
    span_rule = "sum"  # a trace: additive over tokens
    perturbation = "isotropic"
    Options = FisherOptions
    deprecated_options = ("method",)
    quick_look = {"estimator": "eig"}  # the reference's top-1 truncation: one backward pass

    #: what the last call ran: path, k, n_probes (and for the split path the head size), passes
    #: (every VJP and JVP per explained position), f_seconds, the time spent on F (eigen-directions and
    #: probes) outside the backward passes, and for krylov rel_error, the estimated relative L2 error
    #: (from the probes' spread, what ``tol`` bounds; the returned errors can be wider for the intervals)
    last_info: dict = {}

    # -- the scope protocol ----------------------------------------------------------
    @classmethod
    def make_options(cls, **options: Any) -> FisherOptions:
        """:class:`FisherOptions` from keyword options; ``method=`` is accepted as
        the deprecated name of ``estimator=`` (DeprecationWarning)."""
        if "method" in options:
            warnings.warn("method= is deprecated; use estimator=", DeprecationWarning, stacklevel=_outside_package())
            if "estimator" in options:
                raise TypeError("give estimator= only (method= is its deprecated name), not both")
            options["estimator"] = options.pop("method")
        return super().make_options(**options)

    @classmethod
    def estimator_of(cls, options: FisherOptions) -> FisherEstimator:
        """The estimator object the options ask for (a ValueError for an unknown
        name or bad value, a TypeError for an option it does not take)."""
        return estimator(str(options.estimator), k=options.k, n_probes=options.n_probes, budget=options.budget)

    @classmethod
    def backward_passes(cls, options: FisherOptions, hidden_size: int) -> int:
        return cls.estimator_of(options).backward_passes(hidden_size, options.path)

    @classmethod
    def randomised(cls, options: FisherOptions) -> bool:
        return cls.estimator_of(options).randomised

    @classmethod
    def local_options(cls, options: FisherOptions) -> FisherOptions:
        """The exact estimator (d backward passes: the prediction is not an
        estimate), unless an estimator was chosen; the other estimators' options
        are dropped with it, as they were ignored before."""
        if not isinstance(options.estimator, _DefaultEstimator):
            return options
        return dataclasses.replace(options, estimator=ExactEstimator.name, k=None, n_probes=None, budget=None)

    @classmethod
    def settings(cls, options: FisherOptions) -> dict:
        """``fisher_method`` (the key of the JSON files and of ``jscopes
        attribute``) plus every other option that differs from its default."""
        settings: dict[str, Any] = {"fisher_method": str(options.estimator)}
        for option in dataclasses.fields(options):
            value = getattr(options, option.name)
            if option.name != "estimator" and value != option.default and isinstance(value, (int, float, str, bool)):
                settings[option.name] = value
        return settings

    def shows_own_progress(self, options: FisherOptions) -> bool:
        # one bar over every position's backward passes: the estimator draws its probes
        # and splits its budget for all positions at once, so they are not run one by one
        return True

    def readout(self, hidden: Tensor, logits: Tensor, targets: Optional[Tensor]) -> Tensor:
        """(B, V) the log-probabilities, whose KL the score predicts."""
        return torch.log_softmax(logits, -1)

    @classmethod
    def exact_directions(cls, forward: ScopeForward, vocab_chunk: int = 8192) -> Tensor:
        """(d, B, P, d) every eigen-direction ``sqrt(l_i) u_i`` of F (formed), so
        that ``F = sum_i v_i v_i^T`` (the linearity check's paired reference)."""
        return ExactEstimator().probes(forward, vocab_chunk=vocab_chunk).exact

    # -- the scores ------------------------------------------------------------------
    def _scores(
        self, run: RunForward, targets: Optional[Tensor], options: FisherOptions, *, progress: bool = False
    ) -> tuple[Tensor, Optional[Tensor]]:
        chosen = self.estimator_of(options)
        if options.gradient_checkpointing and options.rules == "lrp":
            # the checkpointed layers rerun their forward in the backward pass, after the rules' hooks are gone
            raise ValueError("gradient_checkpointing cannot run with rules='lrp'; drop one of them")
        with _checkpointing(self.model, options.gradient_checkpointing):
            forward = run(1.0)
            scores, error, self.last_info = chosen.scores(
                forward, seed=options.seed, path=options.path, vocab_chunk=options.vocab_chunk,
                chunk_size=self.chunk_size, progress=progress, tol=options.tol, max_passes=options.max_passes)
        if error is None and chosen.biased:
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
        Fisher score) and the vocabulary tokens each one raises and lowers, as a
        :class:`~captum_jscopes.fisher.components.FisherComponents` (print it, or
        call its ``describe`` and ``plot``).
        See :func:`captum_jscopes.fisher.components.components`."""
        from captum_jscopes.fisher.components import components

        return components(self, input_ids, k=k, position=position, attention_mask=attention_mask, **options)


def _checkpointing(model, enabled: bool):
    return gradient_checkpointing(model) if enabled else nullcontext()


def _outside_package() -> int:
    """The ``stacklevel`` of the first caller outside this package, so that a
    deprecation warning points at the user's line (and is shown by default)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level
