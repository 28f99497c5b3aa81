"""``jscopes bench NAME [ARG ...]``: run a benchmark of :mod:`captum_jscopes.bench`;
everything after its name goes to the benchmark's own ``main`` untouched (its
``--help`` included), which names itself ``jscopes bench NAME``. ``jscopes bench``
alone lists the benchmarks."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import Any

from captum_jscopes.cli._common import PROG, CommandError, add_command

NAME = "bench"
HELP = "benchmarks: 'bench speed ...', 'bench faithfulness ...' or 'bench trust ...'"
DESCRIPTION = "Run a benchmark; the arguments after its name go to the benchmark (see 'jscopes bench speed --help')."

#: benchmark name -> module, imported only when that benchmark runs (the CLI works without them)
BENCHMARKS = {
    "speed": "captum_jscopes.bench.speed",
    "faithfulness": "captum_jscopes.bench.faithfulness",
    "trust": "captum_jscopes.bench.trust",
    "layers": "captum_jscopes.bench.layers",
}
#: what each benchmark measures, for the list ``jscopes bench`` prints
ABOUT = {
    "speed": "seconds per explained token of every method, as ratios to a floor and to Integrated Gradients",
    "faithfulness": "AOPC by deletion on LAMBADA or another prompt set, optional leave-one-out agreement",
    "trust": "the attention-sink artifact against leave-one-out, and each token's validity radius",
    "layers": "every scope's map at every layer against patching the residual stream there",
}


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """The ``bench`` sub-command."""
    p = add_command(subcommands, NAME, HELP, DESCRIPTION, run)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = benchmark_list()
    # Optional, so that 'jscopes bench' alone lists the benchmarks instead of a bare usage error.
    p.add_argument("benchmark", nargs="?", choices=sorted(BENCHMARKS), help="which benchmark")
    # Only for the usage text: main() hands everything after the name to the benchmark untouched.
    p.add_argument("args", nargs="*", metavar="ARG", help="arguments of the benchmark")
    return p


def benchmark_list() -> str:
    """The benchmarks, one per line with what it measures."""
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {ABOUT.get(name, '')}".rstrip() for name in sorted(BENCHMARKS)]
    return "benchmarks:\n" + "\n".join(lines) + f"\n\nRun '{PROG} bench NAME --help' for the options of one."


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``[opts] bench NAME REST...`` into what the command line parses and
    REST, which goes untouched to the benchmark (argparse would otherwise take
    REST's --help); other command lines come back whole, with nothing forwarded."""
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if first is None or argv[first] != NAME or first + 1 >= len(argv) or argv[first + 1].startswith("-"):
        return argv, []
    return argv[: first + 2], argv[first + 2 :]


def run(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Run the benchmark ``args.benchmark`` with the ``forwarded`` arguments;
    without a name, list the benchmarks (exit status 2: nothing ran)."""
    if args.benchmark is None:
        print(f"{PROG} bench: name a benchmark\n\n{benchmark_list()}", file=sys.stderr)
        return 2
    name = BENCHMARKS[args.benchmark]
    try:
        module = importlib.import_module(name)  # lazily: the CLI works without the benchmarks
    except ModuleNotFoundError as err:
        if err.name != name:
            raise  # a dependency of the benchmark is missing: say which
        raise CommandError(f"the {args.benchmark} benchmark is not available: module {name} is not installed") from err
    options = {"prog": f"{PROG} bench {args.benchmark}"} if _takes_prog(module.main) else {}
    status = module.main(forwarded, **options)
    return 0 if status is None else int(status)


def _takes_prog(function: Any) -> bool:
    """Whether a benchmark's ``main`` takes the program name for its usage text."""
    try:
        return "prog" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C function without a signature
        return False
