"""Command-line options made from a settings dataclass (captum_jscopes.cli.flags):
each field type's option, defaults left to the dataclass, repeatable tuples, and
former spellings that still work with a note."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

import pytest

from captum_jscopes.cli.flags import add_dataclass_flags, values_from_args


@dataclass(frozen=True)
class Settings:
    name: str = field(default="text", metadata={"flag": "--name", "metavar": "NAME", "help": "a name"})
    label: Optional[str] = field(default=None, metadata={"flag": "--label", "help": "a label"})
    size: int = field(default=3, metadata={"flag": "--size", "deprecated_flags": ("--n",), "help": "a size"})
    parts: tuple[str, ...] = field(default=("a", "b"), metadata={"flag": "--part", "choices": ("a", "b", "c")})
    loud: bool = field(default=False, metadata={"flag": "--loud", "help": "speak up"})
    tidy: bool = field(default=True, metadata={"flag": "--tidy", "help": "keep it tidy"})
    internal: int = 0  # no flag: not on the command line


def parse(argv, **kwargs):
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_flags(parser, Settings, **kwargs)
    return parser.parse_args(argv)


def test_options_left_out_keep_the_dataclass_defaults():
    args = parse([])
    assert values_from_args(args, Settings) == {"name": "text", "size": 3, "loud": False, "tidy": True}
    assert Settings(**values_from_args(args, Settings)) == Settings()


def test_each_type_gets_its_option():
    notes = []
    argv = ["--name", "x", "--label", "y", "--size", "5", "--part", "c", "--part", "a", "--loud", "--no-tidy"]
    values = values_from_args(parse(argv), Settings, note=notes.append)
    assert Settings(**values) == Settings(name="x", label="y", size=5, parts=("c", "a"), loud=True, tidy=False)
    assert notes == []
    with pytest.raises(SystemExit):
        parse(["--size", "many"])
    with pytest.raises(SystemExit):
        parse(["--part", "z"])
    with pytest.raises(SystemExit):
        parse(["--internal", "1"])


def test_a_former_spelling_works_with_a_note(capsys):
    notes = []
    assert values_from_args(parse(["--n", "7"]), Settings, note=notes.append)["size"] == 7
    assert notes == ["--n is deprecated; use --size"]
    values_from_args(parse(["--n", "7"]), Settings)  # the default note goes to stderr
    assert capsys.readouterr().err == "note: --n is deprecated; use --size\n"


def test_help_shows_the_flags_and_hides_former_spellings(capsys):
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_flags(parser, Settings)
    text = parser.format_help()
    assert all(flag in text for flag in ("--name NAME", "--label", "--size", "--part", "--loud", "--tidy, --no-tidy"))
    assert "a size (formerly --n)" in text and "\n  --n " not in text


def test_only_some_fields():
    args = parse(["--loud"], only=("loud", "tidy"))
    assert values_from_args(args, Settings, only=("loud", "tidy")) == {"loud": True, "tidy": True}
    with pytest.raises(SystemExit):
        parse(["--name", "x"], only=("loud",))
    with pytest.raises(ValueError, match="no field with a flag"):
        parse([], only=("internal",))
