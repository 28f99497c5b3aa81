"""Fisher Scope: which input tokens drive the whole predictive distribution."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
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
    add_registration_check,
    estimator,
)
from captum_jscopes.scopes.base import JacobianScope, RunForward, ScopeOptions

__all__ = ["FisherScope", "FisherOptions", "options_class", "estimator_options"]


class _DefaultEstimator(str):
    """The default estimator name, marked as not chosen by the user: it equals
    the plain name, but :meth:`FisherScope.local_options` can tell it apart (the
    linearity check runs the exact estimator unless one was chosen)."""

    __slots__ = ()


@dataclass(frozen=True)
class _ScopeFields(ScopeOptions):
    """The Fisher Scope's own options, and ``k``, ``n_probes`` and ``budget``, which
    several estimators share (one help text lists each one's default). The other
    options of the registered estimators join them in :func:`options_class`."""

    estimator: str = field(default=_DefaultEstimator(DEFAULT_ESTIMATOR))  # its help and choices: options_class
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
                          "split (hutchinson, krylov: head eigendecomposed, tail sampled) or matrix_free (eig: "
                          "subspace iteration). Default: auto",
                  "choices": PATHS},
    )
    vocab_chunk: int = field(default=8192, metadata={"help": "vocabulary rows per step. Default: 8192"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "run the forward with the model's activation checkpointing (less memory on long "
                          "prompts; the model's setting is restored). Default: off"},
    )


_OPTIONS_DOC = """Options of :meth:`FisherScope.attribute`: the scope's own (``estimator``,
    ``seed``, ``tol``, ``max_passes``, ``path``, ``vocab_chunk``,
    ``gradient_checkpointing``, and ``rules`` and ``reduce``, which every scope has)
    and every option of every registered estimator (its dataclass fields:
    ``k``, ``n_probes``, ``budget``, krylov's ``sketch``, ``block``, ``rounds``,
    hutchinson's and krylov's ``head_mass`` and ``max_head``, and those of an
    estimator registered from outside the package, which make this class a
    subclass of the same name: read it as ``FisherScope.Options``). An estimator
    option left at None takes the chosen estimator's own default (see
    :mod:`captum_jscopes.fisher.estimators`); one the estimator does not take is
    a TypeError."""

#: the estimators' options the scope declares itself (several share them: one help text lists each default)
_SHARED = ("k", "n_probes", "budget")
#: names no estimator option may take: the scope's own options and its deprecated ``method``
_RESERVED = (*(f.name for f in dataclasses.fields(_ScopeFields) if f.name not in _SHARED), "method")
_BUILT: dict[tuple, type] = {}


def estimator_options() -> tuple[str, ...]:
    """The options of the registered estimators (their dataclass fields), in the
    table's order: each one is an option of the Fisher Scope."""
    return tuple(dict.fromkeys(f.name for cls in ESTIMATORS.values() for f in dataclasses.fields(cls)))


def options_class() -> type:
    """The Fisher Scope's options dataclass for the estimators registered now
    (``FisherScope.Options`` reads it): :class:`FisherOptions` while only the
    built-in ones are, else a subclass of it that adds the new estimators' options
    (and widens a shared option's type where theirs differs). Made once per state
    of the table."""
    key = tuple(ESTIMATORS.items())
    if key not in _BUILT:
        base = _BUILT.get(_BUILTIN_KEY, _ScopeFields)
        _BUILT[key] = _make_options(base)
    return _BUILT[key]


def _make_options(base: type) -> type:
    """The options dataclass: ``base``'s fields, ``estimator`` with today's choices,
    and a field (default None: the estimator's default) per estimator option that
    ``base`` lacks or types more narrowly."""
    held = typing.get_type_hints(base)
    made: list[tuple[str, Any, Any]] = [("estimator", str, field(
        default=_DefaultEstimator(DEFAULT_ESTIMATOR),
        metadata={"help": _estimator_help(), "choices": tuple(ESTIMATORS)}))]
    for option, declared in _declarations().items():
        kinds = tuple(dict.fromkeys(kind for _, _, annotation in declared for kind in _kinds(annotation)))
        if option in held:
            have = _kinds(held[option])
            if set(kinds) <= set(have):
                continue
            kinds, text = (*have, *kinds), next(f.metadata.get("help") for f in dataclasses.fields(base)
                                               if f.name == option)
        else:
            text = "; ".join(f"{cls.name}: {f.metadata.get('help') or f'{option} (default {f.default!r})'}"
                             for cls, f, _ in declared) + ". Default: the estimator's"
        metadata = {"help": text}
        choices = [_choices(f, annotation) for _, f, annotation in declared]
        if all(c is not None for c in choices):
            metadata["choices"] = tuple(dict.fromkeys(value for c in choices for value in c))
        annotation = Union[tuple(dict.fromkeys((*kinds, type(None))))]  # type: ignore[valid-type]
        made.append((option, annotation, field(default=None, metadata=metadata)))
    cls = dataclasses.make_dataclass("FisherOptions", made, bases=(base,), frozen=True)
    cls.__module__, cls.__doc__ = __name__, _OPTIONS_DOC
    return cls


def _declarations() -> dict[str, list[tuple[type, dataclasses.Field, Any]]]:
    """option -> ``(estimator class, field, annotation)`` of each registered estimator taking it."""
    found: dict[str, list] = {}
    for cls in ESTIMATORS.values():
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 -- an annotation that does not resolve: any value, no flag
            hints = {}
        for f in dataclasses.fields(cls):
            annotation = hints.get(f.name, f.type)
            found.setdefault(f.name, []).append((cls, f, Any if isinstance(annotation, str) else annotation))
    return found


def _kinds(annotation: Any) -> tuple:
    """The members of a Union (``Optional[int]`` -> ``(int, NoneType)``), or the annotation itself."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(kind for arg in typing.get_args(annotation) for kind in _kinds(arg))
    return (annotation,)


def _choices(declared: dataclasses.Field, annotation: Any) -> Optional[tuple]:
    """The values an estimator's option takes: its metadata's ``choices`` or a Literal's; None: any."""
    if "choices" in declared.metadata:
        return tuple(declared.metadata["choices"])
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def _estimator_help() -> str:
    names = [f"{name} ({cls.summary or (cls.__doc__ or '').strip().splitlines()[0].rstrip('.')})"
             for name, cls in ESTIMATORS.items()]
    listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    return f"Fisher estimator: {listed}. Default: {DEFAULT_ESTIMATOR}"


def _check_estimator(cls: type) -> None:
    """Refuses an estimator (before it is registered) whose option is named like one of the scope's own."""
    taken = [f.name for f in dataclasses.fields(cls) if f.name in _RESERVED]
    if taken:
        raise ValueError(f"{cls.__name__}: an estimator option may not be named {', '.join(taken)} (an option of "
                         "the Fisher Scope itself)")


_BUILTIN_KEY = tuple(ESTIMATORS.items())
#: the options of the Fisher Scope with the built-in estimators (see ``_OPTIONS_DOC``)
FisherOptions = options_class()
add_registration_check(_check_estimator)


class _RegisteredOptions:
    """``FisherScope.Options``: :func:`options_class`, read when asked, so that an
    estimator registered later brings its options."""

    def __get__(self, obj: Any, owner: Any = None) -> type:
        return options_class()


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
            estimators are the classes of :mod:`captum_jscopes.fisher.estimators`;
            one registered there with ``register_estimator`` is a choice too.
            ``method=`` is a deprecated alias.
        k (int or "auto"): eigen-directions kept exactly. hutchinson: "auto"
            (default) chooses the split of ``budget`` from the spectrum; deflated:
            16; eig: 1.
        n_probes (int): sampled directions. hutchinson: ``budget - k``; krylov:
            a third of ``budget`` (the rest finds and runs the Krylov directions);
            deflated: 24.
        budget (int): passes of the hutchinson (default 40) or krylov (48) estimator.
        sketch, block, rounds (int): krylov's Krylov basis: Gaussian JVPs that
            start it, directions per round (a sixth of ``budget`` each) and rounds (2).
        head_mass (float), max_head (int): the split path's head (hutchinson, krylov).
        Every option of every registered estimator (its dataclass fields) is an
            option here, left at None for the estimator's default; one the chosen
            estimator does not take is a TypeError.
        tol (float): krylov only: add probes until the estimated relative L2 error
            of every map (``sqrt(sum_t se_t^2) / ||scores||``) is below ``tol``,
            e.g. 0.02; the passes used are in ``last_info["passes"]``. Default: None.
        max_passes (int): with ``tol``: at most this many passes in all, then a
            RuntimeWarning. Default: d (exact's cost).
        path (str): how F is reached: ``"auto"`` (default: the cheaper by operation
            count), ``"formed"`` (the d x d matrix over the whole vocabulary),
            ``"split"`` (hutchinson, krylov: head of the vocabulary eigendecomposed through
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
    Options = _RegisteredOptions()  # FisherOptions, plus the options of estimators registered from outside
    deprecated_options = ("method",)
    renamed_settings = {"fisher_method": "fisher_estimator"}  # the JSON key of 0.2.0 and before
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
        given = {option: getattr(options, option, None) for option in estimator_options()}
        return estimator(str(options.estimator), **given)

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
        dropped = {f.name: None for f in dataclasses.fields(options) if f.name in estimator_options()}
        return dataclasses.replace(options, estimator=ExactEstimator.name, **dropped)

    @classmethod
    def settings(cls, options: FisherOptions) -> dict:
        """``fisher_estimator`` (the key of the JSON files, as the setting and the
        flag ``--fisher-estimator`` are named; files of earlier versions wrote
        ``fisher_method``, which :meth:`ScopeResult.from_dict
        <captum_jscopes.results.result.ScopeResult.from_dict>` reads as it) plus
        every other option that differs from its default."""
        settings: dict[str, Any] = {"fisher_estimator": str(options.estimator)}
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
