"""The one table of the Jacobian Scopes, keyed by their ``name``.

The command line's ``--scope`` choices, the benchmarks' method table
(:mod:`captum_jscopes.bench.methods`) and the reports all read from here, so a
new scope is one class with a ``name`` and one entry below.
"""

from __future__ import annotations

from captum_jscopes.fisher.estimators import DEFAULT_METHOD as DEFAULT_FISHER_METHOD
from captum_jscopes.fisher.estimators import METHODS as FISHER_METHODS
from captum_jscopes.scopes.fisher import FisherScope
from captum_jscopes.scopes.base import JacobianScope
from captum_jscopes.scopes.semantic import SemanticScope
from captum_jscopes.scopes.temperature import TemperatureScope

#: name -> scope class, in the order the command line and the reports list them.
SCOPES: dict[str, type[JacobianScope]] = {cls.name: cls for cls in (SemanticScope, TemperatureScope, FisherScope)}

__all__ = ["SCOPES", "FISHER_METHODS", "DEFAULT_FISHER_METHOD", "scope_class"]


def scope_class(name: str) -> type[JacobianScope]:
    """The scope class registered under ``name``; a ValueError lists the names."""
    if name not in SCOPES:
        raise ValueError(f"unknown scope {name!r}; choose one of {', '.join(SCOPES)}")
    return SCOPES[name]
