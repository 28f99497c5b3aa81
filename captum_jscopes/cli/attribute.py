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
from typing import Any, Optional, Sequence

import torch

from captum_jscopes.cli._common import (
    add_command,
    add_model_flags,
    load_model_from_args,
    note,
    output_folder,
    print_files,
    run_info_line,
    short,
    shown,
    target_line,
)
from captum_jscopes.cli.flags import add_dataclass_flags, values_from_args
from captum_jscopes.cli.scope_flags import add_scope_flags, flag_of, scope_settings_from_args
from captum_jscopes.core.tokens import InputError, encode_target
from captum_jscopes.core.text import Span
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
from captum_jscopes.results.spans import aggregate, aggregation_rule
from captum_jscopes.scopes.registry import SCOPES, scope_class

NAME = "attribute"
HELP = "explain the next token of a prompt (PNG, HTML, JSON)"
DESCRIPTION = (
    "Explain the model's next-token prediction after PROMPT (or --target) with Jacobian "
    "Scopes. Writes <out>/<scope>.png, .html and .json for each scope."
)
#: the settings of one explain() call that are also a dataset's (same flags)
SETTINGS = ("chat", "keep_special", "next")
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
    p.add_argument(
        "--foil",
        metavar="TEXT",
        help="explain the target (or the model's continuation) rather than TEXT, e.g. ' conservative': the "
        "contrastive scope (w_target - w_foil), at the first token where the two differ; for the scopes that "
        "take a target (with --scope all, only those run)",
    )
    p.add_argument(
        "--generate",
        type=_tokens,
        metavar="N",
        help="explain the model's own greedy continuation of N tokens, one map per token (and an interactive "
        "page per scope); with --next char/word it is extended to a whole character or word",
    )
    p.add_argument("--scope", choices=(*SCOPES, "all"), default="all", help="which scope(s) to run (default: all)")
    p.add_argument(
        "--compare",
        metavar="M1,M2",
        help="also draw these methods of the benchmark table (e.g. grad_x_input,attnlrp,semantic+lrp+input; "
        "'all': its default baselines; a wrong name lists them) next to the scopes in <out>/compare.png and "
        ".html, each row on its own colour scale. --scope all alone writes the comparison of the scopes",
    )
    p.add_argument(
        "--words",
        action="store_true",
        help="also print and draw the word view (result.words(): scores per word, the scope's rule), "
        "<out>/<scope>_words.png, .html and .json; the comparison then shows words too",
    )
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


def _tokens(text: str) -> int:
    """``--generate``'s N: a whole number >= 1 (else argparse's usage error)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 of tokens, got {text!r}")
    return int(text)


def run(args: argparse.Namespace, forwarded: list[str]) -> int:
    """Explain ``args.prompt`` with the chosen scopes; print each scope's top tokens and files."""
    prompt = check_prompt(args.prompt)
    if args.target == "":
        raise ValueError("--target is empty; leave it out to explain the model's own prediction")
    if args.foil == "":
        raise ValueError("--foil is empty: give the text to contrast the target with (e.g. ' conservative')")
    settings = DatasetSettings(**values_from_args(args, DatasetSettings, only=SETTINGS, note=note),
                               scope_settings=scope_settings_from_args(args, note=note))
    if args.target is not None and (args.generate is not None or settings.next != "token"):
        raise ValueError(f"{'--generate' if args.generate is not None else '--next'} explains the model's own "
                         "continuation; leave out --target")
    scopes = tuple(SCOPES) if args.scope == "all" else (args.scope,)
    if args.foil is not None and args.scope != "all" and not scope_class(args.scope).takes_target:
        # a usage error, before the model loads
        raise InputError(f"--foil: {args.scope} takes no target, so no foil; use --scope semantic (or all)")
    if args.foil is not None and args.scope == "all":
        left_out = [name for name in scopes if not scope_class(name).takes_target]
        scopes = tuple(name for name in scopes if scope_class(name).takes_target)
        if left_out:
            note(f"--foil: {', '.join(left_out)} take{'s' if len(left_out) == 1 else ''} no target and "
                 f"{'is' if len(left_out) == 1 else 'are'} left out")
    methods = _compare_methods(args.compare)  # bad names: before the model loads
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
                             on_estimate=estimate, foil=args.foil, next=settings.next, generate=args.generate)
    done: dict[str, ScopeResult] = {}
    for i, (scope, result) in enumerate(zip(scopes, results)):
        if i == 0:
            _print_header(result)
        written = write_result(result, out, scope)
        target_ids = explained_ids(tokenizer, result, args.target)
        foil_ids = None if args.foil is None else encode_target(tokenizer, args.foil)
        if getattr(args, "layers", False):
            # after the scope's own files, from a forward of its own: the normal path stays as without --layers
            written = write_layers(model, tokenizer, result, scope, target_ids, scope_options(scope, values), out,
                                   keep_special=settings.keep_special, written=written, foil_ids=foil_ids)
        # each scope's summary and files as soon as it is done: the Fisher Scope can take minutes
        _print_scope(result, written)
        if args.words:
            words = result.words()
            _print_scope(words, write_result(words, out, f"{scope}{WORDS_SUFFIX}"), unit="words")
        done[scope] = result
    if len(done) > 1 or methods:
        first = next(iter(done.values()))
        rows = compare_rows(model, tokenizer, done, methods, target_ids, foil_ids, words=args.words)
        written = write_compare(first, rows, out, words=args.words)
        print(f"\ncompared: {', '.join(row.label for row in rows)} (each row on its own colour scale)")
        print_files(written)
    return 0


#: file name ending of a scope's word view (``--words``)
WORDS_SUFFIX = "_words"
#: file name (without suffix) of the comparison of several maps
COMPARE_STEM = "compare"


def explained_ids(tokenizer: Any, result: ScopeResult, target: Optional[str] = None) -> list[int]:
    """The ids of everything a result of :func:`~captum_jscopes.runs.explain.explain_scopes`
    teacher-forces and explains: the generated continuation (``metadata["target_ids"]``),
    the given ``target``'s, or the predicted token's."""
    if "target_ids" in result.metadata:
        return [int(i) for i in result.metadata["target_ids"]]
    if target is not None:
        return encode_target(tokenizer, target)
    return [int(result.metadata["prediction"]["id"])]


def _compare_methods(text: Optional[str]) -> list:
    """The benchmark table's methods ``--compare`` names (none without it); a
    ValueError lists the names. The table is imported here: the library's core
    never loads a benchmark module."""
    if text is None:
        return []
    from captum_jscopes.bench.methods import DEFAULT_METHODS, METHODS, parse_methods

    baselines = tuple(name for name in DEFAULT_METHODS if not METHODS[name].is_scope)  # "all"
    return [METHODS[name] for name in parse_methods(text, default=baselines)]


def compare_rows(model: Any, tokenizer: Any, results: dict, methods: Sequence, target_ids: Sequence[int],
                 foil_ids: Optional[Sequence[int]] = None, *, words: bool = False) -> list:
    """The rows of the comparison: each scope's summed map (``seq_attr``), then each
    benchmark method's, over the same tokens (the word view's words with ``words``).
    A method that cannot run here (AttnLRP without LXT, an architecture it lacks)
    is left out with a note."""
    from captum_jscopes.display.compare import CompareRow

    first = next(iter(results.values()))
    view = first.words() if words else None
    rows = []
    for scope, result in results.items():
        shown = result.words() if words else result
        rule = shown.metadata["view"]["rule"] if words else ""
        rows.append(CompareRow(scope, shown.seq_attr, f"per word: {rule}" if words else ""))
    for method in methods:
        try:
            scores = method_map(model, tokenizer, first, method, target_ids, foil_ids).sum(0)
        except ImportError as err:
            note(f"--compare: {method.name} left out: {err}")
            continue
        note_text = "the target alone, no foil" if foil_ids is not None and method.kind != "scope" else ""
        if words:
            rule = _method_rule(method)
            scores = aggregate(scores, [Span("", tuple(p)) for p in view.metadata["view"]["positions"]], rule)
            note_text = ", ".join(t for t in (note_text, f"per word: {rule}") if t)
        # the table's "fisher" (its pinned estimator) is not the run's Fisher Scope: told apart
        label = f"{method.name} (table)" if method.name in results else method.name
        rows.append(CompareRow(label, scores, note_text))
    return rows



def _method_rule(method: Any) -> str:
    """How a benchmark method's token scores add up to a word's: the scope's rule
    (its options), the L2 rule for Captum's gradient norms, else the sum."""
    if method.kind == "scope":
        return aggregation_rule(method.scope, dict(method.options))
    norms = ("input_x_gradient", "saliency", "integrated_gradients")
    return "l2" if method.kind == "captum" and method.options.get("algorithm") in norms else "sum"


def method_map(model: Any, tokenizer: Any, result: ScopeResult, method: Any, target_ids: Sequence[int],
               foil_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(P, n) the map of a benchmark method (:class:`~captum_jscopes.bench.methods.BenchMethod`)
    for each token the result explains (the same teacher-forced inputs, the same
    columns: the prompt's scored tokens). A Jacobian Scope of the table with a
    foil explains the contrast, like the result; a baseline explains the target
    token's logit alone."""
    if result.inp is None:
        raise ValueError("the result holds no Captum input (inp); a result read back from JSON has none")
    wrapper = LLMScopeAttribution(scope_class("semantic")(model, tokenizer), tokenizer)
    prompt, targets, ids, positions = wrapper.model_inputs(result.inp, torch.as_tensor(list(target_ids)), foil_ids)
    itp_mask = getattr(result.inp, "itp_mask", None)
    rows = []
    for k, position in enumerate(positions[0].tolist()):
        pair = targets[k].tolist() if targets.dim() == 2 else [int(targets[k])]
        if method.kind == "scope" and len(pair) == 2:
            scope = scope_class(method.scope)(model, tokenizer)
            scores = scope.attribute(ids[:, : position + 1], target=tuple(pair), **dict(method.options))[0]
        else:
            scores = method.scores(model, tokenizer, ids[:, : position + 1], pair[0], prompt_id="compare")
        scores = scores.detach().float().cpu()[: prompt.shape[1]]
        rows.append(scores if itp_mask is None else scores[itp_mask[0].bool()])
    return torch.stack(rows)


def write_compare(result: ScopeResult, rows: Sequence, out: Path, *, words: bool = False) -> list[Path]:
    """Write ``<out>/compare.png`` and ``compare.html``
    (:func:`captum_jscopes.display.compare.save_compare`): the rows over the
    result's tokens (its words with ``words``)."""
    from captum_jscopes.display.compare import save_compare

    shown = result.words() if words else result
    meta = result.metadata
    contrast = meta.get("contrast")
    n = len(result.output_tokens)
    what = f"summed over the {n} target tokens" if n > 1 else "of the target token"
    caption = (f"each method's map {what}{', per word (l2: root of the sum of squares)' if words else ''}; "
               "each row on its own colour scale, stated on its right")
    if contrast:
        caption += f"; scopes: rather than {contrast['foil_token']!r}"
    title = f"Maps compared · {meta.get('model', '')}"
    return save_compare(shown.input_display, rows, Path(out) / COMPARE_STEM, title=title, caption=caption,
                        target=meta.get("target"))


def result_layer_maps(model: Any, tokenizer: Any, result: ScopeResult, scope: str, target_ids: Sequence[int],
                      options: dict, *, keep_special: bool = False,
                      foil_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
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
        foil_ids: the foil's ids, for a contrastive result. Default None.
    """
    if result.inp is None:
        raise ValueError("the result holds no Captum input (inp); a result read back from JSON has none")
    instance = scope_class(scope)(model, tokenizer, exclude_special_tokens=not keep_special)
    prompt, targets, ids, positions = LLMScopeAttribution(instance, tokenizer).model_inputs(
        result.inp, torch.as_tensor(list(target_ids)), foil_ids)
    output = instance.scope_output(ids, positions, targets[None] if instance.takes_target else None, layers=True,
                                   **options)
    grid = output.scores[0, :, :, : prompt.shape[1]]  # (P, L + 1, prompt): the target's own tokens are no inputs
    itp_mask = getattr(result.inp, "itp_mask", None)
    if itp_mask is not None:
        grid = grid[..., itp_mask[0].to(grid.device).bool()]
    return grid.detach().cpu()


def write_layers(model: Any, tokenizer: Any, result: ScopeResult, scope: str, target_ids: Sequence[int],
                 options: dict, out: Path, *, keep_special: bool = False, written: Sequence[Path] = (),
                 foil_ids: Optional[Sequence[int]] = None) -> list[Path]:
    """Write ``<out>/<scope>_layers.png`` (the layer x token heatmap of the map
    summed over the target tokens, or of the single target;
    :func:`captum_jscopes.display.layers.plot_layer_map`) and, for a multi-token
    target, rewrite ``<out>/<scope>_interactive.html`` with its layer view. Returns
    ``written`` with the PNG added (the page's path is already there)."""
    from captum_jscopes.analysis.layers import LayerMap
    from captum_jscopes.display.interactive import save_interactive_html
    from captum_jscopes.display.layers import display_labels, save_layer_map

    grid = result_layer_maps(model, tokenizer, result, scope, target_ids, options, keep_special=keep_special,
                             foil_ids=foil_ids)
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
    m = grid.shape[0]
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
    n = len(result.output_tokens)
    contrast = first.get("contrast")
    if "next" in first:  # the model's continuation, extended to a character or word, or generated
        print(f"prediction: {target_line(result)}, {_continuation_words(first)}: {n} token{'s' if n > 1 else ''}, "
              "greedy")
    else:
        print(f"prediction: {prediction['token']!r} (p = {prediction['prob']:.3g})")
        if prediction.get("fragment") and no_target_given(first):
            note("the next token is a byte fragment of a character, not text; --next char or --next word "
                 "explains the whole character or word")
    if not no_target_given(first):
        print(f"target:     {target_line(result)}" + (f", {n} tokens, teacher-forced" if n > 1 else ""))
    if contrast:
        after = f", after {contrast['after']!r}" if contrast["after"] else ""
        print(f"contrast:   {contrast['target_token']!r} rather than {contrast['foil_token']!r} "
              f"(p = {float(result.output_probs[0]):.3g} against {contrast['foil_prob']:.3g}{after})")
    if first.get("target_hint"):
        print(f"hint: {first['target_hint']}", file=sys.stderr)


def _continuation_words(metadata: dict) -> str:
    """'the next word', '5 generated tokens, then to the end of a character', ..."""
    unit = {"token": "token", "char": "character", "word": "word"}[metadata["next"]]
    if not metadata.get("generate"):
        return f"the next {unit}"
    text = f"{metadata['generate']} generated token{'s' if metadata['generate'] > 1 else ''}"
    return text if unit == "token" else f"{text}, then to the end of a {unit}"


def _print_scope(result: ScopeResult, written: list[Path], unit: str = "tokens") -> None:
    n = len(result.output_tokens)
    summed = f", summed over the {n} target tokens" if n > 1 else ""
    print(f"\n{result.metadata['scope']}: top {TOP_K} {unit} by influence{summed}")
    for rank, (index, token, score) in enumerate(result.top_tokens(TOP_K), start=1):
        what = "word" if unit == "words" else "token"
        print(f"  {rank}. {shown(token)!r:<20} ({what} {index:>3})  {score:.4g}")
    reached = run_info_line(result)  # an estimate's error and passes (--fisher-tol)
    if reached:
        print(reached)
    print_files(written)
    for path in written:
        if path.name.endswith(INTERACTIVE_SUFFIX):
            print(f"  (open {path.name} and choose a target token to see its own map, or their sum)")
    sys.stdout.flush()  # shown before the next scope starts, also when stdout is a pipe
