"""The library functions behind the ``jscopes`` command: explain one prompt with
one scope and write its files.

Every scope goes through one code path, :func:`explain`: Captum's LLM wrapper
(:class:`~captum_jscopes.LLMScopeAttribution`) with the target's token ids, so a
one-token target, a multi-token target (teacher-forced, one row per token) and
a chat prompt are handled alike. The command line (:mod:`captum_jscopes.cli`)
only parses its arguments and calls these.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import captum
import torch
import transformers
from captum.attr import TextTokenInput

from .forward import module_device, prepare_inputs
from .llm_attribution import LLMScopeAttribution, chat_input
from .models import describe_model
from .registry import FISHER_METHODS, scope_class
from .result import ScopeResult
from .tokens import encode_target, special_token_ids
from .visualize import PNG_DPI, plot_token_heatmap, save_html

__all__ = ["explain", "prompt_input", "predict_next", "target_hint", "write_result", "model_name", "check_prompt", "versions"]


def explain(
    model: Any,
    tokenizer: Any,
    prompt: str,
    scope: str,
    target: Optional[str] = None,
    *,
    chat: bool = False,
    keep_special: bool = False,
    fisher_method: str = "deflated",
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
        fisher_method: Fisher Scope estimator, "deflated" (default), "exact" or "eig".
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
    result = attribution.attribute(inp, target=torch.tensor(target_ids), **options)
    result.metadata.update(
        target_hint=target_hint(tokenizer, target, target_ids, prediction),
        model=model_name(model),
        scope=scope,
        prompt=prompt,
        target=tokenizer.decode(target_ids),
        target_is_prediction=target is None,
        prediction=prediction,
        settings={
            "chat": chat,
            "keep_special": keep_special,
            **({"fisher_method": fisher_method} if scope == "fisher" else {}),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(module_device(model.get_input_embeddings())),
        },
        versions=versions(),
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
    red), ``.html`` (self-contained) and ``.json`` (``result.save_json``); return
    the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{str(result.metadata.get('scope', '')).title()} Scope · {result.metadata.get('model', '')}"
    # The decoded target keeps its spaces (' New York'); Captum's output_tokens
    # drop them ('New', 'York'), which would read 'NewYork' in red.
    target = result.metadata.get("target") or "".join(result.output_tokens)
    figure = plot_token_heatmap(result.input_tokens, result.seq_attr, target=target, title=title)
    png = out / f"{stem}.png"
    figure.savefig(png, dpi=PNG_DPI, format="png", facecolor="white")
    return [png, save_html(result, out / f"{stem}.html", title=title), result.save_json(out / f"{stem}.json", indent=1)]


def model_name(model: Any) -> str:
    """The short model name used in reports (``describe_model``)."""
    return describe_model(model)


def check_prompt(prompt: Any) -> str:
    """``prompt`` if it is a non-empty string, else a TypeError / ValueError."""
    if not isinstance(prompt, str):
        raise TypeError(f"the prompt must be a str, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty: give the text whose continuation to explain")
    return prompt


def versions() -> dict:
    """Versions of this package and of the libraries its numbers depend on."""
    return {
        "captum_jscopes": package_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum.__version__,
    }


def package_version() -> str:
    """The installed version of captum_jscopes ("unknown" in an uninstalled source tree)."""
    try:
        return version("captum_jscopes")
    except PackageNotFoundError:
        return "unknown"
