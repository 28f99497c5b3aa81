"""``jscopes demo``: the Semantic, Temperature and Fisher Scopes on the built-in
examples of :mod:`captum_jscopes.cli.demo_prompts`, one sub-folder of pictures
per example, with each title's claim checked on the model that ran."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from captum_jscopes.cli import demo_prompts
from captum_jscopes.cli._common import (
    add_command,
    add_model_flags,
    load_model_from_args,
    output_folder,
    print_files,
    short,
    shown,
    target_line,
)
from captum_jscopes.runs.explain import explain, model_name, write_result

NAME = "demo"
HELP = "the three scopes on built-in examples (factual recall, implicit bias, LAMBADA)"
DESCRIPTION = (
    "Run the Semantic, Temperature and Fisher Scopes on built-in examples and write "
    "their pictures into one sub-folder per example."
)


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """The ``demo`` sub-command."""
    p = add_command(subcommands, NAME, HELP, DESCRIPTION, run)
    p.add_argument("--out", default="jscopes-demo", metavar="DIR", help="output folder (default: ./jscopes-demo)")
    add_model_flags(p)
    return p


def run(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Explain every example's runs, print the top tokens and each claim's verdict."""
    examples = demo_prompts.DEMO_EXAMPLES  # read at run time: tests swap in their own examples
    out = output_folder(args.out)
    model, tokenizer = load_model_from_args(args)
    print(f"model: {model_name(model)}")
    written = []
    for example in examples:
        print(f"\n{example.name}: {example.about}\n  prompt: {short(example.prompt)!r}")
        for run_ in example.runs:
            result = explain(model, tokenizer, example.prompt, run_.scope, run_.target, progress=True)
            written += write_result(result, out / example.name, run_.file_stem)
            top = ", ".join(repr(shown(token)) for _, token, _ in result.top_tokens(3))
            print(f"  {run_.file_stem:<22} explains {target_line(result)}; top tokens: {top}")
            # the title's claim, checked on the model that ran (the note describes the default model)
            for claim in (c for c in example.claims if c.stem == run_.file_stem):
                print(f"  {'':<22} claim {claim.describe(result)}")
            sys.stdout.flush()
        if example.note:
            print(textwrap.fill(example.note, width=100, initial_indent="  note: ", subsequent_indent="        "))
    print_files(written)
    print(f"\nOpen {out / examples[0].name / 'semantic.html'} in a browser to start.")
    return 0
