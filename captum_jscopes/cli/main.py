"""The ``jscopes`` command line (also ``python -m captum_jscopes``).

    jscopes attribute "The capital of France is" --target " Paris"
    jscopes attribute-dataset prompts.jsonl --scope semantic --out out/
    jscopes demo
    jscopes bench speed --help

``attribute`` explains the next-token prediction after a prompt with one or all
three scopes and writes, per scope, ``<out>/<scope>.png`` (heatmap, the explained
token in red), ``<out>/<scope>.html`` (self-contained) and ``<out>/<scope>.json``
(a :class:`~captum_jscopes.ScopeResult`). ``attribute-dataset`` does it for every
prompt of a JSON / JSONL file or hub dataset, sharded over processes and
resumable (:mod:`captum_jscopes.runs.dataset`). ``demo`` does the same on built-in
examples (:mod:`captum_jscopes.cli.demo_prompts`). ``bench`` forwards to the
benchmark modules (:mod:`captum_jscopes.bench`).

This module only parses and dispatches: the work is done by
:func:`captum_jscopes.runs.explain.explain`, :func:`~captum_jscopes.runs.explain.write_result`
and :func:`captum_jscopes.runs.dataset.attribute_dataset`, and the ``--scope`` and
``--fisher-method`` choices come from :mod:`captum_jscopes.scopes.registry`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

from captum_jscopes.runs.dataset import DatasetSettings, attribute_dataset, device_for_process, is_main_process, select_prompts
from captum_jscopes.runs.explain import (
    INTERACTIVE_SUFFIX,
    PassTiming,
    backward_passes,
    check_prompt,
    explain,
    measure_pass,
    model_name,
    package_version,
    write_result,
)
from captum_jscopes.models import ModelNotAvailableError, load_model
from captum_jscopes.scopes.registry import DEFAULT_FISHER_METHOD, FISHER_METHODS, SCOPES
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.display.visualize import display_token

PROG = "jscopes"
DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")
BENCHMARKS = {
    "speed": "captum_jscopes.bench.speed",
    "faithfulness": "captum_jscopes.bench.faithfulness",
    "trust": "captum_jscopes.bench.trust",
}
TOP_K = 5
DEBUG_ENV = "JSCOPES_DEBUG"


class CommandError(RuntimeError):
    """A problem the command reports as one line (e.g. a benchmark that is not installed)."""


class UsageError(CommandError):
    """Bad input found before any work (a missing field, an empty file): exit status 2, like a bad option."""


# ----------------------------------------------------------------------------- entry point


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
    own_argv, forwarded = _split_bench_args(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(own_argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return _exit_status(stop)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if args.command is None:
        print(f"{PROG}: error: missing command: {', '.join(COMMAND_TEXTS)} (see '{PROG} --help')", file=sys.stderr)
        return 2
    try:
        return args.handler(args, forwarded)
    except SystemExit as stop:  # a benchmark's own argparse (--help, bad flag)
        return _exit_status(stop)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line instead of a traceback
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_describe_error(err, debug)}", file=sys.stderr)
        return 1


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``jscopes`` and its commands."""
    parser = _Parser(
        prog=PROG,
        description="Jacobian Scopes: which input tokens drive a language model's next-token prediction.",
        epilog="Run 'jscopes COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _add_debug_flag(parser, False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_attribute_command(commands)
    _add_attribute_dataset_command(commands)
    _add_demo_command(commands)
    _add_bench_command(commands)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser, default: Any) -> None:
    # Sub-commands use SUPPRESS so that 'jscopes --debug attribute ...' is not
    # overwritten by the sub-command's own default.
    parser.add_argument(
        "--debug", action="store_true", default=default, help=f"show the traceback of an error (or set {DEBUG_ENV}=1)"
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="embedded model ('smollm2' = default SmolLM2-135M-Instruct, 'gemma3-270m'), "
        "a Hugging Face Hub name or a local checkpoint folder",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="dtype to load the model in (default: float32)")
    parser.add_argument("--device", help="where to run the model, e.g. cpu, cuda, cuda:1 (default: cpu)")


#: The sub-commands' one-line help and description, by name.
COMMAND_TEXTS = {
    "attribute": (
        "explain the next token of a prompt (PNG, HTML, JSON)",
        "Explain the model's next-token prediction after PROMPT (or --target) with Jacobian "
        "Scopes. Writes <out>/<scope>.png, .html and .json for each scope.",
    ),
    "attribute-dataset": (
        "explain the next token of every prompt of a dataset (sharded, resumable)",
        "Explain the next token (or --target-field) of every prompt of FILE with Jacobian Scopes. "
        "Writes one record per prompt to <out>/records.jsonl, summary.md/.json and index.html with a "
        "page per prompt; a rerun resumes where a stopped run ended, and several processes "
        "(torchrun --nproc_per_node N -m captum_jscopes attribute-dataset ...) share the prompts.",
    ),
    "demo": (
        "the three scopes on built-in examples (factual recall, implicit bias, LAMBADA)",
        "Run the Semantic, Temperature and Fisher Scopes on built-in examples and write "
        "their pictures into one sub-folder per example.",
    ),
    "bench": (
        "benchmarks: 'bench speed ...', 'bench faithfulness ...' or 'bench trust ...'",
        "Run a benchmark; the arguments after its name go to the benchmark "
        "(see 'jscopes bench speed --help').",
    ),
}


def _add_command(commands: Any, name: str, handler: Any) -> argparse.ArgumentParser:
    """The sub-command ``name`` with its texts and --debug flag, run by ``handler(args, forwarded)``."""
    help, description = COMMAND_TEXTS[name]
    p = commands.add_parser(name, help=help, description=description)
    _add_debug_flag(p, argparse.SUPPRESS)
    p.set_defaults(handler=handler)
    return p


def _add_attribute_command(commands: Any) -> None:
    p = _add_command(commands, "attribute", _run_attribute)
    p.add_argument("prompt", help="the text whose continuation is explained")
    p.add_argument(
        "--target",
        help="the continuation to explain, with its leading space (e.g. ' Paris'); several tokens are "
        "explained one by one (teacher-forced) and summed in the picture. Default: the model's top-1 prediction",
    )
    p.add_argument(
        "--scope", choices=(*SCOPES, "all"), default="all", help="which scope(s) to run (default: all)"
    )
    _add_model_flags(p)
    p.add_argument("--out", default="jscopes-out", metavar="DIR", help="output folder (default: ./jscopes-out)")
    _add_scope_option_flags(p, "prompt")


def _add_scope_option_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--fisher-method, --chat and --keep-special, shared by the attribute commands."""
    p.add_argument(
        "--fisher-method",
        choices=FISHER_METHODS,
        default=DEFAULT_FISHER_METHOD,
        help=f"Fisher Scope estimator (default: {DEFAULT_FISHER_METHOD}, 40 backward passes; eig: 1, a quick look; "
        "exact: one per hidden dimension)",
    )
    p.add_argument(
        "--chat", action="store_true", help=f"wrap the {what} in the chat template; only the user's tokens are scored"
    )
    p.add_argument(
        "--keep-special",
        action="store_true",
        help="also show and score special tokens (BOS, chat markers); by default they are left out, "
        "as attention sinks they would dominate the map",
    )


def _add_attribute_dataset_command(commands: Any) -> None:
    p = _add_command(commands, "attribute-dataset", _run_attribute_dataset)
    p.add_argument(
        "file",
        metavar="FILE",
        help="the prompts: a .json list or .jsonl file of objects, a shipped set (lambada, opus_de_en) "
        "or hf:NAME[:SPLIT] (needs the datasets package)",
    )
    p.add_argument(
        "--scope",
        action="append",
        choices=(*SCOPES, "all"),
        help="a scope to run; repeat for several (default: all)",
    )
    p.add_argument("--text-field", default="text", metavar="NAME", help="field holding the prompt (default: text)")
    p.add_argument(
        "--target-field",
        metavar="NAME",
        help="field holding the continuation to explain, with its leading space (e.g. ' Paris'); "
        "default: the model's top-1 prediction",
    )
    p.add_argument(
        "--slice",
        type=_parse_slice,
        default=slice(0, None),
        metavar="START:STOP",
        help="only prompts START to STOP-1 of FILE, counted from 0, e.g. 0:100 or 500: (default: all)",
    )
    _add_model_flags(p)
    p.add_argument(
        "--out", default="jscopes-dataset", metavar="DIR", help="output folder (default: ./jscopes-dataset)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the previous run in --out instead of resuming it (needed to change its settings)",
    )
    _add_scope_option_flags(p, "prompts")


def _parse_slice(text: str) -> slice:
    """'START:STOP' (either may be left out) -> slice; argparse turns the error into a usage error."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(part) if part.strip() else None for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP with whole numbers, e.g. 0:100, got {text!r}") from None
    start = 0 if start is None else start
    if start < 0 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return slice(start, stop)


def _add_demo_command(commands: Any) -> None:
    p = _add_command(commands, "demo", _run_demo)
    p.add_argument("--out", default="jscopes-demo", metavar="DIR", help="output folder (default: ./jscopes-demo)")
    _add_model_flags(p)


def _add_bench_command(commands: Any) -> None:
    p = _add_command(commands, "bench", _run_bench)
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    # Only for the usage text: main() hands everything after the name to the benchmark untouched.
    p.add_argument("args", nargs="*", metavar="ARG", help="arguments of the benchmark")


def _split_bench_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``[opts] bench NAME REST...`` into what we parse and REST, which goes
    untouched to the benchmark (argparse would otherwise take REST's --help)."""
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if first is None or argv[first] != "bench" or first + 1 >= len(argv) or argv[first + 1].startswith("-"):
        return argv, []
    return argv[: first + 2], argv[first + 2 :]


# ----------------------------------------------------------------------------- commands


def _run_attribute(args: argparse.Namespace, forwarded: list[str]) -> int:
    prompt = check_prompt(args.prompt)
    if args.target == "":
        raise ValueError("--target is empty; leave it out to explain the model's own prediction")
    scopes = tuple(SCOPES) if args.scope == "all" else (args.scope,)
    out = _output_folder(args.out)
    model, tokenizer = _load_model(args)
    options = dict(chat=args.chat, keep_special=args.keep_special)
    # The Fisher Scope is the costly one (40 backward passes per explained token by
    # default): one measured forward + backward pass (about one Semantic call) gives
    # its estimate before it starts.
    timing = measure_pass(model, tokenizer, prompt, args.target, **options) if "fisher" in scopes else None
    for i, scope in enumerate(scopes):
        if timing is not None and scope == "fisher":
            print(estimate_line(timing, scope, args.fisher_method), flush=True)
        # progress bars (stderr) for the tokens of a long target and for the Fisher probes
        result = explain(
            model, tokenizer, prompt, scope, args.target, fisher_method=args.fisher_method, progress=True, **options
        )
        if i == 0:
            _print_header(result)
        # each scope's summary and files as soon as it is done: the Fisher Scope can take minutes
        _print_scope(result, write_result(result, out, scope))
    return 0


def _run_attribute_dataset(args: argparse.Namespace, forwarded: list[str]) -> int:
    # Everything that reads only the arguments and FILE comes first, so that bad
    # input is a usage error before the model (seconds to minutes) loads.
    try:
        settings = DatasetSettings(
            scopes=tuple(SCOPES) if args.scope is None or "all" in args.scope else tuple(args.scope),
            text_field=args.text_field,
            target_field=args.target_field,
            chat=args.chat,
            keep_special=args.keep_special,
            fisher_method=args.fisher_method,
        )
        out = _output_folder(args.out)
        prompts = select_prompts(args.file, settings, start=args.slice.start, stop=args.slice.stop)
    except (ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from err
    args.device = device_for_process(args.device)  # one GPU per process under torchrun
    model, tokenizer = _load_model(args)
    if is_main_process():  # under torchrun, once
        print(f"model:   {model_name(model)}")
        print(f"prompts: {len(prompts)} from {args.file}; scopes: {', '.join(settings.scopes)}")
    summary = attribute_dataset(model, tokenizer, prompts, out, settings, overwrite=args.overwrite, progress=True)
    if summary is None:  # another process prints
        return 0
    return _print_dataset_summary(summary, out)


def _run_demo(args: argparse.Namespace, forwarded: list[str]) -> int:
    from captum_jscopes.cli.main.demo_prompts import DEMO_EXAMPLES

    out = _output_folder(args.out)
    model, tokenizer = _load_model(args)
    print(f"model: {model_name(model)}")
    written = []
    for example in DEMO_EXAMPLES:
        print(f"\n{example.name}: {example.about}\n  prompt: {_short(example.prompt)!r}")
        for run in example.runs:
            result = explain(model, tokenizer, example.prompt, run.scope, run.target, progress=True)
            written += write_result(result, out / example.name, run.file_stem)
            top = ", ".join(repr(_shown(token)) for _, token, _ in result.top_tokens(3))
            print(f"  {run.file_stem:<22} explains {_target_line(result)}; top tokens: {top}")
            # the title's claim, checked on the model that ran (the note describes the default model)
            for claim in (c for c in example.claims if c.stem == run.file_stem):
                print(f"  {'':<22} claim {claim.describe(result)}")
            sys.stdout.flush()
        if example.note:
            print(textwrap.fill(example.note, width=100, initial_indent="  note: ", subsequent_indent="        "))
    _print_files(written)
    print(f"\nOpen {out / DEMO_EXAMPLES[0].name / 'semantic.html'} in a browser to start.")
    return 0


def _run_bench(args: argparse.Namespace, forwarded: list[str]) -> int:
    name = BENCHMARKS[args.benchmark]
    try:
        module = importlib.import_module(name)  # lazily: the CLI works without the benchmarks
    except ModuleNotFoundError as err:
        if err.name != name:
            raise  # a dependency of the benchmark is missing: say which
        raise CommandError(f"the {args.benchmark} benchmark is not available: module {name} is not installed") from err
    status = module.main(forwarded)
    return 0 if status is None else int(status)


# ----------------------------------------------------------------------------- helpers


def _output_folder(out: str) -> Path:
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out!r} is a file, not a folder")
    return path


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    name = args.model
    if name is not None:
        if not name.strip():
            raise ValueError("--model is empty; leave it out for the default model")
        path = Path(name).expanduser()
        # Hub names are 'model' or 'org/model'; anything else that looks like a
        # path must exist, else transformers would try (and fail on) the Hub.
        looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
        if looks_local and not path.is_dir():
            what = "is a file, not a checkpoint folder" if path.exists() else "does not exist"
            raise ValueError(f"model folder {name!r} {what}")
    return load_model(name, dtype=args.dtype, device=args.device, progress=False)


def _describe_error(err: Exception, debug: bool) -> str:
    if isinstance(err, (CommandError, ValueError, TypeError, OSError, ModelNotAvailableError)):
        return str(err)
    hint = "" if debug else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
    return f"{type(err).__name__}: {err}{hint}"


def _exit_status(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- terminal output


def _shown(token: str) -> str:
    """A raw tokenizer piece as text ('Ġcat' -> ' cat')."""
    return display_token(token)


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _target_line(result: ScopeResult) -> str:
    """'\\' Paris\\' (p = 0.773)' for one target token, the joined text and the
    product of the probabilities for several."""
    prob = float(result.output_probs.double().prod())
    return f"{result.metadata['target']!r} (p = {prob:.3g})"


def _print_header(result: ScopeResult) -> None:
    first = result.metadata
    prediction = first["prediction"]
    settings = first["settings"]
    print(f"model:      {first['model']} ({settings['dtype']}, {settings['device']})")
    print(f"prompt:     {_short(first['prompt'])!r} ({len(result.input_tokens)} tokens scored)")
    print(f"prediction: {prediction['token']!r} (p = {prediction['prob']:.3g})")
    if not first["target_is_prediction"]:
        n = len(result.output_tokens)
        print(f"target:     {_target_line(result)}" + (f", {n} tokens, teacher-forced" if n > 1 else ""))
    if first.get("target_hint"):
        print(f"hint: {first['target_hint']}", file=sys.stderr)


def _print_scope(result: ScopeResult, written: list[Path]) -> None:
    n = len(result.output_tokens)
    summed = f", summed over the {n} target tokens" if n > 1 else ""
    print(f"\n{result.metadata['scope']}: top {TOP_K} tokens by influence{summed}")
    for rank, (index, token, score) in enumerate(result.top_tokens(TOP_K), start=1):
        print(f"  {rank}. {_shown(token)!r:<20} (token {index:>3})  {score:.4g}")
    _print_files(written)
    for path in written:
        if path.name.endswith(INTERACTIVE_SUFFIX):
            print(f"  (open {path.name} and choose a target token to see its own map, or their sum)")
    sys.stdout.flush()  # shown before the next scope starts, also when stdout is a pipe


#: estimates at least this long suggest the quick estimator
QUICK_LOOK_SECONDS = 30.0


def estimate_line(timing: PassTiming, scope: str, fisher_method: str) -> str:
    """'Fisher: 40 backward passes over 3,400 tokens, about 12 min; --fisher-method
    eig for a quick look': the cost of ``scope`` from one measured pass
    (:meth:`~captum_jscopes.runs.explain.PassTiming.seconds`)."""
    passes = backward_passes(scope, fisher_method, timing.hidden_size)
    seconds = timing.seconds(passes)
    per_token = f" x {timing.n_targets} target tokens" if timing.n_targets > 1 else ""
    what = f"{passes} backward pass{'' if passes == 1 else 'es'}{per_token} over {timing.n_tokens:,} tokens"
    line = f"{scope.title()}: {what}, about {_duration(seconds)}"
    if scope == "fisher" and fisher_method != "eig" and seconds >= QUICK_LOOK_SECONDS:
        line += "; --fisher-method eig for a quick look"
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


#: prompts listed in the terminal; the rest are in summary.md and index.html
SHOWN_PROMPTS = 10


def _print_dataset_summary(summary: dict, out: Path) -> int:
    """Print the run's summary; the exit status (1 when no prompt could be explained)."""
    n = summary["n_prompts"]
    seconds = summary["seconds"]
    print(f"done:    {n - summary['resumed']} prompts computed, {summary['resumed']} resumed from an earlier run")
    if seconds["per_prompt"] is not None:
        per_scope = ", ".join(f"{s} {v:.3g} s" for s, v in seconds["per_scope"].items())
        print(f"time:    {seconds['per_prompt']:.3g} s per prompt ({per_scope})")
    print()
    for entry in summary["prompts"][:SHOWN_PROMPTS]:
        if "error" in entry:
            print(f"  {entry['id']:>6}  error: {entry['error']}")
            continue
        tops = "; ".join(
            f"{scope}: " + ", ".join(repr(token) for _, token, _ in top[:3]) for scope, top in entry["top_tokens"].items()
        )
        print(f"  {entry['id']:>6}  {_short(' '.join(entry['text'].split()), 40)!r} -> {entry['explains']!r} "
              f"(p = {entry['prob']:.3g})  {tops}")  # fmt: skip
    if n > SHOWN_PROMPTS:
        print(f"  ... {n - SHOWN_PROMPTS} more in {out / 'summary.md'}")
    _print_files([out / name for name in ("index.html", "summary.md", "summary.json", "records.jsonl")])
    if summary["n_hints"]:
        print(f"hint: {summary['n_hints']} target(s) start with another token than the prediction but would match "
              "it with a leading space; see the hints in summary.json", file=sys.stderr)  # fmt: skip
    failed = [e for e in summary["prompts"] if "error" in e]
    if failed:
        first = f"first: prompt {failed[0]['id']!r}: {failed[0]['error']}"
        if len(failed) == n:
            # The errors are recorded, so a plain rerun would not retry them.
            print(f"{PROG}: error: no prompt could be explained ({first}); fix it and rerun with --overwrite",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"{PROG}: warning: {len(failed)} of {n} prompts could not be explained ({first})", file=sys.stderr)
    return 0


def _print_files(written: list[Path]) -> None:
    print("\nfiles written:")
    for path in written:
        print(f"  {path}")
