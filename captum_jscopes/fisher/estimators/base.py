"""What every Fisher estimator is and does, the table of them and the backward passes
that turn probe directions into scores.

- :class:`FisherEstimator`: the one protocol. A frozen dataclass whose fields are the
  estimator's own options; it says its passes (:meth:`~FisherEstimator.backward_passes`),
  the ways to F it takes and what each costs (:attr:`~FisherEstimator.paths`,
  :meth:`~FisherEstimator.path_cost`, from which :meth:`~FisherEstimator.choose_path`
  picks), and computes the scores (:meth:`~FisherEstimator.scores`).
- :class:`ProbeEstimator`: the estimators whose directions come from F alone
  (:meth:`~ProbeEstimator.probes`, one backward pass each); their :meth:`scores` is
  shared, built on their ``_probes``.
- :data:`ESTIMATORS`, filled by :func:`register_estimator`, and :func:`estimator`,
  which builds one by name.
- :func:`fisher_scores` and :func:`squared_norms`: the backward passes of a set of
  :class:`FisherProbes`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward
from captum_jscopes.fisher.algebra import PATHS, choose_path, path_cost

__all__ = [
    "FisherProbes",
    "FisherEstimator",
    "ProbeEstimator",
    "ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "DEFAULT_PROBE_ESTIMATOR",
    "register_estimator",
    "add_registration_check",
    "estimator",
    "probes",
    "fisher_scores",
    "squared_norms",
]

#: the estimator every entry point uses unless told otherwise. On held-out LAMBADA passages
#: (docs/fisher.md) it is more accurate than "hutchinson" (median relative L2 error 1.8% against
#: 2.3%, worst 11% against 15%), its 95% intervals cover more of the five largest scores (94% against
#: 91.5% on float64 references), and on Gemma-3's 262k vocabulary it is as fast (its JVPs stop at the
#: final hidden state)
DEFAULT_ESTIMATOR = "krylov"
#: the default of :func:`probes`, which turns a formed F into directions: krylov chooses its
#: directions from the model's JVPs as it goes, so it has no F-only form
DEFAULT_PROBE_ESTIMATOR = "hutchinson"


@dataclass
class FisherProbes:
    """Directions whose squared VJP norms estimate the Fisher score.

    ``exact`` (k, B, P, d) count with weight 1. ``sampled`` (m, B, P, d):
    for ``"deflated"`` they count with weight 1 (pre-scaled importance samples;
    consecutive pairs of strata give the error estimate); for ``"hutchinson"``
    each one is an unbiased sample of the remainder, so they are averaged and
    their spread gives the standard error (``average=True``).
    ``info`` says which path ran and how the passes were split (``path``, ``k``,
    ``n_probes``, and the split path's ``head_tokens`` and ``head_share``).
    """

    exact: Tensor
    sampled: Optional[Tensor] = None
    average: bool = False
    info: dict = field(default_factory=dict)


# -- the protocol --------------------------------------------------------------------
@dataclass(frozen=True)
class FisherEstimator:
    """Base of the estimators: a frozen dataclass whose fields are the estimator's
    own options with their defaults (a field's ``metadata={"help": ...}`` is the help
    of its Fisher Scope option and command-line flag ``--fisher-<option>``).

    A subclass sets the class attributes and defines :meth:`backward_passes` and
    :meth:`scores` (or, through :class:`ProbeEstimator`, ``_probes``); a path other
    than ``"formed"`` comes with its cost in :meth:`path_cost`. Registered with
    :func:`register_estimator`, it is a choice of ``FisherScope(...).attribute(ids,
    estimator=...)``, of ``--fisher-estimator`` and of ``DatasetSettings(fisher_estimator=...)``,
    and each of its fields an option of all of them."""

    #: the name in :data:`ESTIMATORS`, the scope's ``estimator=`` and the JSON's ``fisher_method``
    name: ClassVar[str] = ""
    #: a few words for ``--fisher-estimator``'s help; empty: the docstring's first line
    summary: ClassVar[str] = ""
    #: whether it draws probes: its result depends on the seed
    randomised: ClassVar[bool] = False
    #: whether its estimate is biased with no error estimate (the scope reports a NaN standard error)
    biased: ClassVar[bool] = False
    #: the ways to F it can take besides "auto" (see :data:`captum_jscopes.fisher.algebra.PATHS`)
    paths: ClassVar[tuple[str, ...]] = ("formed",)
    #: whether ``tol=`` applies to :meth:`scores`: it adds probes until the estimated error is below it
    adaptive: ClassVar[bool] = False
    #: whether its directions come from F alone (then :meth:`probes` gives them before any pass)
    probes_from_f: ClassVar[bool] = False

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        """Passes (vector-Jacobian and Jacobian-vector products) per explained token
        on a model of width ``hidden_size`` (d). ``path``: the Fisher path asked
        for; ``"auto"`` counts as formed (every model whose vocabulary makes forming
        F the cheaper way)."""
        raise NotImplementedError(f"{type(self).__name__} defines no backward_passes")

    def scores(
        self,
        forward: ScopeForward,
        *,
        seed: int = 0,
        path: str = "auto",
        vocab_chunk: int = 8192,
        chunk_size: int = 32,
        progress: bool = False,
        tol: Optional[float] = None,
        max_passes: Optional[int] = None,
    ) -> tuple[Tensor, Optional[Tensor], dict]:
        """The Fisher scores of ``forward``'s explained positions.

        Args:
            forward: the forward pass (its head, probabilities and hidden states).
            seed: seeds the draws (default 0); the draws do not depend on the
                batch, so a batch gives the same scores as its prompts one at a time.
            path: ``"auto"`` (default: the cheaper by operation count, :meth:`choose_path`)
                or one of the estimator's :attr:`paths`.
            vocab_chunk: vocabulary rows per step. Default 8192.
            chunk_size: passes batched together. Default 32.
            progress: a tqdm bar over the passes. Default False.
            tol, max_passes: for :attr:`adaptive` estimators (others raise a
                ValueError when ``tol`` is given, :meth:`check_tol`): add probes until
                the estimated relative L2 error of every map is below ``tol``, or
                ``max_passes`` passes in all (default: d, the exact estimator's cost)
                are spent.
        Returns:
            scores (B, P, n) (with layer states (B, P, L + 1, n)), their standard
            error (same shape) or None when exact, and ``info``: the path, the
            split of the passes, ``passes`` (every VJP and JVP run) and
            ``f_seconds`` (the time spent on F outside the passes).
        """
        raise NotImplementedError(f"{type(self).__name__} defines no scores")

    def probes(self, forward: Optional[ScopeForward] = None, **_: Any) -> FisherProbes:
        """The probe directions from F alone: only a :class:`ProbeEstimator` has them."""
        raise TypeError(f"the {self.name} estimator chooses its directions as it goes (they do not come from F "
                        "alone): call scores(forward)")

    def path_cost(self, path: str, vocab: int, hidden_size: int) -> float:
        """Multiply-adds of reaching F by ``path`` (one of :attr:`paths`) on a head of
        ``vocab`` rows of width ``hidden_size``: what ``path="auto"`` compares
        (:meth:`choose_path`). Default: the formed path's ``V d^2 + 10 d^3``; an
        estimator with another path prices it here
        (:func:`~captum_jscopes.fisher.algebra.path_cost`)."""
        if path != "formed":
            raise NotImplementedError(f"{type(self).__name__} takes path {path!r} but prices only 'formed'")
        return path_cost("formed", vocab, hidden_size)

    def choose_path(self, forward: Any, path: str = "auto") -> str:
        """The way to F this estimator takes on ``forward``'s head (only its
        ``weight`` (V, d) is read): ``path`` checked against :attr:`paths`, or for
        ``"auto"`` the cheapest by :meth:`path_cost`
        (:func:`~captum_jscopes.fisher.algebra.choose_path`)."""
        return choose_path(forward, path, self)

    def check_tol(self, tol: Optional[float], max_passes: Optional[int]) -> None:
        """A one-line ValueError for ``tol`` given to an estimator that is not
        :attr:`adaptive`, and for a bad ``tol`` or ``max_passes``."""
        if tol is not None:
            if not self.adaptive:
                adaptive = ", ".join(name for name, cls in ESTIMATORS.items() if cls.adaptive)
                raise ValueError(f"tol= needs an estimator that adds probes ({adaptive}); {self.name!r} runs a "
                                 "fixed number of passes")
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
                raise ValueError(f"tol must be a relative error in (0, 1), e.g. 0.02, got {tol!r}")
        if max_passes is not None:
            if tol is None:
                raise ValueError("max_passes= bounds tol=: give tol too")
            if isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 1:
                raise ValueError(f"max_passes must be a positive int, got {max_passes!r}")

    def options(self) -> dict:
        """The estimator's own options, name -> value (its dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ProbeEstimator(FisherEstimator):
    """An estimator whose directions come from F alone: a subclass defines
    ``_probes(forward, fisher, seed, path, vocab_chunk)`` returning
    :class:`FisherProbes`; :meth:`probes` checks the arguments and :meth:`scores`
    runs one backward pass per direction (:func:`fisher_scores`)."""

    probes_from_f: ClassVar[bool] = True

    def scores(self, forward, *, seed=0, path="auto", vocab_chunk=8192, chunk_size=32, progress=False, tol=None,
               max_passes=None):
        self.check_tol(tol, max_passes)
        started = time.perf_counter()
        found = self.probes(forward, seed=seed, path=path, vocab_chunk=vocab_chunk)
        # the F side (everything between the forward and the backward passes), for the benchmarks
        info = {**found.info, "f_seconds": time.perf_counter() - started}
        scores, error = fisher_scores(forward, found, chunk_size, progress)
        info["passes"] = found.exact.shape[0] + (0 if found.sampled is None else found.sampled.shape[0])
        return scores, error, info

    scores.__doc__ = FisherEstimator.scores.__doc__

    def probes(
        self,
        forward: Optional[ScopeForward] = None,
        *,
        fisher: Optional[Tensor] = None,
        seed: int = 0,
        path: str = "auto",
        vocab_chunk: int = 8192,
    ) -> FisherProbes:
        """The probe directions for ``forward``'s explained positions.

        Args:
            forward: the forward pass (its head, probabilities and hidden states);
                or None with ``fisher``.
            fisher: (B, P, d, d) a formed F (:func:`~captum_jscopes.fisher.algebra.fisher_matrix`);
                then the path is ``"formed"``. Default None: reached from ``forward``.
            seed, path, vocab_chunk: as in :meth:`scores`.
        """
        if path not in PATHS:
            raise ValueError(f"unknown Fisher path {path!r}; choose one of {', '.join(PATHS)}")
        if path != "auto" and path not in self.paths:
            raise ValueError(f"path {path!r} does not apply to method {self.name!r} (its paths: {', '.join(self.paths)})")
        if fisher is None and forward is None:
            raise ValueError("probes needs the Fisher matrix or the forward pass")
        return self._probes(forward, fisher, seed, path, vocab_chunk)

    def _probes(self, forward: Optional[ScopeForward], fisher: Optional[Tensor], seed: int, path: str,
                vocab_chunk: int) -> FisherProbes:
        """The directions; ``path`` is checked (still ``"auto"`` when not given: resolve
        it with :meth:`choose_path` where F is not given)."""
        raise NotImplementedError(f"{type(self).__name__} defines no _probes")


def check_k(k: Any) -> int:
    """``k`` when it is a positive int, else a one-line ValueError."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return k


def check_positive(name: str, value: Any) -> None:
    """A one-line ValueError unless ``value`` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def top_directions(values: Tensor, vectors: Tensor, k: int) -> Tensor:
    """(k, B, P, d) ``sqrt(l_i) u_i`` of the top ``k`` eigenpairs (B, P, r), (B, P, d, r)."""
    return (vectors[..., :k] * values[..., None, :k].sqrt()).movedim(-1, 0)


# -- the table -----------------------------------------------------------------------
#: name -> estimator class, in the order of the tables and of ``--fisher-estimator``: the built-in
#: five (krylov, hutchinson, deflated, exact, eig), then those registered with :func:`register_estimator`
ESTIMATORS: dict[str, type[FisherEstimator]] = {}

#: called with each class about to be registered; raising refuses it (the Fisher Scope checks
#: that its options fit among its own)
_CHECKS: list[Callable[[type[FisherEstimator]], None]] = []

#: what :meth:`FisherEstimator.scores` takes besides the forward: no option may take one of these names
_SCORES_ARGUMENTS = tuple(inspect.signature(FisherEstimator.scores).parameters)[2:]


def add_registration_check(check: Callable[[type[FisherEstimator]], None]) -> None:
    """Call ``check(cls)`` before every estimator is registered from now on; an
    exception it raises refuses the estimator (the table is left as it was)."""
    _CHECKS.append(check)


def register_estimator(cls: type[FisherEstimator], *, replace: bool = False) -> type[FisherEstimator]:
    """Add an estimator class to :data:`ESTIMATORS`, after which it is a choice of
    the Fisher Scope's ``estimator=``, of ``--fisher-estimator`` and of the datasets'
    ``fisher_estimator``, and each of its dataclass fields an option of all of them
    (``alpha`` -> ``FisherScope(...).attribute(ids, estimator=..., alpha=0.5)``,
    ``--fisher-alpha``, ``DatasetSettings(fisher_alpha=...)``, the Inseq argument
    ``alpha``). Usable as a decorator (above ``@dataclass(frozen=True)``).

    Args:
        cls: a :class:`FisherEstimator` subclass, itself decorated with
            ``@dataclass(frozen=True)``, with its own ``name`` and
            :meth:`~FisherEstimator.backward_passes` and either
            :meth:`~FisherEstimator.scores` or (a :class:`ProbeEstimator`) ``_probes``.
        replace: allow replacing an estimator of the same name. Default False.
    Returns:
        ``cls``.
    Raises:
        TypeError: not such a class; ValueError: no name of its own, a name taken
        (and ``replace`` is False), an unknown path, or an option named like an
        argument of ``scores`` or an option of the Fisher Scope.
    """
    if not (isinstance(cls, type) and issubclass(cls, FisherEstimator)):
        raise TypeError(f"register_estimator takes a FisherEstimator subclass, got {cls!r}")
    if "__dataclass_params__" not in vars(cls) or not cls.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__} must be decorated with @dataclass(frozen=True) (its fields are its options)")
    if not isinstance(cls.name, str) or not cls.name.isidentifier() or cls.name == FisherEstimator.name:
        raise ValueError(f"{cls.__name__} needs a name of its own (a class attribute such as name = 'mine')")
    if cls.name in ESTIMATORS and ESTIMATORS[cls.name] is not cls and not replace:
        raise ValueError(f"an estimator named {cls.name!r} is registered already ({ESTIMATORS[cls.name].__name__}); "
                         "pass replace=True")
    missing = [method for method, base in (("backward_passes", FisherEstimator), ("scores", FisherEstimator),
                                           ("_probes", ProbeEstimator))
               if issubclass(cls, base) and getattr(cls, method) is getattr(base, method)]
    if missing:
        raise TypeError(f"{cls.__name__} defines no {' and no '.join(missing)}")
    unknown = [path for path in cls.paths if path not in PATHS or path == "auto"]
    if unknown or not cls.paths:
        raise ValueError(f"{cls.__name__}.paths must be among {', '.join(PATHS[1:])}, got {cls.paths!r}")
    taken = [f.name for f in dataclasses.fields(cls) if f.name in _SCORES_ARGUMENTS]
    if taken:
        raise ValueError(f"{cls.__name__}: an option may not be named {', '.join(taken)} (an argument of scores)")
    for check in _CHECKS:
        check(cls)
    ESTIMATORS[cls.name] = cls
    return cls


def estimator(name: str = DEFAULT_ESTIMATOR, **options: Any) -> FisherEstimator:
    """The estimator ``name`` of :data:`ESTIMATORS` with ``options`` (its fields;
    the rest, and those given as None, keep their defaults)::

        estimator("eig", k=4)          # EigEstimator(k=4)
        estimator("hutchinson")        # HutchinsonEstimator(k='auto', n_probes=None, budget=40, ...)

    Raises:
        ValueError: an unknown name (the message lists the names) or a bad value.
        TypeError: an option the estimator does not take.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown Fisher method {name!r}; the estimators are {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[name]
    # None is "not given", so that a caller can pass k=..., n_probes=... to any estimator
    given = {option: value for option, value in options.items() if value is not None}
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"the {name} estimator takes no option {', '.join(unknown)} "
                        f"(its options: {', '.join(known) or 'none'})")
    return cls(**given)


def probes(
    fisher: Optional[Tensor] = None,
    name: str = DEFAULT_PROBE_ESTIMATOR,
    *,
    forward: Optional[ScopeForward] = None,
    seed: int = 0,
    path: str = "auto",
    vocab_chunk: int = 8192,
    **options: Any,
) -> FisherProbes:
    """Shorthand for ``estimator(name, **options).probes(forward, fisher=fisher, ...)``:
    the probe directions of the estimator ``name`` from a formed ``fisher`` (B, P, d, d)
    or from ``forward``. ``options`` are the estimator's own (``k``, ``n_probes``,
    ``budget``, ...); None values mean its defaults."""
    chosen = estimator(name, **options)
    return chosen.probes(forward, fisher=fisher, seed=seed, path=path, vocab_chunk=vocab_chunk)


# -- scores --------------------------------------------------------------------------
def squared_norms(forward: ScopeForward, directions: Tensor, chunk_size: int, progress: bool = False,
                  desc: str = "Fisher backward passes") -> Tensor:
    """(m, B, P, n) ``forward.squared_norms`` of the directions (m, B, P, d) in
    chunks of ``chunk_size`` backward passes, with an optional tqdm bar."""
    if not progress or directions.shape[0] == 0:
        return forward.squared_norms(directions, chunk_size)
    from tqdm.auto import tqdm

    per_chunk = max(1, chunk_size // directions.shape[2])
    parts = []
    with tqdm(total=directions.shape[0], desc=desc, unit="pass") as bar:
        for chunk in directions.split(per_chunk, dim=0):
            parts.append(forward.squared_norms(chunk, chunk_size))
            bar.update(chunk.shape[0])
    return torch.cat(parts)


def fisher_scores(forward: ScopeForward, found: FisherProbes, chunk_size: int,
                  progress: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """(B, P, n) Fisher scores and their standard error (None when exact) from
    the probes ``found``: one backward pass per direction, ``chunk_size`` at a time."""
    directions = found.exact if found.sampled is None else torch.cat([found.exact, found.sampled])
    norms = squared_norms(forward, directions, chunk_size, progress)
    k = found.exact.shape[0]
    scores = norms[:k].sum(0)
    if found.sampled is None:
        return scores, None
    samples = norms[k:]  # (m, B, P, n)
    if found.average:
        m = samples.shape[0]
        error = samples.std(0, correction=1) / math.sqrt(m)
        return scores + samples.mean(0), error
    # collapsed strata: each pair of neighbouring strata estimates its own variance
    error = (samples[0::2] - samples[1::2]).pow(2).sum(0).sqrt()
    return scores + samples.sum(0), error
