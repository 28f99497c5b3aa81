"""The scopes' options as flat settings ``<scope>_<option>``: the keys of
:class:`~captum_jscopes.runs.dataset.DatasetSettings` and ``run.json``, of
:func:`~captum_jscopes.runs.explain.explain`'s keywords and, with dashes, of the
command line's ``--<scope>-<option>`` flags (:mod:`captum_jscopes.cli.scope_flags`).
Read from each registered scope's ``Options`` dataclass, so a scope registered
from outside the package has its settings with no other change.
(:mod:`captum_jscopes.runs.explain` re-exports these names.)
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from captum_jscopes.scopes.registry import SCOPES, scope_class

__all__ = ["ScopeSetting", "PLAIN_TYPES", "value_types", "settings_of", "deprecated_names", "find_setting",
           "resolve_scope_settings"]


@dataclass(frozen=True)
class ScopeSetting:
    """One option of a registered scope as a flat setting ``<scope>_<option>``:
    the key of :class:`~captum_jscopes.runs.dataset.DatasetSettings` and
    ``run.json``, of :func:`~captum_jscopes.runs.explain.explain`'s keywords and, with dashes, of the flag
    ``--<scope>-<option>``. Read from the field of the scope's ``Options``
    dataclass (:func:`settings_of`), so a scope registered from outside the
    package has its settings with no other change.

    Attributes:
        scope: the scope class.
        option: the field's name (the keyword of the scope's ``attribute``).
        kind: the field's type, its annotation resolved (e.g. ``Optional[int]``).
        default: the field's default (the scope's default).
        choices: the values it takes (metadata ``"choices"``, or a ``Literal``'s), or None.
        help: its help text (metadata ``"help"``), or None.
    """

    scope: type
    option: str
    kind: Any
    default: Any
    choices: Optional[tuple] = None
    help: Optional[str] = None

    @property
    def key(self) -> str:
        """``<scope>_<option>``, e.g. ``semantic_rules``."""
        return f"{self.scope.name}_{self.option}"

    def check(self, value: Any, key: Optional[str] = None) -> Any:
        """``value`` when the option takes it (one of :attr:`choices`; of a type of
        :attr:`kind`, where an int is a float and a bool is no int); else a one-line
        ValueError / TypeError naming ``key`` (default :attr:`key`). A type the
        check does not know (not bool, int, float, str, None or a Union / Literal
        of them) is left to the scope."""
        key = key or self.key
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{key} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return value
        kinds = value_types(self.kind)
        if kinds and not any(_is_a(value, kind) for kind in kinds):
            names = " or ".join("None" if kind is type(None) else kind.__name__ for kind in kinds)
            raise TypeError(f"{key} must be {names}, got {value!r}")
        return value


#: the plain types a setting's value can be checked against (and a flag converts to)
PLAIN_TYPES = (bool, int, float, str, type(None))


def value_types(kind: Any) -> Optional[tuple]:
    """The plain types (:data:`PLAIN_TYPES`) a value of annotation ``kind`` may
    have: ``Optional[int]`` -> ``(int, NoneType)``, ``Union[int, str, None]`` ->
    ``(int, str, NoneType)``, ``Literal["a", 1]`` -> ``(str, int)``; None when
    ``kind`` holds anything else."""
    if kind in PLAIN_TYPES:
        return (kind,)
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return tuple(dict.fromkeys(type(arg) for arg in typing.get_args(kind)))
    if origin in (typing.Union, types.UnionType):
        parts = [value_types(arg) for arg in typing.get_args(kind)]
        if all(part is not None for part in parts):
            return tuple(dict.fromkeys(k for part in parts for k in part))
    return None


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def settings_of(scope: Union[str, type]) -> tuple[ScopeSetting, ...]:
    """The settings of a scope (its name or class): one :class:`ScopeSetting` per
    field of its ``Options``, in field order (``rules`` and ``reduce``, which every
    scope has, first)."""
    cls = scope_class(scope) if isinstance(scope, str) else scope
    try:
        hints = typing.get_type_hints(cls.Options)
    except Exception:  # noqa: BLE001 -- an annotation that does not resolve: its type is not checked
        hints = {}
    made = []
    for f in dataclasses.fields(cls.Options):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind = hints.get(f.name, f.type)
        choices = f.metadata.get("choices")
        if choices is None and typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
        made.append(ScopeSetting(cls, f.name, kind, default, None if choices is None else tuple(choices),
                                 f.metadata.get("help")))
    return tuple(made)


@functools.lru_cache(maxsize=None)
def deprecated_names(cls: type) -> dict[str, str]:
    """``{deprecated name: option}`` of the scope class ``cls``: which option each
    name of ``cls.deprecated_options`` stands for (``{"method": "estimator"}`` for
    the Fisher Scope), found by asking the scope: ``cls.make_options(name=probe)``
    and the field that took the probe value. A name the scope does not map that
    way is left out (it still works as a keyword of the scope's ``attribute``)."""
    names = {}
    for name in cls.deprecated_options:
        probe = f"\x00{name}"  # a value no option has by default
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                made = cls.make_options(**{name: probe})
        except Exception:  # noqa: BLE001 -- the scope checks the value: not mapped
            continue
        target = [f.name for f in dataclasses.fields(made) if getattr(made, f.name) == probe]
        if len(target) == 1:
            names[name] = target[0]
    return names


def find_setting(key: str) -> tuple[ScopeSetting, bool]:
    """The setting a key names among the registered scopes: ``(setting, False)``
    for ``<scope>_<option>``, ``(setting, True)`` for ``<scope>_<deprecated name>``
    (the setting of the option it stands for). A KeyError when it
    names none."""
    for cls in sorted(SCOPES.values(), key=lambda c: -len(c.name)):  # the longest name first
        prefix = f"{cls.name}_"
        if not key.startswith(prefix):
            continue
        option = key[len(prefix):]
        option = deprecated_names(cls).get(option, option)
        for setting in settings_of(cls):
            if setting.option == option:
                return setting, setting.key != key
    raise KeyError(key)


def resolve_scope_settings(
    values: Mapping[str, Any], *, strict: bool = True, warn: bool = True, drop_defaults: bool = True,
    stacklevel: int = 2,
) -> dict[str, Any]:
    """The scopes' options given as settings ``{"<scope>_<option>": value}`` in
    today's form: a deprecated name (``<scope>_<old name>``) replaced by its
    option's setting (a DeprecationWarning when ``warn``), each
    value checked (:meth:`ScopeSetting.check`), and values equal to the scope's
    default dropped, so that a default given or not is the same setting.

    Args:
        values: the settings.
        strict: a key that names no scope's option is a TypeError (default); with
            False it is kept as it is.
        warn: a DeprecationWarning for a deprecated name (default True).
        drop_defaults: leave out the values equal to the scope's default
            (default True); False keeps them (an override of another value).
        stacklevel: of the warning (2: the caller of this function).
    Returns:
        ``{"<scope>_<option>": value}``, keys in the order given.
    Raises:
        TypeError: an unknown key (``strict``); a deprecated name next to its
            option's setting with another value (before any warning); a value of
            the wrong type. ValueError: a value outside the option's choices.
    """
    found: dict[str, tuple[Optional[ScopeSetting], bool]] = {}
    for key in values:
        try:
            found[key] = find_setting(key)
        except KeyError:
            if strict:
                known = ", ".join(s.key for cls in SCOPES.values() for s in settings_of(cls))
                raise TypeError(f"unknown setting {key!r}; the scopes' settings are {known}") from None
            found[key] = (None, False)
    for key, (setting, deprecated) in found.items():
        if deprecated and setting.key in values and values[setting.key] != values[key]:
            raise TypeError(f"give {setting.key} ({values[setting.key]!r}) or {key} ({values[key]!r}), not both "
                            f"({key} is its deprecated name)")
    resolved: dict[str, Any] = {}
    for key, (setting, deprecated) in found.items():
        if setting is None:
            resolved[key] = values[key]
            continue
        if deprecated and warn:
            warnings.warn(f"{key}= is deprecated; use {setting.key}=", DeprecationWarning, stacklevel=stacklevel)
        value = setting.check(values[key], setting.key)
        if drop_defaults and value == setting.default:
            resolved.pop(setting.key, None)
        else:
            resolved[setting.key] = value
    return resolved
