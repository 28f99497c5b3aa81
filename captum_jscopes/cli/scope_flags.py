"""Command-line flags made from the registered scopes' options, so that every
option of every scope, the built-in three and any added with
:func:`~captum_jscopes.scopes.registry.register_scope`, has a flag with no
code here naming it:

- ``--<scope>-<option>`` for each field of the scope's ``Options`` dataclass,
  underscores as dashes (``--semantic-rules``, ``--semantic-n-steps``,
  ``--fisher-k``, ``--fisher-reduce``). The field's annotation gives the
  type: ``bool`` is a switch (``--x/--no-x``); ``int``, ``float``, ``str`` and
  ``Optional[T]`` take one value; a ``Union`` takes the first of its types the
  value reads as (``Union[int, str, None]``: ``--fisher-k 4``, ``--fisher-k auto``);
  a ``Literal`` takes its values. The metadata gives ``choices`` and ``help``. Not
  given, the scope's default applies. An option of another type gets no flag
  (it can be passed from Python).
- ``--rules`` and ``--reduce``, the fields of
  :class:`~captum_jscopes.scopes.base.ScopeOptions` that every scope has: that
  option of every scope the command runs. A per-scope flag wins
  (``--rules lrp --fisher-rules gradient``).
- a hidden alias for each deprecated option name of a scope
  (``cls.deprecated_options``, mapped by
  :func:`~captum_jscopes.runs.explain.deprecated_names`): ``--<scope>-<old name>``
  sets the flag of the option it stands for (the Fisher Scope's ``method``, its
  estimator's former name); using it prints a note naming the flag to use.

Usage::

    add_scope_flags(parser)
    args = parser.parse_args()
    settings = scope_settings_from_args(args, note=note)   # {"semantic_rules": "lrp", "fisher_k": 4, ...}

The values are the scopes' settings ``<scope>_<option>``
(:func:`~captum_jscopes.runs.explain.resolve_scope_settings`), of the flags given
only, so that they reach each scope through
:func:`~captum_jscopes.runs.explain.scope_options` and an option left out keeps
the scope's default.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional

from captum_jscopes.cli.flags import print_note
from captum_jscopes.runs.explain import ScopeSetting, deprecated_names, settings_of, value_types
from captum_jscopes.scopes.base import JacobianScope, ScopeOptions
from captum_jscopes.scopes.registry import SCOPES

__all__ = ["SHARED_OPTIONS", "add_scope_flags", "scope_settings_from_args", "flag_of", "flags_given"]

#: the options every scope has (the fields of ScopeOptions): one shared flag each
SHARED_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ScopeOptions))

# what the namespace records besides the values: the destinations whose flag was
# given (a default and the same value given are told apart), and the aliases used
_GIVEN = "_scope_flags_given"
_ALIASES_USED = "_scope_flags_aliases"


def flag_of(scope: Optional[str], option: str) -> str:
    """``--<scope>-<option>`` (``--<option>`` for a shared flag, ``scope`` None), dashes for underscores."""
    name = option if scope is None else f"{scope}_{option}"
    return "--" + name.replace("_", "-")


def add_scope_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the shared flags and every registered scope's flags to ``parser``, in
    a group of their own; return the group. Read the values back with
    :func:`scope_settings_from_args`. The value of ``--<scope>-<option>`` is
    stored under ``<scope>_<option>`` (default: the scope's default), that of
    ``--rules`` under ``rules``."""
    group = parser.add_argument_group(
        "scope options", "every option of every scope; not given: the scope's default")
    for setting in settings_of(JacobianScope):  # the base: ScopeOptions' fields
        if setting.option in SHARED_OPTIONS:
            text = f"every scope's {setting.option}, unless its own flag (--<scope>-{setting.option}) is given: "
            _add(group, flag_of(None, setting.option), setting.option, setting, text + (setting.help or ""))
    for cls in SCOPES.values():
        settings = {s.option: s for s in settings_of(cls)}
        for setting in settings.values():
            shared = setting.option in SHARED_OPTIONS
            text = f"{flag_of(None, setting.option)} for the {cls.name} scope only" if shared else setting.help
            _add(group, flag_of(cls.name, setting.option), setting.key, setting, text)
        for old, option in deprecated_names(cls).items():
            current = flag_of(cls.name, option)
            _add(group, flag_of(cls.name, old), settings[option].key, settings[option], argparse.SUPPRESS,
                 alias_of=current)
    return group


def scope_settings_from_args(
    args: argparse.Namespace, *, note: Optional[Callable[[str], None]] = None
) -> dict[str, Any]:
    """The scopes' settings ``{"<scope>_<option>": value}`` that the flags of
    :func:`add_scope_flags` gave: a per-scope flag's value, else a shared flag's
    (``--rules lrp``: ``<scope>_rules`` of every registered scope, so of every
    scope a command runs); flags not given are left out (the scope's default
    applies). ``note`` (default: ``note: ...`` on stderr) is told of each
    deprecated alias used."""
    note = print_note if note is None else note
    for old, current in getattr(args, _ALIASES_USED, ()):
        note(f"{old} is deprecated; use {current}")
    given = getattr(args, _GIVEN, set())
    values: dict[str, Any] = {}
    for cls in SCOPES.values():
        for setting in settings_of(cls):
            if setting.key in given:
                values[setting.key] = getattr(args, setting.key)
            elif setting.option in SHARED_OPTIONS and setting.option in given:
                values[setting.key] = getattr(args, setting.option)
    return values


def flags_given(args: argparse.Namespace) -> dict[str, str]:
    """``{destination: flag}`` of the scope flags the command line gave:
    ``{"semantic_n_steps": "--semantic-n-steps", "rules": "--rules"}`` (a setting's key, or a
    shared option's name; a deprecated alias counts as the flag it stands for)."""
    return {dest: flag_of(None, dest) for dest in sorted(getattr(args, _GIVEN, ()))}


# ----------------------------------------------------------------------------- one flag


def _add(group: Any, flag: str, dest: str, setting: ScopeSetting, help: Optional[str], *,
         alias_of: Optional[str] = None) -> None:
    """The flag of one setting (nothing for a type without a command-line form)."""
    kinds = value_types(setting.kind)
    if kinds is None:
        return
    plain = tuple(kind for kind in kinds if kind is not type(None))
    options: dict[str, Any] = {"dest": dest, "help": help,
                               "default": argparse.SUPPRESS if alias_of else setting.default}
    if plain == (bool,) and setting.choices is None:
        options["action"] = _AliasSwitch if alias_of else _Switch
    elif bool in plain:
        return  # a bool next to other types: no unambiguous spelling
    else:
        options["action"] = _Alias if alias_of else _Store
        options["type"] = _converter(plain if setting.choices is None else
                                     tuple(dict.fromkeys(type(choice) for choice in setting.choices)))
        if setting.choices is not None:
            options["choices"] = setting.choices
        else:
            options["metavar"] = setting.option.upper()
    if alias_of:
        options["alias_of"] = alias_of
    group.add_argument(flag, **options)


def _converter(kinds: tuple) -> Callable[[str], Any]:
    """One value's converter: the type itself for one type (argparse's own
    message, "invalid float value"), else the first of int, float, str it reads as."""
    order = [kind for kind in (int, float, str) if kind in kinds]
    if len(order) == 1:
        return order[0]

    def convert(text: str) -> Any:
        for kind in order:
            try:
                return kind(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"expected {' or '.join(k.__name__ for k in order)}, got {text!r}")

    convert.__name__ = " or ".join(kind.__name__ for kind in order)
    return convert


def _record(namespace: argparse.Namespace, dest: str) -> None:
    given = getattr(namespace, _GIVEN, None)
    if given is None:
        given = set()
        setattr(namespace, _GIVEN, given)
    given.add(dest)


class _Store(argparse.Action):
    """Stores the value and records that the flag was given."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        _record(namespace, self.dest)


class _Switch(argparse.BooleanOptionalAction):
    """``--x/--no-x``, recording that it was given."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _record(namespace, self.dest)


class _AliasMixin:
    """A deprecated spelling: sets the current flag's value, and is recorded for a note."""

    def __init__(self, *args: Any, alias_of: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.alias_of = alias_of

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)  # type: ignore[misc]
        used = getattr(namespace, _ALIASES_USED, None)
        if used is None:
            used = []
            setattr(namespace, _ALIASES_USED, used)
        used.append((option_string, self.alias_of))


class _Alias(_AliasMixin, _Store):
    pass


class _AliasSwitch(_AliasMixin, _Switch):
    pass
