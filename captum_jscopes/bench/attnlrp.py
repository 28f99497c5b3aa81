"""AttnLRP (LXT, efficient mode) as a benchmark method.

AttnLRP (Achtibat et al., ICML 2024) is layer-wise relevance propagation with
rules for attention, norms and gated MLPs. LXT's *efficient* mode implements it
as gradient x input: ``lxt.efficient.monkey_patch(modeling_module)`` replaces,
in the transformers modelling module and in a few classes, the functions whose
gradient must follow an LRP rule (RMSNorm: variance detached; gated MLP: identity
rule on the activation, relevance halved at the gate product; attention: q, k
halved twice and v once), and ``embeds * d logit / d embeds`` is then the
relevance of every input-embedding dimension. One forward and one backward pass.

LXT needs its main branch (commit f043441, "tested with transformers==5.9.0"):
the PyPI release 2.1 does not work with transformers 5, and LXT's *explicit*
mode imports ``transformers.utils.fx``, which transformers 5 removed, so only
the efficient mode is used here.

``monkey_patch`` changes process-wide state: class attributes (``LlamaMLP.forward``,
``LlamaRMSNorm.forward``, ``Gemma3MLP.forward``, ``Gemma3RMSNorm._norm``, and
torch's own ``nn.Dropout.forward``), the modelling module's
``eager_attention_forward`` and every entry of ``ALL_ATTENTION_FUNCTIONS`` (one
registry shared by EVERY transformers model: its instance's local mapping).
:func:`lxt_patched` snapshots all of that and restores it when the body ends,
also after an exception, so that no other model of the process (nor a later
call of a scope on the same model) runs with LRP gradients. While the body runs
the patch is global: do not run another model in another thread meanwhile.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from types import ModuleType
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from captum_jscopes.core.model_state import accepts, preserved_state

__all__ = ["INSTALL", "REDUCTIONS", "attnlrp_relevance", "attnlrp_scores", "lxt_patched", "modeling_module"]

#: How to install the LXT this module needs.
INSTALL = 'pip install "lxt @ git+https://github.com/rachtibat/LRP-eXplains-Transformers@f043441"'
_MISSING = (
    "AttnLRP needs LXT's main branch: {install} (the PyPI lxt 2.1 does not work with transformers 5); "
    "importing it failed: {error}"
)

#: ``reduction`` of :func:`attnlrp_scores`: per-token score from the (n, e) relevance.
REDUCTIONS = ("abs", "positive", "l2")


def _lxt() -> tuple[Any, Any]:
    """``(monkey_patch, get_default_map)`` of ``lxt.efficient``; a one-line
    ImportError with the install command when LXT is missing or broken."""
    try:
        with warnings.catch_warnings():
            # lxt.efficient's import warns that zennit (for vision transformers) is missing: not needed here
            warnings.filterwarnings("ignore", message=".*zennit.*", category=UserWarning)
            from lxt.efficient.core import monkey_patch
            from lxt.efficient.models import get_default_map
    except Exception as error:  # a PyPI lxt on transformers 5 fails with AttributeError/ImportError alike
        message = _MISSING.format(install=INSTALL, error=f"{type(error).__name__}: {error}".splitlines()[0])
        raise ImportError(message) from error
    return monkey_patch, get_default_map


def modeling_module(model: nn.Module) -> ModuleType:
    """The transformers modelling module that defines ``model``'s class (e.g.
    ``transformers.models.llama.modeling_llama``): what LXT's ``monkey_patch`` patches."""
    return sys.modules[type(model).__module__]


# ---------------------------------------------------------------------- patch and restore
def _mappings(module: ModuleType) -> dict[int, tuple[dict, dict]]:
    """id -> (dict, a copy of it) for every mapping held by a non-dunder global of
    ``module``: plain dicts, and for ``ALL_ATTENTION_FUNCTIONS`` (a transformers
    ``GeneralInterface``, where LXT's ``registry[key] = wrapped`` lands) both its
    instance's ``_local_mapping`` and its class-wide ``_global_mapping``."""
    found: dict[int, tuple[dict, dict]] = {}
    for name, value in vars(module).items():
        if name.startswith("__") or isinstance(value, type):
            continue
        candidates = [value] if type(value) is dict else [
            getattr(value, "_local_mapping", None), getattr(type(value), "_global_mapping", None)]
        for mapping in candidates:
            if isinstance(mapping, dict):
                found[id(mapping)] = (mapping, dict(mapping))
    return found


def _restore_namespace(target: Any, saved: Mapping[str, Any]) -> None:
    """Set ``target``'s own attributes (its ``__dict__``) back to ``saved``: delete
    the added ones, put back the replaced or deleted ones (compared with ``is``)."""
    current = dict(vars(target))
    for name in current.keys() - saved.keys():
        delattr(target, name)
    for name, value in saved.items():
        if name not in current or current[name] is not value:
            setattr(target, name, value)


def _restore_mapping(mapping: dict, saved: dict) -> None:
    if mapping.keys() != saved.keys() or any(mapping[k] is not v for k, v in saved.items()):
        mapping.clear()
        mapping.update(saved)


@contextlib.contextmanager
def lxt_patched(module: ModuleType, patch_map: Optional[Mapping[Any, Any]] = None) -> Iterator[None]:
    """Apply LXT's efficient AttnLRP patch to a transformers modelling module for
    the body only.

    Snapshots, before patching, the own attributes (``__dict__``) of every target
    of the patch map (classes such as ``LlamaMLP`` and ``torch.nn.Dropout``, and
    modules such as ``modeling_llama``) and the contents of every mapping global of
    the patched modules (``ALL_ATTENTION_FUNCTIONS``' local and class-wide mappings);
    restores them exactly (the same objects) on exit, also when the patch itself
    or the body raised.

    Args:
        module: e.g. ``transformers.models.llama.modeling_llama``.
        patch_map: LXT's map target -> patch function; default None: LXT's
            AttnLRP map for ``module`` (``lxt.efficient.models.get_default_map``).
    Raises:
        ImportError: LXT is not installed (the message gives :data:`INSTALL`).
        ValueError: LXT has no AttnLRP map for ``module`` (LXT's message lists the supported ones).
    """
    monkey_patch, get_default_map = _lxt()
    if patch_map is None:
        patch_map = get_default_map(module)
    targets = list(dict.fromkeys([*patch_map, module]))
    namespaces = [(target, dict(vars(target))) for target in targets]
    mappings: dict[int, tuple[dict, dict]] = {}
    for target in targets:
        if isinstance(target, ModuleType):
            mappings.update(_mappings(target))
    try:
        monkey_patch(module, patch_map)
        yield
    finally:
        for target, saved in namespaces:
            _restore_namespace(target, saved)
        for mapping, saved in mappings.values():
            _restore_mapping(mapping, saved)


# ---------------------------------------------------------------------- relevance
def attnlrp_relevance(model: nn.Module, input_ids: Tensor, target: int) -> tuple[Tensor, float]:
    """AttnLRP relevance of every input-embedding dimension for the logit of
    ``target`` after the last token.

    Args:
        model: a Hugging Face causal LM whose modelling module LXT supports
            (Llama, Gemma-3, Qwen2/3, GPT-2 ...); left exactly as it was.
        input_ids: (1, n) token ids.
        target: vocabulary id whose logit at the last position is explained.
    Returns:
        ``(relevance, logit)``: relevance (n, e) float32 CPU, the input embeddings
        (the output of ``model.get_input_embeddings()``, scaled for Gemma) times
        the LRP-modified gradient of the logit; logit, the explained logit (the
        relevance LRP starts from: the sum of the relevance approximates it, less
        what the softmax rule's bias term absorbs).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be (1, n), got {tuple(input_ids.shape)}")
    embedding = model.get_input_embeddings()
    ids = input_ids.to(embedding.weight.device)
    kwargs: dict[str, Any] = {"use_cache": False}
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # the vocabulary projection of the last column only
    with preserved_state(model), lxt_patched(modeling_module(model)):
        with torch.no_grad():
            embeds = embedding(ids)
        embeds.requires_grad_()
        logit = model(inputs_embeds=embeds, **kwargs).logits[0, -1, target]
        # autograd.grad, not backward: parameters' .grad stay untouched (they are frozen anyway)
        (grad,) = torch.autograd.grad(logit, embeds)
    relevance = (embeds.detach().float() * grad.float())[0]
    return relevance.cpu(), float(logit.detach().float())


def attnlrp_scores(model: nn.Module, tokenizer: Any, input_ids: Tensor, target: int, *,
                   reduction: str = "abs") -> Tensor:
    """(n,) float CPU non-negative AttnLRP score per token of ``input_ids`` (1, n)
    for the logit of ``target`` after the last token (LXT efficient mode).

    Reduction (default ``"abs"``): the token's relevance is the SUM of its
    per-dimension relevance (what LXT reports and what the conservation property
    is about: the token relevances add up to the logit, less the softmax bias
    terms); the benchmark needs a non-negative "how much this token matters", so
    the default takes its absolute value, like the other baselines' unsigned
    scores (the L2 norm of gradient x input, the gradient norms of the scopes):

    - ``"abs"``: ``|sum_e R|``, the magnitude of the token's LRP relevance. Chosen:
      it keeps the relevance LRP actually assigns (the sum), and ranks tokens by how
      much they move the logit in either direction, which is what the benchmark's
      deletion (any large change of log p(y*) counts against a prediction resting on
      the token) and leave-one-out (a KL, unsigned) measure for every method.
    - ``"positive"``: ``max(sum_e R, 0)``, LXT's own "most relevant first" order
      (evidence FOR the target); tokens with negative relevance all tie at 0 and
      fall back to position order, and strong counter-evidence ranks last.
    - ``"l2"``: ``||R||_2`` over the embedding dimension, the reduction the
      benchmark applies to gradient x input; it discards LRP's per-token
      decomposition (signed dimensions cancel in the sum, not in the norm).

    Args:
        model, input_ids, target: see :func:`attnlrp_relevance`.
        tokenizer: unused (the benchmark's method signature).
        reduction: one of :data:`REDUCTIONS`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
    relevance, _ = attnlrp_relevance(model, input_ids, target)
    if reduction == "l2":
        return relevance.norm(dim=-1)
    total = relevance.sum(-1)
    return total.abs() if reduction == "abs" else total.clamp(min=0.0)
