"""The one forward pass every scope shares.

A Jacobian Scope scores input token t by ``||v^T J_t||`` (or a sum of such
squares), where ``J_t = dy/dx_t`` is the Jacobian of the final hidden state ``y``
(the input of the model's output-embedding module) w.r.t. the token embedding
``x_t`` (the output of the model's own embedding lookup). This module runs that
forward once, keeps the graph, and answers vector-Jacobian products for any
directions ``v`` the scopes choose. Scopes differ only in their directions.

Shapes used throughout: ``B`` prompts, ``n`` tokens, ``e`` embedding width,
``P`` explained positions per prompt, ``d`` hidden width, ``V`` vocabulary,
``m`` directions (probes).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from captum_jscopes.core.lrp import lrp_rules
from captum_jscopes.core.model_state import accepts
from captum_jscopes.core.tokens import InputError

_BATCHED_VJP_WORKS: dict[type, bool] = {}

#: how the backward pass runs: ``"gradient"`` (the plain Jacobian) or ``"lrp"`` (AttnLRP's
#: rules, :mod:`captum_jscopes.core.lrp`)
RULES = ("gradient", "lrp")
#: how a token's VJP ``g_t`` (e,) becomes its score: ``"norm"`` (``||g_t||``, what a
#: perturbation of the token in any direction moves) or ``"input"`` (``g_t . x_t``, the
#: first-order effect of removing the token's embedding)
REDUCTIONS = ("norm", "input")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a one-line ValueError."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def module_device(module: nn.Module) -> torch.device:
    """Where a module computes: accelerate's execution device for dispatched or
    offloaded modules, else the device of its first parameter."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def head_weight(head: nn.Module) -> Tensor:
    """The unembedding matrix ``W`` (V, d), detached, also when accelerate has
    offloaded it (then the parameter lives on the meta device and the real tensor
    in the hook's weights map)."""
    weight = head.weight
    if weight.device.type == "meta":
        weights_map = getattr(getattr(head, "_hf_hook", None), "weights_map", None)
        if weights_map is None:
            raise RuntimeError("the output-embedding weight is on the meta device and no offload map holds it")
        weight = weights_map["weight"].to(module_device(head))
    return weight.detach()


def context_length(model: nn.Module) -> Optional[int]:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prepare_inputs(model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Validate ``input_ids`` (n,) or (B, n) and the mask; return both as (B, n)
    on the device of the model's input embeddings."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a torch.LongTensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (seq,) or (batch, seq), got {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise InputError("empty prompt: input_ids holds no tokens")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    else:
        if attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1")
        empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"empty prompt: rows {empty} of attention_mask have no tokens")
    embedding = model.get_input_embeddings()
    vocab = getattr(embedding, "num_embeddings", None)
    if vocab is not None and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"input_ids hold unknown token ids outside [0, {vocab}): min {int(input_ids.min())}, max {int(input_ids.max())}")
    limit = context_length(model)
    if limit is not None and input_ids.shape[1] > limit:
        raise InputError(f"prompt of {input_ids.shape[1]} tokens is longer than the model's context of {limit} tokens")
    device = module_device(embedding)
    return input_ids.to(device), attention_mask.to(device, torch.long)


def resolve_positions(position: int | Tensor, attention_mask: Tensor) -> Tensor:
    """Absolute column index (B,) of the explained token in each row.

    ``position`` counts real (unpadded) tokens of each row, Python style: 0 is the
    first real token, -1 the last. An int applies to every row; a tensor gives one
    position per row. This makes a padded batch behave like single prompts.
    """
    lengths = attention_mask.sum(-1)
    batch = attention_mask.shape[0]
    pos = torch.as_tensor(position, device=attention_mask.device).long().flatten()
    if pos.numel() == 1:
        pos = pos.expand(batch)
    if pos.numel() != batch:
        raise ValueError(f"position must be an int or hold one index per row ({batch}), got {pos.numel()}")
    if bool(((pos >= lengths) | (pos < -lengths)).any()):
        raise ValueError(f"position {pos.tolist()} is out of range for prompts of {lengths.tolist()} tokens")
    pos = torch.where(pos < 0, pos + lengths, pos)
    # rank of each column among the row's real tokens; the wanted column has rank == pos
    rank = attention_mask.cumsum(-1) - 1
    hit = (rank == pos[:, None]) & (attention_mask == 1)
    return hit.float().argmax(-1)


@dataclass
class ScopeForward:
    """A forward pass kept alive for vector-Jacobian products.

    Attributes:
        embeddings: (B, n, e) leaf tensor the scores differentiate against: the
            output of the model's embedding lookup (with any scaling the lookup
            module applies, e.g. Gemma's sqrt(d)).
        hidden: (B, P, d) final hidden state ``y`` at the explained positions, where
            the output-embedding module consumes it (after the final norm).
        logits: (B, P, V) the model's logits at those positions, detached, float32
            (float64 for a float64 model).
        head_slope: (B, P, V) derivative of the model's logits w.r.t. the output of
            the unembedding, for heads that post-process it elementwise (Gemma-2's
            soft-capping, a logit scale); None for a linear head.
        weight: (V, d) unembedding matrix, detached.
        positions: (B, P) absolute index of each explained token.
        attention_mask: (B, n).
        layer_states: the residual stream after each decoder layer, (B, n, d)
            each, when the forward was run with ``layers=True`` (see
            :func:`decoder_layers`); then :meth:`squared_norms` also scores every
            token at every layer. None otherwise.
        rerun: the model again from given input embeddings (K, n, e), K a
            multiple of B (prompt ``i % B`` of the batch), to the final hidden
            state at the explained positions (K, P, d), without a graph; what
            :meth:`jvp` differences. None when the forward cannot be rerun.
        rules: ``"gradient"`` or ``"lrp"``: the backward pass the graph was built
            with (:data:`RULES`).
        reduce: ``"norm"`` or ``"input"``: what :meth:`token_vectors` keeps of each
            token's VJP (:data:`REDUCTIONS`); a scope sets it on its view of a shared
            forward (``dataclasses.replace``).
    """

    embeddings: Tensor
    hidden: Tensor
    logits: Tensor
    head_slope: Optional[Tensor]
    weight: Tensor
    positions: Tensor
    attention_mask: Tensor
    layer_states: Optional[list[Tensor]] = None
    rerun: Optional[Callable[[Tensor], Tensor]] = field(default=None, repr=False)
    rules: str = "gradient"
    reduce: str = "norm"
    #: largest batch of backward passes that fit in memory (None: not limited yet)
    _batch_limit: Optional[int] = field(default=None, repr=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        """float32, or float64 for a float64 model: the precision of softmax, F and scores."""
        return self.logits.dtype

    def probs(self) -> Tensor:
        """(B, P, V) next-token distribution."""
        return torch.softmax(self.logits, dim=-1)

    def head_rows(self, token_ids: Tensor) -> Tensor:
        """Rows of the head's Jacobian ``dz_c/dy`` for token ids (B, P): returns
        (B, P, d) in the compute dtype. For a linear head this is ``w_c``."""
        rows = self.weight[token_ids.to(self.weight.device)].to(self.compute_dtype)
        if self.head_slope is not None:
            rows = rows * self.head_slope.gather(-1, token_ids.unsqueeze(-1).to(self.head_slope.device))
        return rows.to(self.hidden.device)

    def vjp(self, directions: Tensor) -> Tensor:
        """Vector-Jacobian products ``v^T J_t`` for every token t.

        Args:
            directions: (m, B, P, d); direction ``directions[i, b, p]`` is applied at
                explained position p of prompt b.
        Returns:
            (m, B, P, n, e) gradients w.r.t. the input embeddings.
        """
        m, batch, n_pos, _ = directions.shape
        directions = directions.to(self.hidden.device, self.hidden.dtype)
        # one backward per (probe, position): the direction sits at its position, zeros elsewhere
        eye = torch.eye(n_pos, dtype=directions.dtype, device=directions.device)
        grad_outputs = torch.einsum("mbpd,pq->mpbqd", directions, eye).reshape(m * n_pos, batch, n_pos, -1)
        grads = self._batched_grad(grad_outputs)
        return grads.view(m, n_pos, batch, *grads.shape[-2:]).transpose(1, 2)

    def jvp(self, tangents: Tensor, chunk_size: int = 32, step: float = 1e-3) -> Tensor:
        """Jacobian-vector products ``J v = sum_t J_t v_t`` of the final hidden state
        at the explained positions, by a forward difference: one forward pass per
        tangent, no graph, the model's own attention kernels (forward-mode AD is not
        implemented for every fused kernel, e.g. PyTorch's CPU flash attention).
        Accurate to about ``step`` relative; for sketches (which directions carry
        the Jacobian), not for scores.

        Args:
            tangents: (m, B, n, e) one tangent per input embedding, per prompt; or
                (m, B, n, 1), coefficients of each token's own embedding (the space of
                ``reduce="input"``'s token vectors): the tangent ``c_t x_t``.
            chunk_size: forward passes batched together. Default 32.
            step: the perturbation's norm relative to the embeddings'. Default 1e-3.
        Returns:
            (m, B, P, d) in the compute dtype.
        """
        if self.rerun is None:
            raise RuntimeError("this forward pass cannot be rerun (it was not made by run_forward)")
        m, batch = tangents.shape[:2]
        base = self.embeddings.detach()
        tangents = tangents.to(base.device, self.compute_dtype)
        if tangents.shape[-1] == 1 and base.shape[-1] != 1:
            tangents = tangents * base.to(self.compute_dtype)
        # one step per (tangent, prompt), scaled to the prompt's embeddings so float32 keeps the difference
        scale = step * base.to(self.compute_dtype).flatten(1).norm(dim=1) / tangents.flatten(2).norm(dim=2).clamp_min(1e-30)
        shifted = (base[None].to(self.compute_dtype) + scale[..., None, None] * tangents).to(base.dtype)
        centre = self.hidden.detach().to(self.compute_dtype)
        per_chunk = max(1, chunk_size // batch)
        out = []
        for chunk, steps in zip(shifted.split(per_chunk), scale.split(per_chunk)):
            moved = self.rerun(chunk.flatten(0, 1)).to(self.compute_dtype).view(chunk.shape[0], batch, *centre.shape[1:])
            out.append((moved - centre[None]) / steps[..., None, None])
        return torch.cat(out)

    def token_vectors(self, grads: Tensor, inputs: Optional[Tensor] = None) -> Tensor:
        """What each token's score is the squared norm of: its VJP ``g_t`` (..., n, e)
        itself (``reduce="norm"``) or ``g_t . x_t`` as (..., n, 1) (``"input"``), with
        ``x`` the input embeddings (B, n, e) or the given ``inputs`` (a layer's states).
        Squared norms and dot products of these vectors are what every scope and
        estimator computes, so one place decides the reduction."""
        if self.reduce == "norm":
            return grads
        inputs = (self.embeddings if inputs is None else inputs).detach()
        # (B, n, e) against (..., B, P, n, e): the prompt's inputs at every explained position
        return (grads * inputs[:, None].to(grads.dtype)).sum(-1, keepdim=True)

    def squared_norms(self, directions: Tensor, chunk_size: int = 32) -> Tensor:
        """Per-token squared L2 norm of :meth:`token_vectors` of ``v^T J_t``
        (``||v^T J_t||^2``, or ``(v^T J_t x_t)^2`` with ``reduce="input"``),
        computed in chunks of ``chunk_size`` backward passes so memory stays bounded.

        Args:
            directions: (m, B, P, d).
        Returns:
            (m, B, P, n) in the compute dtype; with :attr:`layer_states`,
            (m, B, P, L + 1, n): row 0 the input embeddings, row l the residual
            stream after decoder layer l, all from the same backward passes.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n_pos = directions.shape[2]
        per_chunk = max(1, chunk_size // n_pos)
        if self.layer_states is None:
            out = [
                self.token_vectors(self.vjp(chunk)).to(self.compute_dtype).pow(2).sum(-1)
                for chunk in directions.split(per_chunk, dim=0)
            ]
        else:
            inputs = [self.embeddings, *self.layer_states]
            out = [
                torch.stack([self.token_vectors(g, x).to(self.compute_dtype).pow(2).sum(-1)
                             for g, x in zip(self._vjp_all(chunk), inputs)], dim=3)
                for chunk in directions.split(per_chunk, dim=0)
            ]
        return torch.cat(out, dim=0)

    def _vjp_all(self, directions: Tensor) -> list[Tensor]:
        """:meth:`vjp` w.r.t. the embeddings and every layer state: a list of L + 1
        (m, B, P, n, width) gradients from the same backward passes."""
        m, batch, n_pos, _ = directions.shape
        directions = directions.to(self.hidden.device, self.hidden.dtype)
        eye = torch.eye(n_pos, dtype=directions.dtype, device=directions.device)
        grad_outputs = torch.einsum("mbpd,pq->mpbqd", directions, eye).reshape(m * n_pos, batch, n_pos, -1)
        inputs = [self.embeddings, *self.layer_states]
        if m * n_pos > 1 and _BATCHED_VJP_WORKS.get(type(self.hidden.grad_fn), True):
            grads = torch.autograd.grad(self.hidden, inputs, grad_outputs, retain_graph=True, is_grads_batched=True,
                                        allow_unused=True)
        else:
            per_pass = [torch.autograd.grad(self.hidden, inputs, g, retain_graph=True, allow_unused=True)
                        for g in grad_outputs]
            grads = [torch.stack(parts) for parts in zip(*per_pass)] if per_pass else []
        out = []
        for g, x in zip(grads, inputs):
            # a layer the explained positions do not depend on (none in a causal LM) gets zeros
            g = torch.zeros(m * n_pos, *x.shape, dtype=x.dtype, device=x.device) if g is None else g
            out.append(g.view(m, n_pos, batch, *g.shape[-2:]).transpose(1, 2))
        return out

    def _batched_grad(self, grad_outputs: Tensor) -> Tensor:
        """Backward of several output gradients at once (vmap over autograd), with a
        plain loop for models whose ops vmap cannot batch.

        Out of memory (long prompts x many directions: the batched backward holds
        one copy of every activation gradient per direction) halves the batch and
        retries; the size that worked is kept for the rest of this forward, so a
        long prompt pays for one failed attempt per halving, not one per chunk."""
        key = type(self.hidden.grad_fn)
        size = grad_outputs.shape[0]
        if size > 1 and _BATCHED_VJP_WORKS.get(key, True):
            limit = self._batch_limit or size
            if limit < size:
                return torch.cat([self._batched_grad(part) for part in grad_outputs.split(limit)])
            try:
                (grads,) = torch.autograd.grad(
                    self.hidden, self.embeddings, grad_outputs, retain_graph=True, is_grads_batched=True
                )
                return grads
            except RuntimeError as err:
                if not _is_out_of_memory(err):
                    # an op vmap cannot batch: remember it for this graph type
                    _BATCHED_VJP_WORKS[key] = False
                else:
                    self._batch_limit = max(1, size // 2)
                    _free_cached_memory(self.hidden.device)
                    return self._batched_grad(grad_outputs)
        return torch.stack(
            [torch.autograd.grad(self.hidden, self.embeddings, g, retain_graph=True)[0] for g in grad_outputs]
        )


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "allocate" in text or "out of memory" in text


def _free_cached_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def gradient_checkpointing(model: nn.Module) -> Iterator[None]:
    """Run the body with the model's own activation checkpointing on: every
    layer of transformers' ``GradientCheckpointingLayer`` kind recomputes its
    forward in the backward pass (``torch.utils.checkpoint``, non-reentrant)
    instead of keeping its activations. transformers checkpoints a layer only
    in training mode, so the checkpointed layers (and only they, not their
    sub-modules: dropout stays off) are flagged as training. Every attribute
    touched is restored on exit, also after an error.

    Raises:
        ValueError: the model has no checkpointable layer.
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    layers = [m for m in model.modules() if hasattr(type(m), "gradient_checkpointing") and m is not model]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layers that support activation checkpointing")
    missing = object()
    saved = [(m, m.__dict__.get("gradient_checkpointing", missing), m.__dict__.get("_gradient_checkpointing_func",
              missing), m.training) for m in layers]
    try:
        for m in layers:
            m.gradient_checkpointing = True
            m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
            m.training = True
        yield
    finally:
        for m, flag, func, training in saved:
            for name, value in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", func)):
                if value is missing:
                    m.__dict__.pop(name, None)
                else:
                    setattr(m, name, value)
            m.training = training


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers, in order: the ``nn.ModuleList`` of
    ``config.num_hidden_layers`` modules (``model.model.layers`` for Llama and
    Gemma, ``transformer.h`` for GPT-2, ...).

    Raises:
        ValueError: no such list, naming what was looked for.
    """
    config = getattr(model, "config", None)
    count = None
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            count = value
            break
    if count is not None:
        for module in model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == count:
                return list(module)
    raise ValueError(
        f"found no decoder layers in {type(model).__name__}: looked for an nn.ModuleList of "
        f"config.num_hidden_layers (= {count}) modules, such as model.model.layers or transformer.h"
    )


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    """The hidden state a forward pre-hook sees, passed by position or by keyword."""
    return args[0] if args else next(iter(kwargs.values()))


class _HiddenStateReached(Exception):
    """Raised by :func:`run_forward`'s rerun once the final hidden state is recorded."""


def run_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    positions: Tensor,
    embedding_scale: float = 1.0,
    *,
    layers: bool = False,
    rules: str = "gradient",
) -> ScopeForward:
    """Run the model once from its own embedding lookup, recording the final
    hidden state where the output-embedding module consumes it.

    Args:
        model: a Hugging Face causal LM (already checked, inside ``preserved_state``).
        input_ids, attention_mask: (B, n) from :func:`prepare_inputs`.
        positions: (B, P) absolute indices of the explained tokens.
        embedding_scale: multiplies the token embeddings (the path of the
            path-integrated Semantic Scope); 1 for the scopes themselves.
        layers: also keep the residual stream after every decoder layer
            (:attr:`ScopeForward.layer_states`), for maps at every layer.
        rules: ``"gradient"`` (default) or ``"lrp"``: build the graph under AttnLRP's
            rules (:func:`captum_jscopes.core.lrp.lrp_rules`, removed again after the
            forward), so that every VJP taken from it is LRP's modified one.
    """
    check_choice("rules", rules, RULES)
    head = model.get_output_embeddings()
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(input_ids)
    embeddings = (embeddings * embedding_scale).detach().requires_grad_(True)

    captured: dict[str, Tensor] = {}

    def record_output(_module, _args, output):
        captured["z"] = output

    hooks = [(head, record_output)]
    states: list[Tensor] = []
    if layers:
        def record_layer(_module, _args, output):
            # transformers' decoder layers return the hidden states, alone or first of a tuple
            states.append(output[0] if isinstance(output, (tuple, list)) else output)

        hooks += [(layer, record_layer) for layer in decoder_layers(model)]
    kwargs, y, logits, index = _call_model(model, embeddings, attention_mask, positions, hooks, rules)
    z = captured["z"]
    hidden = _gather_rows(y, index.to(y.device))
    compute_dtype = torch.promote_types(hidden.dtype, torch.float32)
    picked = _gather_rows(logits, index.to(logits.device))
    if not bool(torch.isfinite(picked).all()):
        raise FloatingPointError(
            "the model produced NaN or inf logits at the explained position; check its weights and dtype"
        )
    head_slope = None
    if z is not logits:  # the model post-processes the unembedding (soft-capping, scaling)
        (slope,) = torch.autograd.grad(logits, z, torch.ones_like(logits), retain_graph=True)
        slope = _gather_rows(slope, index.to(slope.device)).to(compute_dtype)
        if not bool((slope == 1).all()):
            head_slope = slope
    def rerun(shifted: Tensor) -> Tensor:
        # the same call as above on other embeddings, K copies of the batch, no graph
        copies = shifted.shape[0] // input_ids.shape[0]
        again = {key: value.repeat(copies, *([1] * (value.dim() - 1))) if key in ("attention_mask", "position_ids")
                 else value for key, value in kwargs.items() if key != "inputs_embeds"}
        seen: dict[str, Tensor] = {}

        def record_and_stop(_module, args, kwargs_):
            seen["y"] = _first_input(args, kwargs_)
            # the head is not needed here, and on a 262k vocabulary it is a large part of a short forward
            raise _HiddenStateReached

        handle = head.register_forward_pre_hook(record_and_stop, with_kwargs=True)
        try:
            with torch.no_grad():
                model(inputs_embeds=shifted, **again)
        except _HiddenStateReached:
            pass
        finally:
            handle.remove()
        return _gather_rows(seen["y"], index.repeat(copies, 1).to(seen["y"].device))

    return ScopeForward(
        embeddings=embeddings,
        hidden=hidden,
        logits=picked.detach().to(compute_dtype),
        head_slope=head_slope,
        weight=head_weight(head),
        positions=positions,
        attention_mask=attention_mask,
        layer_states=states if layers else None,
        rerun=rerun,
        rules=rules,
    )


def hidden_and_logits(model: nn.Module, embeddings: Tensor, attention_mask: Tensor,
                      positions: Tensor) -> tuple[Tensor, Tensor]:
    """The model from given input embeddings (B, n, e), called as :func:`run_forward`
    calls it, for read-outs of moved embeddings (no graph under ``torch.no_grad()``):
    (hidden (B, P, d), logits (B, P, V)) at the explained ``positions`` (B, P), in the
    model's dtype; the hidden state is the final one, where the output embedding consumes it."""
    _, y, logits, index = _call_model(model, embeddings, attention_mask, positions)
    return _gather_rows(y, index.to(y.device)), _gather_rows(logits, index.to(logits.device))


def _call_model(model: nn.Module, embeddings: Tensor, attention_mask: Tensor, positions: Tensor,
                hooks: Sequence[tuple[nn.Module, Callable]] = (), rules: str = "gradient",
                ) -> tuple[dict, Tensor, Tensor, Tensor]:
    """One call of the model from input ``embeddings`` (B, n, e), as every forward of the
    engine makes it: positions count real tokens, the head runs only at the explained
    ``positions`` (B, P), the final hidden state ``y`` is recorded where the output
    embedding consumes it; ``hooks`` are (module, forward hook) pairs attached for the
    call, ``rules="lrp"`` puts AttnLRP's rules on the model for it.

    Returns:
        (the call's keyword arguments, ``y`` as the head saw it, the logits, the (B, P)
        rows of both that hold the explained positions).
    """
    kwargs = {"inputs_embeds": embeddings, "attention_mask": attention_mask, "use_cache": False}
    if accepts(model, "position_ids"):
        # positions count real tokens, so a left-padded row sees the positions it would see alone
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    keep = torch.unique(positions)
    if accepts(model, "logits_to_keep"):
        # the head and softmax only at the explained positions: V x n logits would dominate memory
        kwargs["logits_to_keep"] = keep
    else:
        keep = torch.arange(embeddings.shape[1], device=embeddings.device)
    captured: dict[str, Tensor] = {}

    def record_input(_module, args, kwargs_):
        captured["y"] = _first_input(args, kwargs_)

    handles = [model.get_output_embeddings().register_forward_pre_hook(record_input, with_kwargs=True)]
    handles += [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with lrp_rules(model) if rules == "lrp" else nullcontext():
            output = model(**kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if "y" not in captured:
        raise RuntimeError(f"{type(model).__name__}.forward never called its output embeddings")
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.shape[1] != keep.numel():  # the model ignored logits_to_keep
        keep = torch.arange(logits.shape[1], device=logits.device)
    return kwargs, captured["y"], logits, torch.searchsorted(keep, positions.to(keep.device))


def _gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (B, K, D), index (B, P) -> (B, P, D)."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
