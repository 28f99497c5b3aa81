"""The one table of the Jacobian Scopes, keyed by their ``name``.

The command line's ``--scope`` choices and flags, the datasets' settings, the
benchmarks' method table (:mod:`captum_jscopes.bench.methods`), the Inseq methods
and the reports all read from here. A scope defined outside the package joins
them with :func:`register_scope`; see ``docs/extending.md``.
"""

from __future__ import annotations

from captum_jscopes.fisher.estimators import DEFAULT_METHOD as DEFAULT_FISHER_METHOD
from captum_jscopes.fisher.estimators import METHODS as FISHER_METHODS
from captum_jscopes.scopes.base import JacobianScope
from captum_jscopes.scopes.fisher import FisherScope
from captum_jscopes.scopes.semantic import SemanticScope
from captum_jscopes.scopes.temperature import TemperatureScope

#: name -> scope class, in the order the command line and the reports list them.
SCOPES: dict[str, type[JacobianScope]] = {cls.name: cls for cls in (SemanticScope, TemperatureScope, FisherScope)}

__all__ = ["SCOPES", "FISHER_METHODS", "DEFAULT_FISHER_METHOD", "scope_class", "register_scope", "on_register"]

#: called with each newly registered scope class (integrations that make one
#: object per scope, such as the Inseq methods, add theirs)
_LISTENERS: list = []


def on_register(callback) -> None:
    """Call ``callback(scope_class)`` for every scope registered from now on."""
    _LISTENERS.append(callback)


def scope_class(name: str) -> type[JacobianScope]:
    """The scope class registered under ``name``; a ValueError lists the names."""
    if name not in SCOPES:
        raise ValueError(f"unknown scope {name!r}; choose one of {', '.join(SCOPES)}")
    return SCOPES[name]


def register_scope(cls: type[JacobianScope], *, replace: bool = False) -> type[JacobianScope]:
    """Add a scope class to the table, after which the CLI, ``attribute_dataset``,
    the benchmarks' method table, the Inseq methods, ``linearity_check`` and the
    span views know it as they know the built-in three. Usable as a decorator.

    Args:
        cls: a :class:`JacobianScope` subclass with its own ``name``.
        replace: allow replacing a scope of the same name. Default False.
    Returns:
        ``cls``.
    Raises:
        TypeError: not a JacobianScope subclass; ValueError: no name of its own,
        or the name is taken (and ``replace`` is False).
    """
    if not (isinstance(cls, type) and issubclass(cls, JacobianScope)):
        raise TypeError(f"register_scope takes a JacobianScope subclass, got {cls!r}")
    if cls.name == JacobianScope.name or not isinstance(cls.name, str) or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__} needs a name of its own (a class attribute such as name = 'entropy')")
    if cls.name in SCOPES and SCOPES[cls.name] is not cls and not replace:
        raise ValueError(f"a scope named {cls.name!r} is registered already ({SCOPES[cls.name].__name__}); pass replace=True")
    if cls.span_rule not in ("l2", "sum"):
        raise ValueError(f"{cls.__name__}.span_rule must be 'l2' or 'sum', got {cls.span_rule!r}")
    if cls.perturbation not in ("gradient", "isotropic"):
        raise ValueError(f"{cls.__name__}.perturbation must be 'gradient' or 'isotropic', got {cls.perturbation!r}")
    SCOPES[cls.name] = cls
    for callback in _LISTENERS:
        callback(cls)
    return cls
