"""``jscopes attribute PROMPT``: explain the next-token prediction after a prompt
(or ``--target``) with one or all three scopes and write, per scope,
``<out>/<scope>.png`` (heatmap, the explained token in red), ``<out>/<scope>.html``
(self-contained) and ``<out>/<scope>.json`` (a :class:`~captum_jscopes.ScopeResult`);
with ``--layers`` also ``<out>/<scope>_layers.png``, the map at every layer
(:func:`write_layers`).

The work is :func:`captum_jscopes.runs.explain.explain` and
:func:`~captum_jscopes.runs.explain.write_result`; ``--chat`` and ``--keep-special``
are fields of :class:`~captum_jscopes.runs.dataset.DatasetSettings`, and every
scope's options are flags made from the scopes' ``Options``
(``--<scope>-<option>``, ``--rules``, ``--reduce``; :mod:`captum_jscopes.cli.scope_flags`),
as in ``attribute-dataset``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

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
from captum_jscopes.cli.scope_flags import add_scope_flags, flag_of, scope_settings_from_args
from captum_jscopes.core.tokens import encode_target
from captum_jscopes.integrations.captum import LLMScopeAttribution
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
SETTINGS = ("chat", "keep_special")
#: tokens listed per scope in the terminal
TOP_K = 5
#: estimates at least this long suggest the quick estimator
QUICK_LOOK_SECONDS = 30.0
#: file name ending of the layer view (``--layers``)
LAYERS_SUFFIX = "_layers.png"


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
    add_scope_flags(p)
    p.add_argument(
        "--layers",
        action="store_true",
        help="also write <out>/<scope>_layers.png: the map at every layer, input embeddings to the last "
        "(summed over the target tokens), and give a multi-token target's interactive page a layer view. "
        "Costs one more forward and the scope's backward passes",
    )
    return p


def run(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Explain ``args.prompt`` with the chosen scopes; print each scope's top tokens and files."""
    prompt = check_prompt(args.prompt)
    if args.target == "":
        raise ValueError("--target is empty; leave it out to explain the model's own prediction")
    settings = DatasetSettings(**values_from_args(args, DatasetSettings, only=SETTINGS, note=note),
                               scope_settings=scope_settings_from_args(args, note=note))
    scopes = tuple(SCOPES) if args.scope == "all" else (args.scope,)
    out = output_folder(args.out)
    model, tokenizer = load_model_from_args(args)
    values = dict(settings.scope_settings)

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
        written = write_result(result, out, scope)
        if getattr(args, "layers", False):
            # after the scope's own files, from a forward of its own: the normal path stays as without --layers
            target_ids = ([int(result.metadata["prediction"]["id"])] if args.target is None
                          else encode_target(tokenizer, args.target))
            written = write_layers(model, tokenizer, result, scope, target_ids, scope_options(scope, values), out,
                                   keep_special=settings.keep_special, written=written)
        # each scope's summary and files as soon as it is done: the Fisher Scope can take minutes
        _print_scope(result, written)
    return 0


def result_layer_maps(model: Any, tokenizer: Any, result: ScopeResult, scope: str, target_ids: Sequence[int],
                      options: dict, *, keep_special: bool = False) -> torch.Tensor:
    """(P, L + 1, n) float: per target token (P, as ``result.token_attr``'s rows)
    the map of ``scope`` at every layer, row 0 over the input embeddings (equal to
    ``result.token_attr``), row l after decoder layer l, its columns the result's
    n input tokens (``result.input_tokens``).

    The same teacher-forced input as the result's (``result.inp``, the wrapper's
    :meth:`~captum_jscopes.LLMScopeAttribution.model_inputs`), through
    ``scope_output(..., layers=True)``: one forward with the residual streams
    kept, and the scope's backward passes. The columns are cut as the wrapper cuts
    them: the prompt's tokens only, and of them those of ``inp.itp_mask`` (skipped
    special tokens, a chat template's markers are left out).

    Args:
        model, tokenizer: the model and tokenizer of the result.
        result: a ScopeResult of ``explain_scopes`` (its ``inp`` is needed).
        scope: the scope's name.
        target_ids: the explained token ids (P,), as the result explains them.
        options: the scope's options (:func:`~captum_jscopes.runs.explain.scope_options`).
        keep_special: score special tokens, as the result did. Default False.
    """
    if result.inp is None:
        raise ValueError("the result holds no Captum input (inp); a result read back from JSON has none")
    instance = scope_class(scope)(model, tokenizer, exclude_special_tokens=not keep_special)
    prompt, targets, ids, positions = LLMScopeAttribution(instance, tokenizer).model_inputs(
        result.inp, torch.as_tensor(list(target_ids)))
    output = instance.scope_output(ids, positions, targets[None] if instance.takes_target else None, layers=True,
                                   **options)
    grid = output.scores[0, :, :, : prompt.shape[1]]  # (P, L + 1, prompt): the target's own tokens are no inputs
    itp_mask = getattr(result.inp, "itp_mask", None)
    if itp_mask is not None:
        grid = grid[..., itp_mask[0].to(grid.device).bool()]
    return grid.detach().cpu()


def write_layers(model: Any, tokenizer: Any, result: ScopeResult, scope: str, target_ids: Sequence[int],
                 options: dict, out: Path, *, keep_special: bool = False, written: Sequence[Path] = ()) -> list[Path]:
    """Write ``<out>/<scope>_layers.png`` (the layer x token heatmap of the map
    summed over the target tokens, or of the single target;
    :func:`captum_jscopes.display.layers.plot_layer_map`) and, for a multi-token
    target, rewrite ``<out>/<scope>_interactive.html`` with its layer view. Returns
    ``written`` with the PNG added (the page's path is already there)."""
    from captum_jscopes.analysis.layers import LayerMap
    from captum_jscopes.display.interactive import save_interactive_html
    from captum_jscopes.display.layers import display_labels, save_layer_map

    grid = result_layer_maps(model, tokenizer, result, scope, target_ids, options, keep_special=keep_special)
    summed = grid.sum(0)  # (L + 1, n)
    n = summed.shape[-1]
    # the first explained position is the prompt's last token: marked when it is among the columns
    itp_mask = getattr(result.inp, "itp_mask", None)
    last_kept = itp_mask is None or bool(itp_mask[0, -1])
    layer_view = LayerMap(
        scores=summed[None], error=torch.zeros_like(summed[None]),
        input_ids=torch.as_tensor(result.inp.itp_tensor).reshape(1, n),
        attention_mask=torch.ones(1, n, dtype=torch.long),
        positions=torch.tensor([n - 1]), scope=scope,
    )  # fmt: skip
    m = len(target_ids)
    target = result.metadata.get("target")
    caption = (f"explains {target!r}" + (f", summed over its {m} tokens" if m > 1 else "")
               + "; rows: the residual stream after each layer, 0 = input embeddings")
    title = f"{scope.title()} Scope, layer by layer · {result.metadata.get('model', '')}"
    png = save_layer_map(layer_view, Path(out) / f"{scope}{LAYERS_SUFFIX}", labels=display_labels(result.input_display),
                         mark_position=last_kept, title=title, caption=caption)
    if m > 1:  # the page write_result wrote, now with the layer view
        page_title = f"{scope.title()} Scope · {result.metadata.get('model', '')}"
        save_interactive_html(result, Path(out) / f"{scope}{INTERACTIVE_SUFFIX}", title=page_title, layers=grid)
    return [*written, png]


def estimate_line(timing: PassTiming, scope: str, options: dict) -> str:
    """'Fisher: 40 backward passes over 3,400 tokens, about 12 min; --fisher-<option>
    <value> for a quick look': the cost of ``scope`` with its ``options`` from one
    measured pass (:meth:`~captum_jscopes.runs.explain.PassTiming.seconds`), and the
    scope's ``quick_look`` options as flags when they are cheaper and it is long."""
    passes = backward_passes(scope, timing.hidden_size, **options)
    seconds = timing.seconds(passes)
    per_token = f" x {timing.n_targets} target tokens" if timing.n_targets > 1 else ""
    what = f"{passes} backward pass{'' if passes == 1 else 'es'}{per_token} over {timing.n_tokens:,} tokens"
    line = f"{scope.title()}: {what}, about {_duration(seconds)}"
    quick = scope_class(scope).quick_look
    if quick and seconds >= QUICK_LOOK_SECONDS and backward_passes(scope, timing.hidden_size, **quick) < passes:
        flags = " ".join(f"{flag_of(scope, name)} {value}" for name, value in quick.items())
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
