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

import os
import sys
import traceback
from typing import Optional, Sequence

from captum_jscopes.cli import attribute, attribute_dataset, bench, demo
from captum_jscopes.cli._common import (
    DEBUG_ENV,
    PROG,
    Parser,
    UsageError,
    add_debug_flag,
    describe_error,
    exit_status,
    print_error,
)
from captum_jscopes.core.provenance import package_version

#: the commands, in the order ``jscopes --help`` lists them
COMMANDS = (attribute, attribute_dataset, demo, bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line and return its exit status (0 = success, 1 = error,
    2 = bad usage). ``argv`` defaults to ``sys.argv[1:]``. Errors are printed as
    one line ``jscopes: error: ...`` on stderr; ``--debug`` or ``JSCOPES_DEBUG=1``
    adds the traceback."""
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
        print_error(str(err))
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line instead of a traceback
        if debug:
            traceback.print_exc()
        print_error(describe_error(err, debug))
        return 1


def build_parser() -> Parser:
    """The parser of ``jscopes`` and its commands."""
    parser = Parser(
        prog=PROG,
        description="Jacobian Scopes: which input tokens drive a language model's next-token prediction.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_debug_flag(parser, False)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(subcommands)
    return parser
