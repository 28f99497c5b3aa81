"""``jscopes attribute-dataset FILE``: explain every prompt of a JSON / JSONL file,
shipped set or hub dataset, sharded over processes and resumable
(:func:`captum_jscopes.runs.dataset.attribute_dataset`; docs/dataset.md).

The options that change what is computed are the fields of
:class:`~captum_jscopes.runs.dataset.DatasetSettings`, made into flags from the
fields' metadata (:mod:`captum_jscopes.cli.flags`), and the scopes' options,
made into flags from each scope's ``Options`` (:mod:`captum_jscopes.cli.scope_flags`);
the others (``--slice``, the model flags, ``--out``, ``--overwrite``) are the command's own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from captum_jscopes.cli._common import (
    PROG,
    CommandError,
    UsageError,
    add_command,
    add_model_flags,
    load_model_from_args,
    note,
    output_folder,
    print_files,
    short,
)
from captum_jscopes.cli.flags import add_dataclass_flags, values_from_args
from captum_jscopes.cli.scope_flags import add_scope_flags, scope_settings_from_args
from captum_jscopes.runs.dataset import (
    DatasetSettings,
    PreviousRunError,
    attribute_dataset,
    device_for_process,
    is_main_process,
    select_prompts,
)
from captum_jscopes.runs.explain import model_name

NAME = "attribute-dataset"
HELP = "explain the next token of every prompt of a dataset (sharded, resumable)"
DESCRIPTION = (
    "Explain the next token (or --target-field) of every prompt of FILE with Jacobian Scopes. "
    "Writes one record per prompt to <out>/records.jsonl, summary.md/.json and index.html with a "
    "page per prompt; a prompt that cannot be explained is recorded with its error and the run goes on; "
    "a rerun resumes where a stopped run ended, and several processes "
    "(torchrun --nproc_per_node N -m captum_jscopes attribute-dataset ...) share the prompts."
)
#: prompts listed in the terminal; the rest are in summary.md and index.html
SHOWN_PROMPTS = 10


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """The ``attribute-dataset`` sub-command."""
    p = add_command(subcommands, NAME, HELP, DESCRIPTION, run)
    p.add_argument(
        "file",
        metavar="FILE",
        help="the prompts: a .json list or .jsonl file of objects, a shipped set (lambada, opus_de_en) "
        "or hf:NAME[:SPLIT] (needs the datasets package)",
    )
    add_dataclass_flags(p, DatasetSettings)
    add_scope_flags(p)
    p.add_argument(
        "--slice",
        type=_parse_slice,
        default=slice(0, None),
        metavar="START:STOP",
        help="only prompts START to STOP-1 of FILE, counted from 0, e.g. 0:100 or 500: (default: all)",
    )
    add_model_flags(p)
    p.add_argument("--out", default="jscopes-dataset", metavar="DIR", help="output folder (default: ./jscopes-dataset)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the previous run in --out instead of resuming it (needed to change its settings)",
    )
    return p


def run(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Attribute the prompts of ``args.file``; print the summary (exit status 1
    when no prompt could be explained)."""
    # Everything that reads only the arguments and FILE comes first, so that bad
    # input is a usage error before the model (seconds to minutes) loads.
    try:
        settings = DatasetSettings(**values_from_args(args, DatasetSettings, note=note),
                                   scope_settings=scope_settings_from_args(args, note=note))
        out = output_folder(args.out)
        prompts = select_prompts(args.file, settings, start=args.slice.start, stop=args.slice.stop)
    except (ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from err
    args.device = device_for_process(args.device)  # one GPU per process under torchrun
    model, tokenizer = load_model_from_args(args)
    if is_main_process():  # under torchrun, once
        print(f"model:   {model_name(model)}")
        print(f"prompts: {len(prompts)} from {args.file}; scopes: {', '.join(settings.scopes)}")
    try:
        # the source itself, not the prompts read above: its order is the reports' order, also for the
        # records of other slices run into the same --out
        summary = attribute_dataset(model, tokenizer, args.file, out, settings, start=args.slice.start,
                                    stop=args.slice.stop, overwrite=args.overwrite, progress=True)
    except PreviousRunError as err:  # named with the command's flags, not the Python keywords
        raise CommandError(err.describe(elsewhere="another --out", overwrite="--overwrite")) from err
    if summary is None:  # another process prints
        return 0
    return _print_summary(summary, out)


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


def _print_summary(summary: dict, out: Path) -> int:
    """Print the run's summary; the exit status (1 when no prompt could be explained)."""
    n = summary["n_prompts"]
    seconds = summary["seconds"]
    errors, invalid = summary["n_errors"], summary.get("n_invalid", 0)
    failed_text = f", {errors} could not be explained" if errors else ""
    if invalid:
        failed_text += f" ({invalid} empty or invalid {'entry' if invalid == 1 else 'entries'} of the source)"
    computed = summary.get("computed", n - summary["resumed"])
    print(f"done:    {computed} prompts computed, {summary['resumed']} resumed from an earlier run{failed_text}")
    earlier = n - computed - summary["resumed"]
    if earlier > 0:  # records of other slices of the source, run into the same --out before
        print(f"         the reports hold all {n} prompts of {out}: {earlier} more from earlier runs")
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
        print(f"  {entry['id']:>6}  {short(' '.join(entry['text'].split()), 40)!r} -> {entry['explains']!r} "
              f"(p = {entry['prob']:.3g})  {tops}")  # fmt: skip
    if n > SHOWN_PROMPTS:
        print(f"  ... {n - SHOWN_PROMPTS} more in {out / 'summary.md'}")
    print_files([out / name for name in ("index.html", "summary.md", "summary.json", "records.jsonl")])
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
