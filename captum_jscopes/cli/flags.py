"""Command-line options made from a settings dataclass, so that a setting, its
flag and its help text are written down once (on the dataclass field).

A field takes part when its ``metadata`` has a ``"flag"``::

    chat: bool = field(default=False, metadata={"flag": "--chat", "help": "wrap each prompt ..."})

Metadata keys:

- ``"flag"``: the option, e.g. ``"--text-field"`` (required);
- ``"help"``: its help text;
- ``"metavar"``, ``"choices"``: as in argparse;
- ``"deprecated_flags"``: former spellings that still work; using one prints a
  note on stderr naming the flag to use instead (they are left out of ``--help``).

The option follows the field's type: ``bool`` is a switch (``--x``; with a True
default ``--x/--no-x``), ``tuple[T, ...]`` is repeatable (``--scope a --scope b``),
and ``T`` or ``Optional[T]`` takes one value converted with ``T``. An option that
is not given leaves the dataclass default in place.

    add_dataclass_flags(parser, DatasetSettings)
    args = parser.parse_args()
    settings = DatasetSettings(**values_from_args(args, DatasetSettings))
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Callable, Collection, Optional

__all__ = ["add_dataclass_flags", "values_from_args", "print_note"]

#: prefix of the hidden ``dest`` of a former spelling: its value is told apart
#: from the current flag's, so that using it can be noted
_DEPRECATED_DEST = "_deprecated_flag:"


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, *, only: Optional[Collection[str]] = None
) -> list[argparse.Action]:
    """Add an option to ``parser`` for every field of the dataclass ``cls`` whose
    metadata has a ``"flag"`` (or only for the fields named in ``only``), in field
    order; return the options added (former spellings not included). The value
    is stored under the field's name; read the values back with
    :func:`values_from_args`."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in _flagged_fields(cls, only):
        meta = f.metadata
        options = _argparse_options(f, hints[f.name])
        options["help"] = meta.get("help")
        if meta.get("deprecated_flags") and options["help"]:
            options["help"] += f" (formerly {', '.join(meta['deprecated_flags'])})"
        for key in ("metavar", "choices"):
            if key in meta:
                options[key] = tuple(meta[key]) if key == "choices" else meta[key]
        added.append(parser.add_argument(meta["flag"], dest=f.name, **options))
        for old in meta.get("deprecated_flags", ()):
            hidden = {**options, "help": argparse.SUPPRESS, "default": None}
            if hidden.get("action") == argparse.BooleanOptionalAction:
                hidden["action"] = "store_true"  # the old spelling is only ever the switch itself
            parser.add_argument(old, dest=_deprecated_dest(f.name, old), **hidden)
    return added


def values_from_args(
    args: argparse.Namespace,
    cls: type,
    *,
    only: Optional[Collection[str]] = None,
    note: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that the options of
    :func:`add_dataclass_flags` gave: ``{field name: value}``, without the
    options left out (their defaults apply). A former spelling's value counts
    as the flag's, and ``note`` (default: a line ``note: ...`` on stderr) is
    told that it is deprecated."""
    note = print_note if note is None else note
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in _flagged_fields(cls, only):
        value = getattr(args, f.name, None)
        for old in f.metadata.get("deprecated_flags", ()):
            old_value = getattr(args, _deprecated_dest(f.name, old), None)
            if old_value is not None:
                note(f"{old} is deprecated; use {f.metadata['flag']}")
                value = old_value
        if value is None:
            continue
        if typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return values


def _flagged_fields(cls: type, only: Optional[Collection[str]]) -> list[dataclasses.Field]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = [f for f in dataclasses.fields(cls) if "flag" in f.metadata]
    if only is not None:
        unknown = sorted(set(only) - {f.name for f in fields})
        if unknown:
            raise ValueError(f"{cls.__name__} has no field with a flag named {unknown}")
        fields = [f for f in fields if f.name in only]
    return fields


def _argparse_options(f: dataclasses.Field, kind: Any) -> dict[str, Any]:
    """argparse's action / type / default for a field of type ``kind``."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true", "default": bool(default)}
    if typing.get_origin(kind) is tuple:
        # None, not the default tuple: argparse would append to it
        return {"action": "append", "type": _value_type(typing.get_args(kind)[0]), "default": None}
    return {"type": _value_type(kind), "default": default}


def _value_type(kind: Any) -> Callable[[str], Any]:
    """The converter of one value: ``Optional[T]`` -> ``T``; ``str``, ``int``, ``float`` as they are."""
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return _value_type(args[0])
    if kind in (str, int, float):
        return kind
    raise TypeError(f"no command-line type for {kind!r}")


def _deprecated_dest(name: str, flag: str) -> str:
    return f"{_DEPRECATED_DEST}{name}:{flag}"


def print_note(text: str) -> None:
    """``note: TEXT`` on stderr (the default ``note`` of the values' readers)."""
    print(f"note: {text}", file=sys.stderr)
