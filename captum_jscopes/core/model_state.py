"""Checks that a model is a causal LM we can explain, what its forward takes, and
a guard that leaves the caller's model exactly as it was (train/eval flags,
requires_grad) after a scope ran on it, also when the scope raised."""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Optional

import torch
from torch import nn


def check_causal_lm(model: nn.Module) -> None:
    """Raise a TypeError unless ``model`` is a Hugging Face causal LM with an
    output-embedding (unembedding) module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is None:
        raise TypeError(
            f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None): "
            "Jacobian Scopes need a causal LM with a language-modelling head, e.g. "
            "AutoModelForCausalLM rather than AutoModel"
        )
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise TypeError(f"{type(model).__name__} is an encoder-decoder model; only causal (decoder-only) LMs are supported")
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise TypeError(
            f"{type(model).__name__} is not a causal LM (it cannot generate); "
            "load the model with AutoModelForCausalLM"
        )
    if not callable(getattr(model, "get_input_embeddings", None)) or model.get_input_embeddings() is None:
        raise TypeError(f"{type(model).__name__} has no input embeddings (get_input_embeddings() is None)")


def accepts(model: nn.Module, argument: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``argument``."""
    return argument in inspect.signature(model.forward).parameters


def cache_argument(model: nn.Module) -> Optional[str]:
    """The keyword (and output field) of ``model``'s key/value cache, or None for a
    model without one: transformers 5 names it ``cache`` (``past_key_values`` is
    deprecated there), earlier versions ``past_key_values``."""
    for name in ("cache", "past_key_values"):
        if accepts(model, name):
            return name
    return None


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, grad: bool = True) -> Iterator[None]:
    """Run the body with the model in eval mode, its parameters frozen and
    autograd enabled (``grad=True``, the scopes) or disabled (``grad=False``, the
    metrics' forward-only ablations), then restore every module's ``training``
    flag and every parameter's ``requires_grad``.

    Eval mode because dropout would make attributions random; frozen parameters
    because the scopes differentiate w.r.t. the input embeddings only, and a graph
    that also tracks weights costs memory for nothing. Parameters, ``.grad`` and
    hooks are never touched here (the scopes use ``torch.autograd.grad`` with
    explicit inputs and remove their own hooks).
    """
    training = {name: module.training for name, module in model.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad() if grad else torch.no_grad():
            yield
    finally:
        for name, module in model.named_modules():
            module.training = training[name]
        for name, p in model.named_parameters(remove_duplicate=False):
            p.requires_grad_(requires_grad[name])
