"""The library functions behind the ``jscopes`` command: explain one prompt with
one scope and write its files.

Every scope goes through one code path, :func:`explain`: Captum's LLM wrapper
(:class:`~captum_jscopes.LLMScopeAttribution`) with the target's token ids, so a
one-token target, a multi-token target (teacher-forced, one row per token) and
a chat prompt are handled alike. The command line (:mod:`captum_jscopes.cli.main`)
only parses its arguments and calls these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from captum.attr import TextTokenInput

from captum_jscopes.core.forward import prepare_inputs, run_forward
from captum_jscopes.display.interactive import save_interactive_html
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.provenance import model_name, package_version, versions
from captum_jscopes.integrations.captum import LLMScopeAttribution, chat_input
from captum_jscopes.scopes.registry import DEFAULT_FISHER_METHOD, FISHER_METHODS, scope_class
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.core.tokens import encode_target, special_token_ids
from captum_jscopes.display.visualize import save_heatmap, save_html

__all__ = [
    "explain",
    "prompt_input",
    "predict_next",
    "target_hint",
    "write_result",
    "model_name",
    "check_prompt",
    "versions",
    "PassTiming",
    "measure_pass",
    "backward_passes",
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
    fisher_method: str = DEFAULT_FISHER_METHOD,
    progress: bool = False,
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
        fisher_method: Fisher Scope estimator: "hutchinson" (default), "deflated",
            "exact" or "eig".
        progress: tqdm progress bars on stderr for the long parts (the tokens of a
            multi-token target; the Fisher probes where fisher.py shows them).
            Default False; ``jscopes attribute`` turns them on.
    Returns:
        ScopeResult with ``input_tokens`` (n,), ``output_tokens`` (m target tokens),
        ``token_attr`` (m, n), ``seq_attr`` (n,) = sum of the rows, ``output_probs``
        (m,) = p(target token k | prompt + earlier target tokens), and metadata:
        model, scope, prompt, target, prediction {token, id, prob}, target_hint
        (:func:`target_hint`), settings, versions.
    """
    scope_cls = scope_class(scope)
    if fisher_method not in FISHER_METHODS:
        raise ValueError(f"fisher_method must be one of {FISHER_METHODS}, got {fisher_method!r}")
    inp = prompt_input(model, tokenizer, check_prompt(prompt), chat=chat, keep_special=keep_special)
    prediction = predict_next(model, tokenizer, inp.to_model_input())
    target_ids = [prediction["id"]] if target is None else encode_target(tokenizer, target)
    options = {"method": fisher_method} if scope == "fisher" else {}
    attribution = LLMScopeAttribution(scope_cls(model, tokenizer, exclude_special_tokens=not keep_special), tokenizer)
    result = attribution.attribute(inp, target=torch.tensor(target_ids), progress=progress, **options)
    # The wrapper already records the model, the settings (chat, keep_special,
    # fisher_method, dtype, device) and the versions; the prompt is replaced by
    # the text as given (the wrapper can only decode it back from the ids).
    result.metadata.update(
        target_hint=target_hint(tokenizer, target, target_ids, prediction),
        scope=scope,
        prompt=prompt,
        target_is_prediction=target is None,
        prediction=prediction,
    )
    return result


def prompt_input(model: Any, tokenizer: Any, prompt: str, *, chat: bool = False, keep_special: bool = False) -> Any:
    """The prompt as a Captum input: a ``TextTokenInput`` whose special tokens are
    skipped (unless ``keep_special``), or with ``chat`` the chat-formatted prompt
    whose interpretable tokens are the user's message. Raises ValueError when no
    token is left to explain."""
    if chat:
        inp = chat_input(tokenizer, prompt, keep_template=keep_special)
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


def predict_next(model: Any, tokenizer: Any, input_ids: Any) -> dict:
    """The model's top-1 next token after ``input_ids`` (1, n):
    ``{"token": decoded text, "id": int, "prob": float}``."""
    ids, _ = prepare_inputs(model, input_ids, None)  # checks vocabulary and context length
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    top = int(probs.argmax())
    return {"token": tokenizer.decode([top]), "id": top, "prob": float(probs[top])}


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

#: Backward passes per explained token of the Fisher estimators that do not
#: depend on the hidden width: the default estimators spend 40 (16 exact
#: eigen-directions + 24 samples, or a budget of 40), "eig" keeps 1; "exact"
#: spends one per hidden dimension (see :func:`backward_passes`).
FISHER_PASSES = {"eig": 1}
DEFAULT_FISHER_PASSES = 40


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
    """

    n_tokens: int
    n_targets: int
    hidden_size: int
    forward_seconds: float
    backward_seconds: float

    def seconds(self, n_backward: int) -> float:
        """Estimated wall time of a scope that runs one forward and ``n_backward``
        backward passes per explained token. Scopes batch their backward passes
        (vmap); on a CPU a batch costs about as much as its passes one by one, so
        the single measured pass times the count is a fair, slightly high,
        estimate. Building the Fisher matrix (V·d² per explained token) is left
        out: it is small next to the backward passes on the long prompts where
        an estimate matters."""
        return self.forward_seconds + n_backward * self.n_targets * self.backward_seconds


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


def backward_passes(scope: str, fisher_method: str, hidden_size: int) -> int:
    """Backward passes per explained token of a scope: 1 for the Semantic and
    Temperature Scopes; for the Fisher Scope 40 by default, 1 for "eig", and the
    hidden width for "exact" (and for any estimator on a model narrower than its budget)."""
    if scope != "fisher":
        return 1
    if fisher_method == "exact":
        return hidden_size
    # a budget at or above the width is spent as the exact estimator: d passes
    return min(hidden_size, FISHER_PASSES.get(fisher_method, DEFAULT_FISHER_PASSES))
