"""The library functions behind the ``jscopes`` command: explain one prompt with
one or several scopes and write their files.

Every prompt goes through one code path, :func:`explain_scopes`: the prompt is
tokenised once, ONE forward pass (with its autograd graph) serves every
requested scope and gives the model's prediction, and each scope takes its
vector-Jacobian products from that graph through Captum's LLM wrapper
(:class:`~captum_jscopes.LLMScopeAttribution`) with the target's token ids, so a
one-token target, a multi-token target (teacher-forced, one row per token) and a
chat prompt are handled alike. :func:`explain` is the one-scope case. The
command line (:mod:`captum_jscopes.cli`) only parses its arguments and calls these.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from captum.attr import TextTokenInput

from captum_jscopes.core.captum_compat import prompt_token_ids
from captum_jscopes.core.continuation import check_next, continuation, is_fragment
from captum_jscopes.core.text import output_token_texts
from captum_jscopes.core.forward import module_device, prepare_inputs, run_forward
from captum_jscopes.display.interactive import save_interactive_html
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.provenance import model_name, versions
from captum_jscopes.integrations.captum import LLMScopeAttribution, chat_input
from captum_jscopes.runs.scope_settings import (  # re-exported: they were defined here
    PLAIN_TYPES,
    ScopeSetting,
    deprecated_names,
    find_setting,
    resolve_scope_settings,
    settings_of,
    value_types,
)
from captum_jscopes.scopes.registry import SCOPES, scope_class
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.core.tokens import InputError, encode_target, special_token_ids
from captum_jscopes.display.heatmap import save_heatmap
from captum_jscopes.display.html import save_html

__all__ = [
    "explain",
    "explain_scopes",
    "scope_options",
    "prompt_input",
    "target_hint",
    "write_result",
    "model_name",
    "check_prompt",
    "versions",
    "PassTiming",
    "measure_pass",
    "backward_passes",
    "ScopeSetting",
    "settings_of",
    "find_setting",
    "deprecated_names",
    "resolve_scope_settings",
    "value_types",
    "no_target_given",
    "next_token",
]

#: file name ending of the interactive page of a multi-token result
INTERACTIVE_SUFFIX = "_interactive.html"


def explain(
    model: Any,
    tokenizer: Any,
    prompt: str,
    scope: str,
    target: Optional[str] = None,
    *,
    chat: bool = False,
    keep_special: bool = False,
    progress: bool = False,
    settings: Optional[Mapping[str, Any]] = None,
    foil: Optional[str] = None,
    next: str = "token",
    generate: Optional[int] = None,
    **scope_settings: Any,
) -> "ScopeResult":
    """Explain the continuation of ``prompt`` with one scope.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer (not modified).
        prompt: the text; must not be empty.
        scope: a registered scope's name ("semantic", "temperature", "fisher", ...).
        target: the continuation to explain (e.g. " Paris"); several tokens are
            attributed one by one, teacher-forced. Default None: the model's top-1
            next token.
        chat: wrap ``prompt`` in the tokenizer's chat template and score only the
            user's tokens. Default False.
        keep_special: show and score special tokens (BOS, chat markers); with
            ``chat``, every token of the template too. Default False: they are
            left out of the result.
        progress: tqdm progress bars on stderr for the long parts (the tokens of a
            multi-token target; the Fisher probes where fisher.py shows them).
            Default False; ``jscopes attribute`` turns them on.
        settings, **scope_settings: the scope's options as settings
            ``<scope>_<option>`` (:func:`resolve_scope_settings`), e.g.
            ``fisher_k=4``, ``semantic_rules="lrp"``; a scope's deprecated option
            name (``<scope>_<old name>``) is accepted with a DeprecationWarning.
            Not given: the scope's defaults.
        foil: explain "target rather than foil" (e.g. ``" conservative"``; a
            scope that takes a target only): one row, at the first token where
            target (or the model's continuation) and foil differ, after the tokens
            they share (teacher-forced); see :meth:`LLMScopeAttribution.attribute`.
            Default None.
        next: without a target, what of the model's own greedy continuation is
            explained: ``"token"`` (default: the next token), ``"char"`` (on to the
            end of a character: no byte fragment) or ``"word"`` (on to the next
            space or punctuation, at most 8 tokens), as a multi-token target from
            one forward (:func:`captum_jscopes.core.continuation.continuation`).
            Ignored when a target is given.
        generate: without a target, explain the model's greedy continuation of
            this many tokens (then extended by ``next``). Default None: one token.
    Returns:
        ScopeResult with ``input_tokens`` (n,), ``output_tokens`` (m target tokens),
        ``token_attr`` (m, n), ``seq_attr`` (n,) = sum of the rows, ``output_probs``
        (m,) = p(target token k | prompt + earlier target tokens), and metadata:
        model, scope, prompt, target, no_target_given (True when ``target`` is
        None, so the prediction is explained; :func:`no_target_given` also
        reads files of earlier versions), prediction {token, id, prob}, target_hint
        (:func:`target_hint`), settings, versions; "next", "target_ids" (and
        "generate") when the continuation was extended or generated; "contrast"
        with a foil.
    """
    values = resolve_scope_settings({**(settings or {}), **scope_settings}, stacklevel=3)
    results = explain_scopes(model, tokenizer, prompt, (scope,), target, chat=chat, keep_special=keep_special,
                             settings=values, progress=progress, foil=foil, next=next, generate=generate)
    return builtins.next(results)  # ``next`` is the unit argument here


def scope_options(scope: str, settings: Mapping[str, Any]) -> dict:
    """The options of the scope named ``scope`` that ``settings`` holds, by the
    rule of the settings objects (:class:`~captum_jscopes.runs.dataset.DatasetSettings`,
    the CLI's flags): the setting ``<scope>_<option>`` is the scope's option
    ``<option>`` (``semantic_rules`` -> the Semantic Scope's ``rules``)."""
    cls = scope_class(scope)
    return {name: settings[f"{cls.name}_{name}"] for name in cls.option_names() if f"{cls.name}_{name}" in settings}


def explain_scopes(
    model: Any,
    tokenizer: Any,
    prompt: str,
    scopes: Sequence[str],
    target: Optional[str] = None,
    *,
    chat: bool = False,
    keep_special: bool = False,
    settings: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
    on_estimate: Optional[Callable[[str, "PassTiming", int], None]] = None,
    foil: Optional[str] = None,
    next: str = "token",
    generate: Optional[int] = None,
) -> Iterator["ScopeResult"]:
    """Explain the continuation of ``prompt`` with several scopes from ONE forward
    pass: the prompt is tokenised once, the forward over prompt + target (teacher
    forcing) gives the model's prediction and keeps its graph, and each scope takes
    its vector-Jacobian products from it. The scores equal one :func:`explain`
    call per scope. The forward is built under the scopes' ``rules``: scopes with
    other rules (``fisher_rules="lrp"`` next to gradient ones) get one forward per
    rules value, run when the first of them starts.

    Args:
        model, tokenizer, prompt, target, chat, keep_special, progress, foil, next,
            generate: as in :func:`explain`; the continuation ``next`` or ``generate``
            asks for is generated once (greedy, no graph) and explained by every scope.
        scopes: registered scope names, run in this order.
        settings: the scopes' options as settings, ``<scope>_<option>`` (e.g.
            ``{"fisher_k": 4, "semantic_rules": "lrp"}``; see
            :func:`scope_options`); other keys are ignored. Default: none.
        on_estimate: called as ``on_estimate(scope, timing, passes)`` before a
            scope that costs more than one backward pass per explained token
            starts, with the measured :class:`PassTiming` of this call (its forward,
            and one backward pass: the previous one-pass scope's, or one
            measured on the shared graph) and the scope's pass count. Default None.
    Yields:
        one :class:`ScopeResult` per scope as it is done (see :func:`explain`);
        ``metadata["seconds"]`` is the scope's own time, the shared forward not included.
    """
    classes = [scope_class(name) for name in scopes]
    if not classes:
        raise ValueError("no scope given")
    check_next(next)
    if generate is not None and target is not None:
        raise ValueError("give a target or a number of tokens to generate, not both")
    settings = resolve_scope_settings(settings or {}, strict=False, stacklevel=3)
    options = [scope_options(name, settings) for name in scopes]
    made = [cls.make_options(**opts) for cls, opts in zip(classes, options)]  # bad options: before any work
    last_use = {opts.rules: i for i, opts in enumerate(made)}  # a forward is dropped after its last scope
    foil_ids = None if foil is None else _foil_ids(tokenizer, foil, classes)
    inp = prompt_input(model, tokenizer, check_prompt(prompt), chat=chat, keep_special=keep_special)
    wrappers = [LLMScopeAttribution(cls(model, tokenizer, exclude_special_tokens=not keep_special), tokenizer)
                for cls in classes]
    target_ids = None if target is None else encode_target(tokenizer, target)
    extended = target is None and (next != "token" or generate is not None)
    prediction: Optional[dict] = None
    with preserved_state(model):
        if extended:  # the model's own continuation, made once for every scope
            prompt_ids = prompt_token_ids(wrappers[0], inp)
            target_ids = continuation(model, tokenizer, prompt_ids, next=next, min_tokens=generate or 1)
        if target_ids is None:  # the prediction is the target: the forward over the prompt alone gives it
            # (with a foil too: the contrast is then at the prompt's end, or the foil starts with the prediction)
            _, _, ids, positions = wrappers[0].model_inputs(inp, torch.zeros(1, dtype=torch.long))
        else:
            _, _, ids, positions = wrappers[0].model_inputs(inp, torch.tensor(target_ids), foil_ids)
            if foil_ids is not None and positions[0, 0] != prompt_token_ids(wrappers[0], inp).shape[1] - 1:
                # the contrast is explained after shared target tokens: the prediction needs the prompt's own forward
                prediction = next_token(model, tokenizer, prompt_token_ids(wrappers[0], inp))
        ids, mask = prepare_inputs(model, ids, None)  # checks vocabulary and context length
        forwards: dict[str, tuple[Any, float]] = {}  # rules -> (forward, its seconds)
        backward_seconds: Optional[float] = None
        n_explained = int(positions.shape[1])
        for i, (name, cls, wrapper, opts) in enumerate(zip(scopes, classes, wrappers, made)):
            if opts.rules not in forwards:
                began = time.perf_counter()
                forwards[opts.rules] = (run_forward(model, ids, mask, positions.to(ids.device), rules=opts.rules),
                                        time.perf_counter() - began)
            forward, forward_seconds = forwards[opts.rules]
            if prediction is None:
                prediction = _prediction(tokenizer, forward.logits[0, 0])
            if target_ids is None:
                target_ids = [prediction["id"]]
            passes = cls.backward_passes(opts, int(forward.hidden.shape[-1]))
            if on_estimate is not None and passes > 1:
                if backward_seconds is None:  # no one-pass scope ran yet: time one pass on the shared graph
                    start = time.perf_counter()
                    forward.vjp(forward.hidden.detach()[None])  # one pass per explained token
                    backward_seconds = (time.perf_counter() - start) / n_explained
                on_estimate(name, PassTiming(int(ids.shape[1]), n_explained, int(forward.hidden.shape[-1]),
                                             forward_seconds, backward_seconds), passes)
            start = time.perf_counter()
            explained = torch.tensor(target_ids) if foil_ids is None else (torch.tensor(target_ids),
                                                                          torch.tensor(foil_ids))
            result = wrapper.attribute(inp, target=explained, forward=forward, progress=progress, **options[i])
            seconds = time.perf_counter() - start
            if passes == 1 and backward_seconds is None:
                backward_seconds = seconds / n_explained
            if last_use[opts.rules] == i:
                del forwards[opts.rules]  # its graph is no longer needed
            # The wrapper already records the model, the settings (chat, keep_special,
            # the scope's options, dtype, device) and the versions; the prompt is replaced by
            # the text as given (the wrapper can only decode it back from the ids).
            result.metadata.update(
                target_hint=target_hint(tokenizer, target, target_ids, prediction),
                scope=name,
                prompt=prompt,
                no_target_given=target is None,
                prediction=prediction,
            )
            if extended:  # what was generated, and the ids (a byte fragment's text does not encode back to it)
                result.metadata.update(next=next, **({} if generate is None else {"generate": generate}),
                                       target_ids=list(target_ids))
            yield result


def _foil_ids(tokenizer: Any, foil: str, classes: Sequence[type]) -> list[int]:
    """The foil's ids; a ValueError when a scope takes no target (so no foil either)."""
    without = [cls.name for cls in classes if not cls.takes_target]
    if without:
        takers = [name for name, cls in SCOPES.items() if cls.takes_target]
        raise ValueError(f"a foil is for the scopes that take a target ({', '.join(takers)}); "
                         f"{', '.join(without)} take{'s' if len(without) == 1 else ''} none")
    return encode_target(tokenizer, foil)


def _prediction(tokenizer: Any, logits: torch.Tensor) -> dict:
    """``{"token", "id", "prob"}`` of the top token of one row of logits (V,); a
    token that is a byte fragment of a character has its bytes as its text
    (``"\\xe9"``), not U+FFFD, and ``"fragment": True``."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = int(probs.argmax())
    token = tokenizer.decode([top])
    if is_fragment(token):  # marked, so that a reader can be told how to see the whole character
        return {"token": output_token_texts([top], tokenizer)[0], "id": top, "prob": float(probs[top]),
                "fragment": True}
    return {"token": token, "id": top, "prob": float(probs[top])}


def next_token(model: Any, tokenizer: Any, prompt_ids: torch.Tensor) -> dict:
    """The model's prediction after ``prompt_ids`` (1, n), as ``metadata["prediction"]``
    holds it (``{"token", "id", "prob"}``), from one forward without a graph."""
    with preserved_state(model, grad=False), torch.no_grad():
        ids = prompt_ids.reshape(1, -1).to(module_device(model.get_input_embeddings()))
        return _prediction(tokenizer, model(input_ids=ids, use_cache=False).logits[0, -1])


def no_target_given(metadata: dict) -> Optional[bool]:
    """Whether a result explains the model's own prediction (no target was
    given): ``metadata["no_target_given"]``, or in files written by earlier
    versions the same flag under its old name ``target_is_prediction``; None
    when neither is there."""
    for key in ("no_target_given", "target_is_prediction"):
        if key in metadata:
            return bool(metadata[key])
    return None


def prompt_input(model: Any, tokenizer: Any, prompt: str, *, chat: bool = False, keep_special: bool = False) -> Any:
    """The prompt as a Captum input: a ``TextTokenInput`` whose special tokens are
    skipped (unless ``keep_special``), or with ``chat`` the chat-formatted prompt
    whose interpretable tokens are the user's message. Raises ValueError when no
    token is left to explain."""
    if chat:
        inp = chat_input(tokenizer, prompt, keep_special=keep_special)
    else:
        skip = None if keep_special else sorted(special_token_ids(tokenizer, getattr(model, "config", None)))
        inp = TextTokenInput(prompt, tokenizer, skip_tokens=skip or None)
    if inp.n_itp_features == 0:
        raise InputError("the prompt holds only special tokens; pass --keep-special to explain them")
    return inp


def target_hint(tokenizer: Any, target: Optional[str], target_ids: list[int], prediction: dict) -> Optional[str]:
    """A one-line hint when ``target`` lacks the leading space that would make it
    the model's prediction (``"Paris"`` against the predicted ``" Paris"``: two
    different tokens), else None."""
    if target is None or target[:1].isspace() or target_ids[0] == prediction["id"]:
        return None
    spaced = tokenizer.encode(" " + target, add_special_tokens=False)
    if not spaced or spaced[0] != prediction["id"]:
        return None
    return (
        f"the target {target!r} starts with a token other than the model's prediction {prediction['token']!r} "
        f"(p = {prediction['prob']:.3g}); did you mean {' ' + target!r}, with its leading space?"
    )


def write_result(result: "ScopeResult", out: Path, stem: str) -> list[Path]:
    """Write ``<out>/<stem>.png`` (heatmap of ``seq_attr``, the explained text in
    red), ``.html`` (self-contained) and ``.json`` (``result.save_json``), and for
    a target of several tokens ``<stem>_interactive.html``
    (:func:`captum_jscopes.display.interactive.save_interactive_html`: choose an output
    token to see its own map); return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{str(result.metadata.get('scope', '')).title()} Scope · {result.metadata.get('model', '')}"
    # save_heatmap draws the readable tokens, the target with its spaces and its
    # probability, and a caption saying the map sums over a multi-token target.
    png = save_heatmap(result, out / f"{stem}.png", title=title)
    written = [png, save_html(result, out / f"{stem}.html", title=title), result.save_json(out / f"{stem}.json", indent=1)]
    if len(result.output_tokens) > 1:  # one token: its map is the static page's already
        written.append(save_interactive_html(result, out / f"{stem}{INTERACTIVE_SUFFIX}", title=title))
    return written


def check_prompt(prompt: Any) -> str:
    """``prompt`` if it is a non-empty string, else a TypeError / ValueError."""
    if not isinstance(prompt, str):
        raise TypeError(f"the prompt must be a str, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty: give the text whose continuation to explain")
    return prompt


# ----------------------------------------------------------------------------- cost estimate

@dataclass(frozen=True)
class PassTiming:
    """One measured forward and backward pass over a prompt (and target), the
    unit the cost of every scope is counted in.

    Attributes:
        n_tokens: tokens of the forward (prompt + target tokens but the last).
        n_targets: explained tokens (target tokens; 1 for the prediction).
        hidden_size: width d of the final hidden state.
        forward_seconds: the forward pass, with its autograd graph.
        backward_seconds: ONE vector-Jacobian product through that graph.
        device_type: ``"cpu"``, ``"cuda"``, ...; None (default) is counted as a CPU.
    """

    n_tokens: int
    n_targets: int
    hidden_size: int
    forward_seconds: float
    backward_seconds: float
    device_type: Optional[str] = None

    #: backward passes a scope batches into one (the scopes' default ``chunk_size``)
    CHUNK_SIZE = 32
    #: on a CPU, the cost of one pass inside a batch of b passes over n tokens, as a multiple of a
    #: lone pass: 1 up to b * n**2 = BATCH_KNEE, then rising to BATCH_MAX_FACTOR at 4 * BATCH_KNEE
    #: (the batch's attention gradients, b x heads x n x n, no longer fit the caches). Measured on
    #: SmolLM2-135M, 1 thread: b = 32 costs 0.9x at 250 tokens, 0.7-0.9x at 500, 2.4x at 1000;
    #: b = 8 costs 1.0x at 250 and 1.2x at 1000 tokens.
    BATCH_KNEE = 8e6
    BATCH_MAX_FACTOR = 2.4

    def batch_factor(self, batch: int) -> float:
        """Cost of one backward pass inside a batch of ``batch`` passes, relative to
        the single measured pass: 1 on an accelerator or for small ``batch x n_tokens**2``,
        up to :attr:`BATCH_MAX_FACTOR` on a CPU for long prompts."""
        if batch <= 1 or (self.device_type not in (None, "cpu")):
            return 1.0
        excess = (batch * self.n_tokens**2 - self.BATCH_KNEE) / (3 * self.BATCH_KNEE)
        return min(self.BATCH_MAX_FACTOR, 1.0 + max(0.0, excess) * (self.BATCH_MAX_FACTOR - 1.0))

    def seconds(self, n_backward: int, chunk_size: int = CHUNK_SIZE) -> float:
        """Estimated wall time of a scope that runs one forward and ``n_backward``
        backward passes per explained token, batched ``chunk_size`` at a time.

        A batch of passes is priced at its size times the single measured pass
        times :meth:`batch_factor`: on a CPU a batch costs about as much as its
        passes one by one on short prompts, and up to 2.4 times as much on long
        ones (SmolLM2, 1,000 tokens, the default Fisher estimator's 40 passes:
        319 s measured against 172 s for 40 lone passes). Building the Fisher
        matrix (V·d² per explained token) is left out: it is small next to the
        backward passes on the long prompts where an estimate matters."""
        total = max(0, n_backward) * self.n_targets
        chunk = max(1, chunk_size)
        full, rest = divmod(total, chunk)
        passes = full * chunk * self.batch_factor(chunk) + rest * self.batch_factor(rest)
        return self.forward_seconds + passes * self.backward_seconds


def measure_pass(
    model: Any,
    tokenizer: Any,
    prompt: str,
    target: Optional[str] = None,
    *,
    chat: bool = False,
    keep_special: bool = False,
) -> PassTiming:
    """Time one forward and one backward pass on the input :func:`explain` would
    build (same prompt, chat template and target), as the basis of a cost
    estimate. Costs about one Semantic Scope call; the model is not changed."""
    inp = prompt_input(model, tokenizer, check_prompt(prompt), chat=chat, keep_special=keep_special)
    ids = inp.to_model_input()
    target_ids = [] if target is None else encode_target(tokenizer, target)
    if len(target_ids) > 1:  # teacher forcing: the last target token is never an input
        ids = torch.cat([ids, torch.tensor([target_ids[:-1]], dtype=ids.dtype)], dim=1)
    ids, mask = prepare_inputs(model, ids, None)
    positions = torch.tensor([[ids.shape[1] - 1]], device=ids.device)
    with preserved_state(model):
        began = time.perf_counter()
        forward = run_forward(model, ids, mask, positions)
        measured = time.perf_counter()
        forward.vjp(forward.hidden.detach()[None])
        done = time.perf_counter()
    return PassTiming(
        n_tokens=int(ids.shape[1]),
        n_targets=max(1, len(target_ids)),
        hidden_size=int(forward.hidden.shape[-1]),
        forward_seconds=measured - began,
        backward_seconds=done - measured,
    )


def backward_passes(scope: str, hidden_size: int, **options: Any) -> int:
    """Backward passes per explained token of the scope named ``scope`` with
    these options (the scope says: 1 for Semantic and Temperature; the Fisher
    Scope's estimator's count, 40 by default)."""
    cls = scope_class(scope)
    return cls.backward_passes(cls.make_options(**options), hidden_size)
