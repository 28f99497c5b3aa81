"""The estimators of the Fisher score ``tr(J_t^T F J_t) = sum_i l_i ||u_i^T J_t||^2``,
one object each, on top of the F algebra of :mod:`captum_jscopes.fisher.algebra`.

Every estimator follows one protocol (:class:`~.base.FisherEstimator`): its options
are its dataclass fields, and ``scores(forward, ...)`` gives the scores, their
standard error and what ran. Those whose directions come from F alone
(:class:`~.base.ProbeEstimator`) also give them as :class:`FisherProbes`, whose
squared vector-Jacobian-product norms, one backward pass each, are the scores
(:func:`fisher_scores`):

============  =====================================================================
krylov        (default) the directions that carry the tokens' Fisher mass, found
              by block Krylov iteration (JVPs and VJPs), exactly, plus random-sign
              probes of the rest: unbiased, with a standard error, a ``tol``
              option; ``budget`` (48) passes in all (:mod:`.krylov`)
hutchinson    the top ``k`` eigen-directions of F exactly plus random-sign
              probes of the remainder, averaged: unbiased, with a standard error;
              ``budget`` (40) backward passes, split by :func:`choose_k` (:mod:`.hutchinson`)
deflated      the top ``k`` (16) exactly plus ``n_probes`` (24) single remaining
              eigen-directions drawn in proportion to their eigenvalue (:mod:`.deflated`)
exact         every eigen-direction ``sqrt(l_i) u_i``: d backward passes (:mod:`.exact`)
eig           the reference's truncation to the top ``k`` (1): biased low (:mod:`.eig`)
============  =====================================================================

:data:`ESTIMATORS` is their table, filled by :func:`register_estimator` (which adds
one from outside the package: docs/extending.md), and :func:`estimator` builds one
by name::

    scores, error, info = estimator("krylov", budget=64).scores(forward, seed=0)
    found = estimator("deflated", k=8).probes(forward, seed=0)
    scores, error = fisher_scores(forward, found, chunk_size=32)

Each estimator holds its defaults once (its dataclass fields), knows its backward
passes per explained token (:meth:`FisherEstimator.backward_passes`), the ways to F it
takes and their cost (``paths``, ``path_cost``: ``path="auto"`` asks it) and whether
its result depends on the seed (``randomised``). The Fisher Scope
(:mod:`captum_jscopes.scopes.fisher`) builds one per call from its options, every
field of every registered estimator being one of them. The probes' statistics are
in :mod:`.probe_statistics` (``probes`` is the shorthand :func:`probes`), F's factor
rows (formed or split) in :mod:`.factor`.
"""

from captum_jscopes.fisher.estimators.base import (
    DEFAULT_ESTIMATOR,
    DEFAULT_PROBE_ESTIMATOR,
    ESTIMATORS,
    FisherEstimator,
    FisherProbes,
    ProbeEstimator,
    add_registration_check,
    estimator,
    fisher_scores,
    probes,
    register_estimator,
    squared_norms,
)
from captum_jscopes.fisher.estimators.deflated import DeflatedEstimator
from captum_jscopes.fisher.estimators.eig import EigEstimator
from captum_jscopes.fisher.estimators.exact import ExactEstimator
from captum_jscopes.fisher.estimators.factor import fisher_factor
from captum_jscopes.fisher.estimators.hutchinson import HutchinsonEstimator, choose_k
from captum_jscopes.fisher.estimators.krylov import KrylovEstimator
from captum_jscopes.fisher.estimators.probe_statistics import probe_standard_error

__all__ = [
    "FisherProbes",
    "FisherEstimator",
    "ProbeEstimator",
    "HutchinsonEstimator",
    "DeflatedEstimator",
    "ExactEstimator",
    "EigEstimator",
    "KrylovEstimator",
    "fisher_factor",
    "ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "DEFAULT_PROBE_ESTIMATOR",
    "DEFAULT_BUDGET",
    "register_estimator",
    "add_registration_check",
    "probe_standard_error",
    "estimator",
    "choose_k",
    "fisher_scores",
    "squared_norms",
    "probes",
]

# the built-in five, in the order of the tables and of --fisher-estimator
for _cls in (KrylovEstimator, HutchinsonEstimator, DeflatedEstimator, ExactEstimator, EigEstimator):
    register_estimator(_cls)
del _cls

#: the default estimator's passes in all
DEFAULT_BUDGET: int = ESTIMATORS[DEFAULT_ESTIMATOR].budget
