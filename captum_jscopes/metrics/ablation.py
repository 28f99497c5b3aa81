"""Removing tokens from a prompt and reading the model's next-token
distribution: which tokens may be ranked, how they are ranked, how a fraction
becomes a token count, and the batched no-grad forwards every metric runs.

All ablated variants of a prompt run in batches of ``batch_size`` under
``torch.no_grad()``; log-softmax is taken in float64 at the explained position
only. The caller's model is left as it was (see
:func:`captum_jscopes.core.model_state.preserved_state`).

A causal LM's states before the first ablated token of a variant are the intact
prompt's, so :class:`AblatedPrompt` keeps the intact prompt's key/value cache and
runs each batch from its variants' earliest ablated position on: leave-one-out
runs about 1.75x faster, the deletion curves (whose top sets reach back to early
tokens) a little; the same numbers up to float round-off (``ablated_log_probs``
runs every variant whole, the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from captum_jscopes.core.model_state import accepts, cache_argument, check_causal_lm, preserved_state
from captum_jscopes.core.tokens import TargetLike, resolve_target, special_tokens_mask
from captum_jscopes.metrics.checks import check_order, check_position, check_prompt
from captum_jscopes.metrics.settings import ABLATION_MODES, AblationSettings

__all__ = [
    "AblatedPrompt",
    "ablated_log_probs",
    "ablation_inputs",
    "n_tokens_for_fraction",
    "rank_tokens",
    "rankable_mask",
]


# ============================================================ ranking
def rankable_mask(
    input_ids: Tensor,
    position: int = -1,
    *,
    tokenizer: Any = None,
    config: Any = None,
    include_special: bool = False,
) -> Tensor:
    """Which tokens may be ranked and ablated.

    Args:
        input_ids: (n,) token ids.
        position: explained position (negative counts from the end). Default -1.
        tokenizer, config: where the special token ids come from.
        include_special: also rank special tokens (BOS, ...). Default False.
    Returns:
        (n,) bool CPU tensor: True at or before ``position`` (later tokens cannot
        influence a causal LM's prediction there) and, unless
        ``include_special``, not special.
    """
    ids = input_ids.detach().flatten().cpu()
    n = ids.shape[0]
    position = check_position(position, n)
    mask = torch.arange(n) <= position
    if not include_special:
        mask &= ~special_tokens_mask(ids, tokenizer, config)
    return mask


def rank_tokens(scores: Tensor, rankable: Tensor, order: str = "most") -> Tensor:
    """Positions of the rankable tokens sorted by score.

    Args:
        scores: (n,) real scores.
        rankable: (n,) bool.
        order: "most" (highest score first, default) or "least".
    Returns:
        (m,) int64 CPU positions. Ties keep the earlier position first, so the
        ranking is deterministic.
    """
    order = check_order(order)
    positions = rankable.cpu().nonzero().flatten()
    values = scores.detach().cpu().to(torch.float64)[positions]
    key = -values if order == "most" else values
    return positions[torch.sort(key, stable=True).indices]


def n_tokens_for_fraction(fraction: float, m: int) -> int:
    """Tokens a fraction stands for: 0 for 0, else ``max(1, floor(fraction * m))``.

    A 1e-9 slack absorbs float error (0.29 * 100 = 28.999999999999996 -> 29).
    """
    if fraction <= 0:
        return 0
    return min(m, max(1, math.floor(fraction * m + 1e-9)))


# ============================================================ forwards
def ablation_inputs(
    model: nn.Module,
    input_ids: Tensor,
    ablate: Tensor,
    *,
    mode: str = "zero",
    replacement_id: Optional[int] = None,
    first_position: int = 0,
) -> dict[str, Tensor]:
    """Forward keyword arguments for a batch of ablated copies of one prompt.

    Args:
        model: the causal LM (used for its embedding lookup in "zero" mode).
        input_ids: (n,) token ids on the model's embedding device.
        ablate: (V, n) bool, True where variant v ablates a token.
        mode: "zero", "token" or "mask" (see :class:`AblationSettings`).
        replacement_id: the id "token" mode writes (required there).
        first_position: position id of the first token (default 0; a prompt
            whose leading tokens were left out keeps its other positions).
    Returns:
        dict with ``attention_mask`` (V, n) int64, ``position_ids`` (V, n) =
        first_position..first_position+n-1, and ``inputs_embeds`` (V, n, e) ("zero") or ``input_ids`` (V, n).
        Only the ablated tokens differ from the intact prompt.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}")
    device = input_ids.device
    ablate = ablate.to(device)
    variants, n = ablate.shape
    ids = input_ids.expand(variants, n)
    attention_mask = torch.ones(variants, n, dtype=torch.long, device=device)
    # explicit positions: masking a token in "mask" mode must not shift the others
    kwargs = {"position_ids": torch.arange(first_position, first_position + n, device=device).expand(variants, n)}
    if mode == "zero":
        with torch.no_grad():
            embeds = model.get_input_embeddings()(input_ids.unsqueeze(0))
        kwargs["inputs_embeds"] = embeds.expand(variants, -1, -1).masked_fill(ablate.unsqueeze(-1), 0.0)
    elif mode == "token":
        if replacement_id is None:
            raise ValueError("mode='token' needs replacement_id")
        kwargs["input_ids"] = ids.masked_fill(ablate, replacement_id)
    else:
        kwargs["input_ids"] = ids
        attention_mask = attention_mask.masked_fill(ablate, 0)
    kwargs["attention_mask"] = attention_mask
    return kwargs


def _log_probs_at(model: nn.Module, kwargs: dict[str, Any], position: int, n: int) -> tuple[Tensor, Any]:
    """One batched forward; float64 log-softmax at ``position`` only -> (V, vocab),
    and the model's key/value cache when ``kwargs`` ask for one (else None)."""
    kwargs = {"use_cache": False, **kwargs}
    column = position
    if accepts(model, "logits_to_keep"):
        # the head only for the last n - position columns; the wanted one is first
        kwargs["logits_to_keep"] = n - position
        column = 0
    output = model(**kwargs)
    log_probs = torch.log_softmax(output.logits[:, column, :].to(torch.float64), dim=-1)
    name = cache_argument(model)
    return log_probs, getattr(output, name, None) if kwargs["use_cache"] and name else None


@dataclass(frozen=True)
class _IntactStates:
    """The intact prompt's key/value states, layer by layer (keys, values and a
    sliding window or None: what ``DynamicCache`` iterates over)."""

    layers: tuple[tuple[Tensor, Tensor, Optional[Tensor]], ...]

    @classmethod
    def of(cls, cache: Any, n: int) -> Optional["_IntactStates"]:
        """The states of a forward over all n tokens, or None where they cannot
        be reused: not a ``DynamicCache``, or a layer that kept fewer than n
        positions (a sliding window shorter than the prompt, shared layers)."""
        if not isinstance(cache, DynamicCache):
            return None
        layers = tuple(tuple(layer) for layer in cache)
        if not layers or any(
            keys is None or values is None or keys.shape[-2] != n or values.shape[-2] != n
            for keys, values, _ in layers
        ):
            return None
        return cls(layers)

    def continued(self, model: nn.Module, start: int, attention_mask: Tensor) -> dict[str, Any]:
        """Forward arguments that run a batch from ``start`` on: the first
        ``start`` positions' states repeated over the batch, and the attention
        mask of those positions (all kept) before the batch's own."""
        batch = attention_mask.shape[0]
        # filled layer by layer as a forward over the first ``start`` tokens would have (each
        # sliding-window layer keeps its window), a fresh cache per batch since a forward extends it
        cache = DynamicCache(ddp_cache_data=[
            (keys[..., :start, :].expand(batch, -1, -1, -1), values[..., :start, :].expand(batch, -1, -1, -1), window)
            for keys, values, window in self.layers
        ])
        kept = attention_mask.new_ones(batch, start)
        return {cache_argument(model): cache, "use_cache": True, "attention_mask": torch.cat([kept, attention_mask], 1)}


def _run_variants(
    model: nn.Module,
    input_ids: Tensor,
    ablate: Tensor,
    position: int,
    settings: AblationSettings,
    replacement_id: Optional[int],
    intact: Optional[_IntactStates] = None,
) -> Tensor:
    """Log-probs (V, vocab) float64 at ``position`` for each ablation row; inputs
    already checked, called inside ``preserved_state(model, grad=False)``. With
    the ``intact`` prompt's states, each batch starts at its rows' earliest
    ablated position (rows sorted by it, so a batch's rows start close together)."""
    n = input_ids.shape[0]
    if settings.mode == "mask":
        blind = ablate[:, : position + 1].all(dim=1)
        if bool(blind.any()):
            raise ValueError(
                "mode='mask' cannot ablate every token up to the explained position (the prediction "
                "would attend to nothing); keep a BOS token in the prompt or use mode='zero'"
            )
        # A masked token whose earlier tokens are all masked too attends to nothing: its hidden state is
        # NaN, and 0 * NaN in the attention of every later token spreads it. Masking a leading run of
        # tokens is the same as leaving them out with the other positions kept, so that is what runs.
        lead = torch.where(ablate.all(dim=1), n, (~ablate).long().argmax(dim=1))
    else:
        lead = torch.zeros(ablate.shape[0], dtype=torch.long)
    # the first ablated position (the explained one for a row that ablates nothing before it)
    first = torch.where(ablate[:, :position].any(dim=1), ablate.long().argmax(dim=1), position)
    out: Optional[Tensor] = None
    for skip in lead.unique().tolist():
        rows = (lead == skip).nonzero().flatten()
        reuse = intact is not None and skip == 0
        if reuse:
            rows = rows[torch.sort(first[rows], stable=True).indices]
        for batch in rows.split(settings.batch_size):
            start = int(first[batch].min()) if reuse else skip
            kwargs = ablation_inputs(
                model, input_ids[start:], ablate[batch, start:], mode=settings.mode, replacement_id=replacement_id,
                first_position=start,
            )
            if reuse and start > 0:
                kwargs.update(intact.continued(model, start, kwargs["attention_mask"]))
            log_probs, _ = _log_probs_at(model, kwargs, position - start, n - start)
            if out is None:
                out = log_probs.new_empty(ablate.shape[0], log_probs.shape[1], device="cpu")
            out[batch] = log_probs.cpu()
    return out


def ablated_log_probs(
    model: nn.Module,
    input_ids: Tensor,
    ablate: Tensor,
    *,
    position: int = -1,
    settings: Optional[AblationSettings] = None,
    **ablation: Any,
) -> Tensor:
    """Next-token log-probabilities at ``position`` for ablated copies of a prompt,
    each run whole (the reference :class:`AblatedPrompt` agrees with).

    Args:
        model: a Hugging Face causal LM (not modified).
        input_ids: (n,) or (1, n) token ids.
        ablate: (V, n) or (n,) bool, True where a token is ablated. A row of all
            False gives the intact prompt.
        position: explained position. Default -1.
        settings: :class:`AblationSettings` (mode, replacement token, batch
            size); default the defaults ("zero" mode, batches of 16).
        **ablation: overrides of single settings, e.g. ``mode="token"``.
    Returns:
        (V, vocab) float64 CPU tensor (1-D (vocab,) for a 1-D ``ablate``).
    """
    settings = AblationSettings.of(settings, **ablation)
    check_causal_lm(model)
    ids = check_prompt(model, input_ids)
    n = ids.shape[0]
    position = check_position(position, n)
    if not isinstance(ablate, Tensor) or ablate.dtype != torch.bool:
        raise TypeError("ablate must be a bool tensor of shape (n,) or (V, n)")
    single = ablate.dim() == 1
    rows = ablate.unsqueeze(0) if single else ablate
    if rows.dim() != 2 or rows.shape[1] != n or rows.shape[0] == 0:
        raise ValueError(f"ablate must have shape ({n},) or (V, {n}) with V >= 1, got {tuple(ablate.shape)}")
    replacement_id = settings.replacement(model)
    with preserved_state(model, grad=False):
        out = _run_variants(model, ids, rows.cpu(), position, settings, replacement_id)
    return out[0] if single else out


# ============================================================ one prompt, many ablations
@dataclass
class AblatedPrompt:
    """A checked prompt with its intact prediction, from which the metrics run
    their ablations: :meth:`run` starts each batch of variants from the intact
    prompt's key/value states at the batch's earliest ablated token (``intact``;
    None for a model whose cache cannot be reused, which runs variants whole).
    Build it with :meth:`prepare` inside ``preserved_state(model, grad=False)``."""

    model: nn.Module
    ids: Tensor  # (n,) on the embedding device
    position: int
    rankable: Tensor  # (n,) bool CPU
    settings: AblationSettings
    replacement_id: Optional[int]
    log_probs: Tensor  # (vocab,) float64, intact prompt
    target: int
    intact: Optional[_IntactStates] = None  # its key/value states, where the model's cache allows reuse

    @classmethod
    def prepare(
        cls,
        model: nn.Module,
        input_ids: Any,
        position: Any,
        settings: AblationSettings,
        target: Optional[TargetLike] = None,
    ) -> "AblatedPrompt":
        """Check the prompt, find its rankable tokens, run it intact and fix the
        target: ``target`` (an id or a one-token string) or, when None, the
        intact prompt's top-1 prediction y*."""
        check_causal_lm(model)
        ids = check_prompt(model, input_ids)
        position = check_position(position, ids.shape[0])
        rankable = rankable_mask(
            ids, position, tokenizer=settings.tokenizer, config=getattr(model, "config", None),
            include_special=settings.include_special,
        )
        if not bool(rankable.any()):
            raise ValueError(
                f"no token to rank: every token up to position {position} is special "
                "(pass include_special=True to rank special tokens)"
            )
        replacement_id = settings.replacement(model)
        n = ids.shape[0]
        kwargs = ablation_inputs(
            model, ids, torch.zeros(1, n, dtype=torch.bool), mode=settings.mode, replacement_id=replacement_id
        )
        if accepts(model, "use_cache") and cache_argument(model):
            kwargs["use_cache"] = True
        log_probs, cache = _log_probs_at(model, kwargs, position, n)
        log_probs = log_probs[0].cpu()
        if target is None:
            target_id = int(log_probs.argmax())
        else:
            target_id = resolve_target(target, settings.tokenizer, log_probs.shape[0])
        intact = _IntactStates.of(cache, n)
        return cls(model, ids, position, rankable, settings, replacement_id, log_probs, target_id, intact)

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def m(self) -> int:
        """The number of rankable tokens."""
        return int(self.rankable.sum())

    @property
    def log_prob(self) -> float:
        """log p(target) on the intact prompt."""
        return float(self.log_probs[self.target])

    def run(self, ablate: Tensor) -> Tensor:
        """(V, n) bool -> (V, vocab) log-probs. A row that ablates nothing IS the
        intact prompt: it reuses that forward, so its delta is exactly 0 (a
        batched forward can differ from a single one by ~1e-7)."""
        out = self.log_probs.expand(ablate.shape[0], -1).clone()
        changed = ablate.any(dim=1)
        if bool(changed.any()):
            # identical rows (methods that agree on their top tokens) run once
            unique, inverse = torch.unique(ablate[changed].to(torch.uint8), dim=0, return_inverse=True)
            log_probs = _run_variants(
                self.model, self.ids, unique.bool(), self.position, self.settings, self.replacement_id, self.intact
            )
            out[changed] = log_probs[inverse]
        return out

    def masks(self, token_sets: Sequence[Tensor]) -> Tensor:
        """One (n,) bool row per set of positions."""
        rows = torch.zeros(len(token_sets), self.n, dtype=torch.bool)
        for row, positions in zip(rows, token_sets):
            row[positions] = True
        return rows
