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

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from captum.attr import TextTokenInput

from captum_jscopes.core.forward import prepare_inputs, run_forward
from captum_jscopes.display.interactive import save_interactive_html
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.provenance import model_name, versions
from captum_jscopes.integrations.captum import LLMScopeAttribution, chat_input
from captum_jscopes.fisher.estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from captum_jscopes.scopes.registry import scope_class
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.core.tokens import encode_target, special_token_ids
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
    "FISHER_ESTIMATORS",
    "DEFAULT_FISHER_ESTIMATOR",
    "fisher_estimator_argument",
    "no_target_given",
]

#: The Fisher Scope's estimator names and the default, as the runs and the
#: command line offer them (:data:`captum_jscopes.fisher.estimators.ESTIMATORS`).
FISHER_ESTIMATORS: tuple[str, ...] = tuple(ESTIMATORS)
DEFAULT_FISHER_ESTIMATOR: str = DEFAULT_ESTIMATOR


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
    fisher_estimator: str = DEFAULT_FISHER_ESTIMATOR,
    progress: bool = False,
    fisher_method: Optional[str] = None,
) -> "ScopeResult":
    """Explain the continuation of ``prompt`` with one scope.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer (not modified).
        prompt: the text; must not be empty.
        scope: "semantic", "temperature" or "fisher".
        target: the continuation to explain (e.g. " Paris"); several tokens are
            attributed one by one, teacher-forced. Default None: the model's top-1
            next token.
        chat: wrap ``prompt`` in the tokenizer's chat template and score only the
            user's tokens. Default False.
        keep_special: show and score special tokens (BOS, chat markers); with
            ``chat``, every token of the template too. Default False: they are
            left out of the result.
        fisher_estimator: Fisher Scope estimator, one of :data:`FISHER_ESTIMATORS`
            ("krylov" (default), "hutchinson", "deflated", "exact", "eig").
        progress: tqdm progress bars on stderr for the long parts (the tokens of a
            multi-token target; the Fisher probes where fisher.py shows them).
            Default False; ``jscopes attribute`` turns them on.
        fisher_method: the former name of ``fisher_estimator``; still accepted,
            with a DeprecationWarning.
    Returns:
        ScopeResult with ``input_tokens`` (n,), ``output_tokens`` (m target tokens),
        ``token_attr`` (m, n), ``seq_attr`` (n,) = sum of the rows, ``output_probs``
        (m,) = p(target token k | prompt + earlier target tokens), and metadata:
        model, scope, prompt, target, no_target_given (True when ``target`` is
        None, so the prediction is explained; :func:`no_target_given` also
        reads files of earlier versions), prediction {token, id, prob}, target_hint
        (:func:`target_hint`), settings, versions.
    """
    fisher_estimator = fisher_estimator_argument(fisher_estimator, fisher_method)
    results = explain_scopes(model, tokenizer, prompt, (scope,), target, chat=chat, keep_special=keep_special,
                             settings={"fisher_estimator": fisher_estimator}, progress=progress)
    return next(results)


def scope_options(scope: str, settings: Mapping[str, Any]) -> dict:
    """The options of the scope named ``scope`` that ``settings`` holds, by the
    rule of the settings objects (:class:`~captum_jscopes.runs.dataset.DatasetSettings`,
    the CLI's flags): the setting ``<scope>_<option>`` is the scope's option
    ``<option>`` (``fisher_estimator`` -> the Fisher Scope's ``estimator``)."""
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
) -> Iterator["ScopeResult"]:
    """Explain the continuation of ``prompt`` with several scopes from ONE forward
    pass: the prompt is tokenised once, the forward over prompt + target (teacher
    forcing) gives the model's prediction and keeps its graph, and each scope takes
    its vector-Jacobian products from it. The scores equal one :func:`explain`
    call per scope.

    Args:
        model, tokenizer, prompt, target, chat, keep_special, progress: as in :func:`explain`.
        scopes: registered scope names, run in this order.
        settings: the scopes' options as settings, ``<scope>_<option>`` (e.g.
            ``{"fisher_estimator": "eig"}``; see :func:`scope_options`). Default: none.
        on_estimate: called as ``on_estimate(scope, timing, passes)`` before a
            scope that costs more than one backward pass per explained token
            starts, with the measured :class:`PassTiming` of this call (the shared
            forward, and one backward pass: the previous one-pass scope's, or one
            measured on the shared graph) and the scope's pass count. Default None.
    Yields:
        one :class:`ScopeResult` per scope as it is done (see :func:`explain`);
        ``metadata["seconds"]`` is the scope's own time, the shared forward not included.
    """
    classes = [scope_class(name) for name in scopes]
    if not classes:
        raise ValueError("no scope given")
    settings = dict(settings or {})
    inp = prompt_input(model, tokenizer, check_prompt(prompt), chat=chat, keep_special=keep_special)
    wrappers = [LLMScopeAttribution(cls(model, tokenizer, exclude_special_tokens=not keep_special), tokenizer)
                for cls in classes]
    target_ids = None if target is None else encode_target(tokenizer, target)
    with preserved_state(model):
        began = time.perf_counter()
        if target_ids is None:  # the prediction is the target: the forward over the prompt alone gives it
            _, _, ids, positions = wrappers[0].model_inputs(inp, torch.zeros(1, dtype=torch.long))
        else:
            _, _, ids, positions = wrappers[0].model_inputs(inp, torch.tensor(target_ids))
        ids, mask = prepare_inputs(model, ids, None)  # checks vocabulary and context length
        forward = run_forward(model, ids, mask, positions.to(ids.device))
        forward_seconds = time.perf_counter() - began
        probs = torch.softmax(forward.logits[0, 0].float(), dim=-1)
        top = int(probs.argmax())
        prediction = {"token": tokenizer.decode([top]), "id": top, "prob": float(probs[top])}
        target_ids = [top] if target_ids is None else target_ids
        backward_seconds: Optional[float] = None
        for name, cls, wrapper in zip(scopes, classes, wrappers):
            options = scope_options(name, settings)
            passes = cls.backward_passes(cls.make_options(**options), int(forward.hidden.shape[-1]))
            if on_estimate is not None and passes > 1:
                if backward_seconds is None:  # no one-pass scope ran yet: time one pass on the shared graph
                    start = time.perf_counter()
                    forward.vjp(forward.hidden.detach()[None])  # one pass per explained token
                    backward_seconds = (time.perf_counter() - start) / len(target_ids)
                on_estimate(name, PassTiming(int(ids.shape[1]), len(target_ids), int(forward.hidden.shape[-1]),
                                             forward_seconds, backward_seconds), passes)
            start = time.perf_counter()
            result = wrapper.attribute(inp, target=torch.tensor(target_ids), forward=forward, progress=progress,
                                       **options)
            seconds = time.perf_counter() - start
            if passes == 1 and backward_seconds is None:
                backward_seconds = seconds / len(target_ids)
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
            yield result


def fisher_estimator_argument(
    fisher_estimator: str = DEFAULT_FISHER_ESTIMATOR, fisher_method: Optional[str] = None, *, stacklevel: int = 3
) -> str:
    """The Fisher estimator of a call that takes ``fisher_estimator`` and the
    deprecated ``fisher_method`` keyword (a DeprecationWarning when the latter is
    given; a TypeError when both are, with different values); a ValueError names
    the known estimators."""
    if fisher_method is not None:
        if fisher_estimator not in (DEFAULT_FISHER_ESTIMATOR, fisher_method):
            raise TypeError(f"give fisher_estimator ({fisher_estimator!r}) or fisher_method ({fisher_method!r}), not both")
        warnings.warn(
            "fisher_method= is deprecated; use fisher_estimator=", DeprecationWarning, stacklevel=stacklevel
        )
        fisher_estimator = fisher_method
    if fisher_estimator not in FISHER_ESTIMATORS:
        raise ValueError(f"fisher_estimator must be one of {', '.join(FISHER_ESTIMATORS)}, got {fisher_estimator!r}")
    return fisher_estimator


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
        raise ValueError("the prompt holds only special tokens; pass --keep-special to explain them")
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

    #: backward passes a scope batches into one (``FisherScope``'s default ``chunk_size``)
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
