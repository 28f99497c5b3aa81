"""The ``jscopes`` command line (also ``python -m captum_jscopes``).

    jscopes attribute "The capital of France is" --target " Paris"
    jscopes attribute-dataset prompts.jsonl --scope semantic --out out/
    jscopes demo
    jscopes bench speed --help

One module per command, each with ``add_parser(subcommands)`` and ``run(args,
forwarded)``: :mod:`~captum_jscopes.cli.attribute`,
:mod:`~captum_jscopes.cli.attribute_dataset`, :mod:`~captum_jscopes.cli.demo`
and :mod:`~captum_jscopes.cli.bench`; what they share is in
:mod:`~captum_jscopes.cli._common`. This module builds the parser from them,
dispatches, and turns errors into one line and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback
from typing import Optional, Sequence

from captum_jscopes.cli import attribute, attribute_dataset, bench, demo
from captum_jscopes.cli._common import (
    DEBUG_ENV,
    EXIT_STATUS,
    PROG,
    Parser,
    UsageError,
    add_debug_flag,
    describe_error,
    exit_status,
    flag_words,
    model_started,
    print_error,
)
from captum_jscopes.core.tokens import InputError
from captum_jscopes.core.provenance import package_version

#: the commands, in the order ``jscopes --help`` lists them
COMMANDS = (attribute, attribute_dataset, demo, bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line and return its exit status (:data:`EXIT_STATUS`:
    0 = done, 1 = a failure, 2 = a usage error, 130 = interrupted). ``argv``
    defaults to ``sys.argv[1:]``. Errors are printed as one line ``jscopes:
    error: ...`` on stderr, a scope option named by the flag the user typed
    (``--fisher-tol``, :func:`~captum_jscopes.cli._common.flag_words`);
    ``--debug`` or ``JSCOPES_DEBUG=1`` adds the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Line by line also into a file or a pipe (`jscopes ... | tee log`): each scope's
    # summary is meant to appear when that scope is done, not when the process ends.
    if callable(getattr(sys.stdout, "reconfigure", None)):
        sys.stdout.reconfigure(line_buffering=True)
    own_argv, forwarded = bench.split_args(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(own_argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return exit_status(stop)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if args.command is None:
        names = ", ".join(command.NAME for command in COMMANDS)
        print_error(f"missing command: {names} (see '{PROG} --help')")
        return 2
    try:
        return args.handler(args, forwarded)
    except SystemExit as stop:  # a benchmark's own argparse (--help, bad flag)
        return exit_status(stop)
    except UsageError as err:
        if debug:
            traceback.print_exc()
        print_error(flag_words(str(err), args)[0])
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line instead of a traceback
        if debug:
            traceback.print_exc()
        status, message = error_status(err, args)
        print_error(message if status == 2 else describe_error(err, debug))
        return status


def error_status(err: Exception, args: argparse.Namespace) -> tuple[int, str]:
    """The exit status of an error a command raised, and its message: 2 (a
    usage error) for a ValueError or TypeError that names a flag the user gave
    (:func:`~captum_jscopes.cli._common.flag_words`), for an
    :class:`~captum_jscopes.core.tokens.InputError` (a target outside the
    vocabulary, a prompt of special tokens only), and for one raised before
    the command's model started loading (its checks of the arguments and input
    files; not for ``bench``, whose benchmarks load their own); else 1."""
    if not isinstance(err, (ValueError, TypeError)):
        return 1, str(err)
    message, named = flag_words(str(err), args)
    checking = args.command != bench.NAME and not model_started(args)
    return (2 if named or checking or isinstance(err, InputError) else 1), message


def build_parser() -> Parser:
    """The parser of ``jscopes`` and its commands."""
    parser = Parser(
        prog=PROG,
        description="Jacobian Scopes: which input tokens drive a language model's next-token prediction.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_debug_flag(parser, False)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(subcommands)
    return parser


def epilog(width: int = 79) -> str:
    """The end of ``jscopes --help``: where the commands' options are, and the exit statuses."""
    lines = [f"Run '{PROG} COMMAND --help' for the options of a command.", "", "exit status:"]
    for status, meaning in EXIT_STATUS:
        lines.append(textwrap.fill(meaning, width, initial_indent=f"  {status:<5}", subsequent_indent=" " * 7))
    return "\n".join(lines)
