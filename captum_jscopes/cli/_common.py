"""What the ``jscopes`` commands share: the parser class and the flags several
commands take (``--debug``, the model flags, ``--threads``), the output folder,
loading the model, and the one-line errors (named with the flags the user typed,
:func:`flag_words`; their exit status, :data:`EXIT_STATUS`) and terminal output."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from captum_jscopes.core.text import display_token
from captum_jscopes.models import ModelNotAvailableError, load_model
from captum_jscopes.results.result import ScopeResult

PROG = "jscopes"
DEBUG_ENV = "JSCOPES_DEBUG"
#: the exit statuses of every command, as ``jscopes --help`` and the README list them
EXIT_STATUS = (
    (0, "done"),
    (1, "a failure: the model could not be loaded, the work failed, no prompt of a dataset could be "
        "explained, or --out holds a run with other settings"),
    (2, "a usage error: an unknown flag, a bad flag value (an empty prompt or target, a target outside "
        "the vocabulary, a scope option out of range), a bad input file or model folder"),
    (130, "interrupted (Ctrl-C)"),
)
#: the attribute set on the parsed arguments once the model starts loading
_LOADING = "_model_loading"
DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")

#: ``run(args, forwarded)`` of a command: its exit status
Runner = Callable[[argparse.Namespace, list], int]


class CommandError(RuntimeError):
    """A problem the command reports as one line (e.g. a benchmark that is not installed)."""


class UsageError(CommandError):
    """Bad input found before any work (a missing field, an empty file): exit status 2, like a bad option."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------- flags


def add_command(subcommands: Any, name: str, help: str, description: str, run: Runner) -> argparse.ArgumentParser:
    """The sub-command ``name`` with its texts and ``--debug`` flag, run by ``run(args, forwarded)``."""
    parser = subcommands.add_parser(name, help=help, description=description)
    add_debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=run)
    return parser


def add_debug_flag(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--debug``. Sub-commands pass ``argparse.SUPPRESS`` as the default, so that
    ``jscopes --debug attribute ...`` is not overwritten by the sub-command's own default."""
    parser.add_argument(
        "--debug", action="store_true", default=default, help=f"show the traceback of an error (or set {DEBUG_ENV}=1)"
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device`` and ``--threads`` (read by :func:`load_model_from_args`)."""
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="embedded model ('smollm2' = default SmolLM2-135M-Instruct, 'gemma3-270m'), "
        "a Hugging Face Hub name or a local checkpoint folder",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="dtype to load the model in (default: float32)")
    parser.add_argument("--device", help="where to run the model, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--threads",
        type=_thread_count,
        metavar="N",
        help="CPU threads torch computes with (default: what torch picks, one per core). "
        "When another job holds a core, 1 thread is often faster than several",
    )


def _thread_count(text: str) -> int:
    """A whole number >= 1; argparse turns the error into a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def note(text: str) -> None:
    """A one-line note on stderr (e.g. a deprecated flag)."""
    print(f"{PROG}: note: {text}", file=sys.stderr)


# ----------------------------------------------------------------------------- model and files


def output_folder(out: str) -> Path:
    """``--out`` as a path; a ValueError when it is a file."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out!r} is a file, not a folder")
    return path


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and tokenizer of ``--model``/``--dtype``/``--device``, after
    ``--threads`` is applied; a ValueError for an empty or missing model folder."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)
    name = args.model
    if name is not None:
        if not name.strip():
            raise UsageError("--model is empty; leave it out for the default model")
        path = Path(name).expanduser()
        # Hub names are 'model' or 'org/model'; anything else that looks like a
        # path must exist, else transformers would try (and fail on) the Hub.
        looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
        if looks_local and not path.is_dir():
            what = "is a file, not a checkpoint folder" if path.exists() else "does not exist"
            raise UsageError(f"model folder {name!r} {what}")
    setattr(args, _LOADING, True)  # from here on a ValueError is a failure, unless it names a flag
    return load_model(name, dtype=args.dtype, device=args.device, progress=False)


def model_started(args: argparse.Namespace) -> bool:
    """Whether the command has started loading its model (:func:`load_model_from_args`):
    before that, a ValueError or TypeError comes from checking the arguments and
    the input files (a usage error)."""
    return bool(getattr(args, _LOADING, False))


# ----------------------------------------------------------------------------- errors


def describe_error(err: Exception, debug: bool) -> str:
    """The one-line text of an error: the message of the errors users cause
    (bad values, missing files, a model that is not installed), else the type,
    the message and how to see the traceback."""
    if isinstance(err, (CommandError, ValueError, TypeError, OSError, ModelNotAvailableError)):
        return str(err)
    hint = "" if debug else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
    return f"{type(err).__name__}: {err}{hint}"


def flag_words(message: str, args: argparse.Namespace) -> tuple[str, bool]:
    """``message`` with the scopes' options named by the flags the user typed:
    an option the command line gave, as ``semantic_n_steps``, ``n_steps=`` or ``n_steps``
    (``--semantic-n-steps``; ``n_steps=0`` -> ``--semantic-n-steps 0``), and any option
    of the same scopes written ``name=`` (``<option>=`` -> ``--<scope>-<option>``).
    Returns the message and whether it named a flag (the error is then about
    the value of a flag: a usage error)."""
    from captum_jscopes.cli.scope_flags import flag_of, flags_given
    from captum_jscopes.runs.explain import find_setting, settings_of
    from captum_jscopes.scopes.registry import SCOPES

    given = flags_given(args)
    table: dict[str, tuple[str, bool]] = {}  # a name in messages -> (its flag, also without "=")
    scopes: dict[str, type] = {}
    for dest, flag in given.items():
        try:
            setting, _ = find_setting(dest)
        except KeyError:  # a shared option (--rules, --reduce): every scope's
            table.setdefault(dest, (flag, True))
            scopes.update(SCOPES)
            continue
        table.setdefault(dest, (flag, True))
        table.setdefault(setting.option, (flag, True))
        scopes[setting.scope.name] = setting.scope
    for cls in scopes.values():
        for setting in settings_of(cls):
            flag = flag_of(cls.name, setting.option)
            table.setdefault(setting.key, (flag, True))
            table.setdefault(setting.option, (flag, False))
    if not table:
        return message, False
    names = "|".join(re.escape(name) for name in sorted(table, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w\-.'\"])({names})(?:(=)|(?![\w\-]))")
    named = False

    def swap(match: re.Match) -> str:
        nonlocal named
        name, equals = match.group(1), match.group(2)
        flag, bare = table[name]
        if not (equals or (bare and _names_an_option(name, match))):
            return match.group(0)
        named = True
        after = match.string[match.end():match.end() + 1]
        return flag + (" " if match.group(2) and after and not after.isspace() and after not in ":;,)" else "")

    return pattern.sub(swap, message), named


#: words before or after an option's bare name that say it is the option (not the English word:
#: "the eig estimator" keeps its word, "no option k" and "budget must be" are the options)
_BEFORE_AN_OPTION = ("option ", "options ", "option(s) ", ": ", "; ", "(")
_AFTER_AN_OPTION = (" must", " cannot", " needs", " bounds", " is deprecated")


def _names_an_option(name: str, match: re.Match) -> bool:
    before, after = match.string[: match.start()], match.string[match.end():]
    return "_" in name or not before or before.endswith(_BEFORE_AN_OPTION) or after.startswith(_AFTER_AN_OPTION)


def print_error(message: str) -> None:
    """``jscopes: error: MESSAGE`` on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def exit_status(stop: SystemExit) -> int:
    """The exit status a ``SystemExit`` (argparse's, a benchmark's) stands for."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- terminal output


def shown(token: str) -> str:
    """A raw tokenizer piece as text ('Ġcat' -> ' cat')."""
    return display_token(token)


def short(text: str, limit: int = 70) -> str:
    """The end of ``text`` (what the next token depends on most), at most ``limit`` characters."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def target_line(result: ScopeResult) -> str:
    """'\\' Paris\\' (p = 0.773)' for one target token, the joined text and the
    product of the probabilities for several."""
    prob = float(result.output_probs.double().prod())
    return f"{result.metadata['target']!r} (p = {prob:.3g})"


def run_info_line(result: ScopeResult) -> Optional[str]:
    """'  estimated error 1.8% of the map (--fisher-tol 0.02), 96 passes': what an
    estimate reached (``metadata["run_info"]``: the Fisher Scope's krylov
    estimator, its relative L2 error and passes), or None for a result without one."""
    from captum_jscopes.cli.scope_flags import flag_of

    info = result.metadata.get("run_info") or {}
    asked = (result.metadata.get("settings") or {}).get("tol")
    error = info.get("rel_error")
    if error is None and asked is not None and info.get("n_probes") == 0:
        error = 0.0  # every direction computed exactly: no probe, no error
    if not isinstance(error, (int, float)):
        return None
    tol = info.get("tol", asked)
    tol_text = f" ({flag_of(str(result.metadata.get('scope')), 'tol')} {tol:g})" if isinstance(tol, (int, float)) else ""
    passes = f", {info['passes']} passes" if isinstance(info.get("passes"), int) else ""
    exact = " (exact: every direction computed)" if error == 0 and info.get("n_probes") == 0 else ""
    return f"  estimated error {error:.2%} of the map{tol_text}{passes}{exact}"


def print_files(written: list[Path]) -> None:
    """The ``files written:`` block."""
    print("\nfiles written:")
    for path in written:
        print(f"  {path}")

