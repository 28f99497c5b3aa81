"""AttnLRP's propagation rules as a modified backward pass (``rules="lrp"``).

Layer-wise relevance propagation for transformers (AttnLRP, Achtibat et al., ICML
2024) can be written in gradient x input form: the relevance of an input is the
input times a *modified* gradient, where each operation whose plain gradient
does not follow an LRP rule gets a different backward pass. For the decoder
blocks of Hugging Face causal LMs the rules are (paper, Eqs. 7-9 and section 3):

- **normalisation** (RMSNorm, LayerNorm): the identity rule. The normaliser
  ``1 / sqrt(var + eps)`` is held constant in the backward pass, so the layer is
  linear in its input (LayerNorm keeps its centring, which is linear).
- **element-wise non-linearities** (SiLU, GELU): the identity rule. The gradient of
  ``f`` at ``x`` is ``f(x) / x``, so the relevance passes through unchanged.
- **multiplicative interactions**: the uniform rule. The gate product of a gated
  MLP (``act(gate) * up``) passes half its relevance to each factor; attention's
  bilinear products (``q k^T`` and ``softmax(.) v``) split theirs the same way,
  which in gradient x input form halves the gradient reaching ``v`` once and the
  gradients reaching ``q`` and ``k`` twice (a quarter).
- **softmax** and every linear map (projections, residual sums, rotary position
  embeddings): the plain gradient, which is already their LRP rule in this form.

:func:`lrp_rules` installs these as forward hooks on the modules of ONE model for
the body of a ``with`` block: each hook keeps the module's output value exactly and
only changes what the backward pass sees, ``out.detach() + L(x - x.detach())`` with
``L`` the rule's linear map. The hooks are removed on exit, also after an
exception; no class, function or registry of transformers is changed, so other
models of the process are unaffected. A graph built inside the block keeps the
rules for every vector-Jacobian product taken from it afterwards.

Written from the paper; the rules and their constants (``eps = 1e-10`` in the
identity rule of activations) follow LXT's efficient mode, the authors' reference
implementation, so that ``SemanticScope(..., rules="lrp", reduce="input")`` equals
LXT's relevance of the target logit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["SUPPORTED_MODEL_TYPES", "lrp_rules", "check_supported"]

#: the identity rule's stabiliser of ``f(x) / x`` (as in the authors' implementation)
IDENTITY_EPS = 1e-10


@dataclass(frozen=True)
class _Family:
    """Where the rules act in one family of decoder blocks.

    Attributes:
        norm_offset: the RMSNorm's effective weight is ``offset + weight`` (Gemma: 1).
        gated: the MLP is gated (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``);
            else GPT-2's (``c_fc``, ``act``, ``c_proj``).
        fused_qkv: one projection ``c_attn`` makes q, k and v (GPT-2); else
            ``q_proj``, ``k_proj``, ``v_proj``.
    """

    norm_offset: float = 0.0
    gated: bool = True
    fused_qkv: bool = False


_LLAMA = _Family()
#: ``config.model_type`` -> its family: the architectures AttnLRP's reference covers
#: (Llama, Qwen2, Qwen3, Gemma-3, GPT-2) and Mistral, a Llama block under another name.
_FAMILIES = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma3": _Family(norm_offset=1.0),
    "gemma3_text": _Family(norm_offset=1.0),
    "gpt2": _Family(gated=False, fused_qkv=True),
}
SUPPORTED_MODEL_TYPES = tuple(_FAMILIES)


def check_supported(model: nn.Module) -> _Family:
    """The model's family; a one-line ValueError naming the supported architectures."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILIES:
        raise ValueError(
            f"rules='lrp' is not written for {type(model).__name__} (model_type {model_type!r}); "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}; use rules='gradient'"
        )
    return _FAMILIES[model_type]


# ---------------------------------------------------------------------- the rules
def _linearised(out: Tensor, x: Tensor, linear: Callable[[Tensor], Tensor]) -> Tensor:
    """``out`` in value, ``linear(dx)`` in the backward pass: the output of a module
    whose rule replaces its Jacobian by the linear map ``linear``."""
    return out.detach() + linear(x - x.detach()).to(out.dtype)


def _rms_norm(offset: float) -> Callable:
    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = args[0]
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        wide = x.detach().float()
        scale = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
        weight = (offset + module.weight.detach().float())
        return _linearised(out, x, lambda dx: dx.float() * scale * weight)

    return hook


def _layer_norm(module: nn.LayerNorm, args: tuple, out: Tensor) -> Tensor:
    x = args[0]
    wide = x.detach()
    std = (wide.var(-1, unbiased=False, keepdim=True) + module.eps).sqrt()
    weight = 1.0 if module.weight is None else module.weight.detach()
    return _linearised(out, x, lambda dx: (dx - dx.mean(-1, keepdim=True)) / std * weight)


def _identity_rule(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    x = args[0]
    ratio = out.detach() / (x.detach() + IDENTITY_EPS)
    return _linearised(out, x, lambda dx: dx * ratio)


def _scaled_gradient(x: Tensor, scale) -> Tensor:
    """``x`` in value; the backward multiplies the gradient by ``scale`` (a number, or
    a tensor over the last dimension). Plain tensor operations, not an
    ``autograd.Function``: batched backward passes (vmap) go through them."""
    if isinstance(scale, Tensor):
        scale = scale.to(x.device, x.dtype)
    return x.detach() + (x - x.detach()) * scale


def _scale_output(scale) -> Callable:
    def hook(_module: nn.Module, _args: tuple, out: Tensor) -> Tensor:
        return _scaled_gradient(out, scale)

    return hook


def _halve_input(_module: nn.Module, args: tuple) -> tuple:
    return (_scaled_gradient(args[0], 0.5), *args[1:])


# ---------------------------------------------------------------------- installing them
def _hooks(model: nn.Module, family: _Family) -> list[tuple[nn.Module, str, Callable]]:
    """(module, "forward" or "pre", hook) for every place a rule acts."""
    found: list[tuple[nn.Module, str, Callable]] = []
    rms = _rms_norm(family.norm_offset)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            found.append((module, "forward", _layer_norm))
        elif type(module).__name__.endswith("RMSNorm"):
            found.append((module, "forward", rms))
        elif family.gated and all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            found.append((module.act_fn, "forward", _identity_rule))
            found.append((module.down_proj, "pre", _halve_input))  # the gate product: the uniform rule
        elif not family.gated and all(hasattr(module, a) for a in ("c_fc", "c_proj", "act")):
            found.append((module.act, "forward", _identity_rule))
        elif family.fused_qkv and hasattr(module, "c_attn") and hasattr(module, "split_size"):
            split = module.split_size
            scale = torch.tensor([0.25] * split + [0.25] * split + [0.5] * split)
            found.append((module.c_attn, "forward", _scale_output(scale)))
        elif not family.fused_qkv and all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj")):
            # q and k meet twice in a product (q k^T, then softmax(.) v), v once. The rules
            # between the projection and the product (q/k norms, rotary embeddings) are
            # linear, so the factor can act at the projection's output.
            found.append((module.q_proj, "forward", _scale_output(0.25)))
            found.append((module.k_proj, "forward", _scale_output(0.25)))
            found.append((module.v_proj, "forward", _scale_output(0.5)))
    kinds = {hook for _, _, hook in found}
    missing = [name for name, present in (
        ("normalisation", rms in kinds or _layer_norm in kinds),
        ("activation", _identity_rule in kinds),
        ("attention", any(h not in (rms, _layer_norm, _identity_rule, _halve_input) for h in kinds)),
    ) if not present]
    if missing:
        raise ValueError(f"rules='lrp' found no {', '.join(missing)} module in {type(model).__name__}; "
                         "its blocks are not laid out as transformers' own")
    return found


@contextmanager
def lrp_rules(model: nn.Module) -> Iterator[None]:
    """Run the body's forward passes of ``model`` under AttnLRP's rules (see the
    module docstring): the values are unchanged, the graph built carries the
    rules' backward. The hooks are removed on exit, also after an exception.

    Raises:
        ValueError: the model's architecture is not one of :data:`SUPPORTED_MODEL_TYPES`.
    """
    family = check_supported(model)
    handles = []
    try:
        for module, kind, hook in _hooks(model, family):
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
