"""``jscopes attribute PROMPT``: explain the next-token prediction after a prompt
(or ``--target``) with one or all three scopes and write, per scope,
``<out>/<scope>.png`` (heatmap, the explained token in red), ``<out>/<scope>.html``
(self-contained) and ``<out>/<scope>.json`` (a :class:`~captum_jscopes.ScopeResult`).

The work is :func:`captum_jscopes.runs.explain.explain` and
:func:`~captum_jscopes.runs.explain.write_result`; ``--chat``, ``--keep-special``
and ``--fisher-estimator`` are the fields of
:class:`~captum_jscopes.runs.dataset.DatasetSettings`, as in ``attribute-dataset``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from captum_jscopes.cli._common import (
    add_command,
    add_model_flags,
    load_model_from_args,
    note,
    output_folder,
    print_files,
    short,
    shown,
    target_line,
)
from captum_jscopes.cli.flags import add_dataclass_flags, values_from_args
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.runs.dataset import DatasetSettings
from captum_jscopes.runs.explain import (
    INTERACTIVE_SUFFIX,
    PassTiming,
    backward_passes,
    check_prompt,
    explain_scopes,
    no_target_given,
    scope_options,
    write_result,
)
from captum_jscopes.scopes.registry import SCOPES, scope_class

NAME = "attribute"
HELP = "explain the next token of a prompt (PNG, HTML, JSON)"
DESCRIPTION = (
    "Explain the model's next-token prediction after PROMPT (or --target) with Jacobian "
    "Scopes. Writes <out>/<scope>.png, .html and .json for each scope."
)
#: the settings of one explain() call that are also a dataset's (same flags)
SETTINGS = ("chat", "keep_special", "fisher_estimator")
#: tokens listed per scope in the terminal
TOP_K = 5
#: estimates at least this long suggest the quick estimator
QUICK_LOOK_SECONDS = 30.0


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """The ``attribute`` sub-command."""
    p = add_command(subcommands, NAME, HELP, DESCRIPTION, run)
    p.add_argument("prompt", help="the text whose continuation is explained")
    p.add_argument(
        "--target",
        help="the continuation to explain, with its leading space (e.g. ' Paris'); several tokens are "
        "explained one by one (teacher-forced) and summed in the picture. Default: the model's top-1 prediction",
    )
    p.add_argument("--scope", choices=(*SCOPES, "all"), default="all", help="which scope(s) to run (default: all)")
    add_model_flags(p)
    p.add_argument("--out", default="jscopes-out", metavar="DIR", help="output folder (default: ./jscopes-out)")
    add_dataclass_flags(p, DatasetSettings, only=SETTINGS)
    return p


def run(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Explain ``args.prompt`` with the chosen scopes; print each scope's top tokens and files."""
    prompt = check_prompt(args.prompt)
    if args.target == "":
        raise ValueError("--target is empty; leave it out to explain the model's own prediction")
    settings = DatasetSettings(**values_from_args(args, DatasetSettings, only=SETTINGS, note=note))
    scopes = tuple(SCOPES) if args.scope == "all" else (args.scope,)
    out = output_folder(args.out)
    model, tokenizer = load_model_from_args(args)
    values = dataclasses.asdict(settings)

    def estimate(scope: str, timing: PassTiming, passes: int) -> None:
        # a costly scope (Fisher: 40 backward passes per explained token by default) says
        # what it will cost before it starts, from this call's own measured passes
        print(estimate_line(timing, scope, scope_options(scope, values)), flush=True)

    # one forward for every scope; progress bars (stderr) for the tokens of a long
    # target and for the Fisher probes
    results = explain_scopes(model, tokenizer, prompt, scopes, args.target, chat=settings.chat,
                             keep_special=settings.keep_special, settings=values, progress=True,
                             on_estimate=estimate)
    for i, (scope, result) in enumerate(zip(scopes, results)):
        if i == 0:
            _print_header(result)
        # each scope's summary and files as soon as it is done: the Fisher Scope can take minutes
        _print_scope(result, write_result(result, out, scope))
    return 0


def estimate_line(timing: PassTiming, scope: str, options: dict) -> str:
    """'Fisher: 40 backward passes over 3,400 tokens, about 12 min; --fisher-estimator
    eig for a quick look': the cost of ``scope`` with its ``options`` from one
    measured pass (:meth:`~captum_jscopes.runs.explain.PassTiming.seconds`), and the
    scope's ``quick_look`` options as flags when they are cheaper and it is long."""
    passes = backward_passes(scope, timing.hidden_size, **options)
    seconds = timing.seconds(passes)
    per_token = f" x {timing.n_targets} target tokens" if timing.n_targets > 1 else ""
    what = f"{passes} backward pass{'' if passes == 1 else 'es'}{per_token} over {timing.n_tokens:,} tokens"
    line = f"{scope.title()}: {what}, about {_duration(seconds)}"
    quick = scope_class(scope).quick_look
    if quick and seconds >= QUICK_LOOK_SECONDS and backward_passes(scope, timing.hidden_size, **quick) < passes:
        flags = " ".join(f"--{scope}-{name.replace('_', '-')} {value}" for name, value in quick.items())
        line += f"; {flags} for a quick look"
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _print_header(result: ScopeResult) -> None:
    first = result.metadata
    prediction = first["prediction"]
    settings = first["settings"]
    print(f"model:      {first['model']} ({settings['dtype']}, {settings['device']})")
    print(f"prompt:     {short(first['prompt'])!r} ({len(result.input_tokens)} tokens scored)")
    print(f"prediction: {prediction['token']!r} (p = {prediction['prob']:.3g})")
    if not no_target_given(first):
        n = len(result.output_tokens)
        print(f"target:     {target_line(result)}" + (f", {n} tokens, teacher-forced" if n > 1 else ""))
    if first.get("target_hint"):
        print(f"hint: {first['target_hint']}", file=sys.stderr)


def _print_scope(result: ScopeResult, written: list[Path]) -> None:
    n = len(result.output_tokens)
    summed = f", summed over the {n} target tokens" if n > 1 else ""
    print(f"\n{result.metadata['scope']}: top {TOP_K} tokens by influence{summed}")
    for rank, (index, token, score) in enumerate(result.top_tokens(TOP_K), start=1):
        print(f"  {rank}. {shown(token)!r:<20} (token {index:>3})  {score:.4g}")
    print_files(written)
    for path in written:
        if path.name.endswith(INTERACTIVE_SUFFIX):
            print(f"  (open {path.name} and choose a target token to see its own map, or their sum)")
    sys.stdout.flush()  # shown before the next scope starts, also when stdout is a pipe
