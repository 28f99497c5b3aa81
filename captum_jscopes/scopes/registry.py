"""The one table of the Jacobian Scopes, keyed by their ``name``.

The command line's ``--scope`` choices and flags, the datasets' settings, the
benchmarks' method table (:mod:`captum_jscopes.bench.methods`), the Inseq methods
and the reports all read from here. A scope defined outside the package joins
them with :func:`register_scope`, or, from an installed package, through the
entry-point group :data:`ENTRY_POINT_GROUP` (``captum_jscopes.scopes``): the
first time the table is read it loads every entry point of that group, each
naming a :class:`JacobianScope` subclass or a module that registers one, so
``pip install my-scope`` makes ``jscopes attribute ... --scope my_scope`` work. A
plugin that fails is left out with one :class:`ScopePluginWarning` naming it.
See ``docs/extending.md``.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from importlib.metadata import EntryPoint, entry_points

from captum_jscopes.scopes.base import JacobianScope
from captum_jscopes.scopes.fisher import FisherScope
from captum_jscopes.scopes.semantic import SemanticScope
from captum_jscopes.scopes.temperature import TemperatureScope

__all__ = [
    "SCOPES",
    "ENTRY_POINT_GROUP",
    "ScopePluginWarning",
    "scope_class",
    "register_scope",
    "load_plugins",
    "on_register",
]

#: the entry-point group other packages declare their scopes in, e.g. in their
#: pyproject.toml: ``[project.entry-points."captum_jscopes.scopes"]`` ``my_scope = "my_pkg.scopes:MyScope"``
ENTRY_POINT_GROUP = "captum_jscopes.scopes"


class ScopePluginWarning(UserWarning):
    """A scope plugin (an entry point of :data:`ENTRY_POINT_GROUP`) could not be loaded."""


def _read_first(method):
    """``method`` of dict, preceded by :meth:`_Scopes._read`."""

    @functools.wraps(method)
    def read(self, *args):
        self._read()
        return method(self, *args)

    return read


class _Scopes(dict):
    """The table: a dict that loads the scope plugins the first time it is read
    (:func:`load_plugins`), not while ``captum_jscopes`` itself is being imported
    (a plugin imports ``captum_jscopes`` to subclass JacobianScope)."""

    def _read(self) -> None:
        global _plugins_pending
        if _plugins_pending and not _package_importing():
            _plugins_pending = False
            load_plugins()

    __getitem__ = _read_first(dict.__getitem__)
    __contains__ = _read_first(dict.__contains__)
    __iter__ = _read_first(dict.__iter__)
    __len__ = _read_first(dict.__len__)
    __repr__ = _read_first(dict.__repr__)
    get = _read_first(dict.get)
    keys = _read_first(dict.keys)
    values = _read_first(dict.values)
    items = _read_first(dict.items)


#: name -> scope class, in the order the command line and the reports list them:
#: the built-in three, then the plugins (by entry-point name), then those registered in code.
SCOPES: dict[str, type[JacobianScope]] = _Scopes({cls.name: cls for cls in (SemanticScope, TemperatureScope, FisherScope)})

_plugins_pending = True  # the table has not been read yet
_plugins_loading = False
_loaded_entry_points: set[tuple[str, str]] = set()

#: called with each newly registered scope class (integrations that make one
#: object per scope, such as the Inseq methods, add theirs)
_LISTENERS: list = []


def _package_importing() -> bool:
    """Whether ``captum_jscopes`` is being imported right now (a module of it reads
    the table at import time; the plugins wait for the first read after)."""
    spec = getattr(sys.modules.get("captum_jscopes"), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def load_plugins() -> list[str]:
    """Load the scope plugins: every entry point of :data:`ENTRY_POINT_GROUP` not
    loaded yet, in the order of their names. An entry point names a
    :class:`JacobianScope` subclass (registered here) or a module that registers
    its scopes when imported. A plugin that fails (import error, not a scope, a
    name taken) is left out with one :class:`ScopePluginWarning` naming it.

    Called by the first read of :data:`SCOPES`; call it again after installing a
    plugin into a running process. Returns the names of the scopes registered.
    """
    global _plugins_loading
    if _plugins_loading:  # a plugin reading the table while it is loaded
        return []
    _plugins_loading = True
    before = set(dict.keys(SCOPES))
    try:
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
            if (entry.name, entry.value) in _loaded_entry_points:
                continue
            _loaded_entry_points.add((entry.name, entry.value))
            try:
                _load_plugin(entry)
            except Exception as err:  # a broken plugin never breaks the library
                _warn_plugin(entry, err)
    finally:
        _plugins_loading = False
    return [name for name in dict.keys(SCOPES) if name not in before]


def _load_plugin(entry: EntryPoint) -> None:
    loaded = entry.load()
    if isinstance(loaded, types.ModuleType):
        if not any(cls.__module__ in (loaded.__name__,) or cls.__module__.startswith(loaded.__name__ + ".")
                   for cls in dict.values(SCOPES)):
            raise TypeError(f"module {loaded.__name__} registered no scope (register_scope)")
    elif isinstance(loaded, type) and issubclass(loaded, JacobianScope):
        register_scope(loaded)
    else:
        raise TypeError(f"{entry.value} is a {type(loaded).__name__}, neither a JacobianScope subclass nor a module")


def _warn_plugin(entry: EntryPoint, err: Exception) -> None:
    dist = getattr(entry, "dist", None)
    source = f", from {dist.name} {dist.version}" if dist is not None else ""
    reason = (str(err).strip().splitlines() or [""])[0]
    warnings.warn_explicit(
        f"scope plugin {entry.name!r} ({entry.value}{source}) not loaded: {type(err).__name__}: {reason}",
        ScopePluginWarning, filename=ENTRY_POINT_GROUP, lineno=0,  # the one line: no source line under it
        module=__name__,
    )  # fmt: skip


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
