"""Where influence travels: every scope's map at every layer, from the same
backward passes.

A scope's map scores token t by vector-Jacobian products ``v^T dy/dx_t`` at the
input embeddings. The backward pass that computes them flows through the residual
stream after every decoder layer on its way down, so the same products taken at
``h_l`` (the residual stream after layer l) cost one gradient read-out more per
layer, not a backward pass: :func:`layer_map` returns them all.

Row l scores position t by the same rule as the scope's map, with ``h_l[t]`` in
place of ``x_t``: the norm ``||v^T dy/dh_l[t]||`` (Semantic, Temperature) or the
trace ``tr(J^T F J)`` estimated from the same probes (Fisher). Row 0 is the
scope's ordinary map. In a causal LM the last row (after the last layer) is zero
except at the explained position, whose residual stream is all the head reads.

Scales differ between rows: the residual stream grows with depth (its norm rises
layer by layer), so a unit move of ``h_l`` means less at deep layers and the
gradients shrink. Compare positions within a row; the pictures normalise each row
by its own maximum (:func:`captum_jscopes.display.layers.plot_layer_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from captum_jscopes.core.forward import decoder_layers, prepare_inputs, resolve_positions
from captum_jscopes.scopes.base import JacobianScope

__all__ = ["LayerMap", "layer_map", "handoff_layers", "spearman_by_layer", "HANDOFF_FRACTION"]

#: a token has handed its influence off once its score stays below this share of its
#: own maximum over layers (see :meth:`LayerMap.handoff`)
HANDOFF_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class LayerMap:
    """A scope's map at every layer, for a batch of prompts.

    Attributes:
        scores: (B, L + 1, seq) float: row 0 the scope's map over the input
            embeddings (equal to ``scope.attribute``), row l at the residual stream
            after decoder layer l. Tokens after the explained position, padding and
            excluded special tokens are 0 in every row.
        error: (B, L + 1, seq) standard errors (0 for exact scopes; Fisher's
            estimators give theirs).
        input_ids: (B, seq) int64.
        attention_mask: (B, seq).
        positions: (B,) absolute index of each row's explained token.
        scope: the scope's name.
    """

    scores: Tensor
    error: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    scope: str

    @property
    def n_layers(self) -> int:
        """L, the number of decoder layers (rows are 0..L)."""
        return self.scores.shape[1] - 1

    def shares(self) -> Tensor:
        """(B, L + 1, seq) float64: each row divided by its total, the share of the
        row's influence each position carries (free of the rows' different scales)."""
        scores = self.scores.double()
        return scores / scores.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)

    def handoff(self, fraction: float = HANDOFF_FRACTION) -> Tensor:
        """(B, seq) int64: per token, the first layer from which its own position
        no longer carries its influence: the smallest ``h`` such that the token's
        share of the row (:meth:`shares`) at every row ``l >= h`` is below
        ``fraction`` times its largest share over rows 0..L. Shares, not raw
        scores, because the rows' scales differ (the residual stream grows with
        depth). ``L + 1`` for a token whose position still carries it after the
        last layer (the explained token itself), and 0 for a token with no score.

        Args:
            fraction: of the token's own largest share. Default 0.5.
        """
        return handoff_layers(self.scores, fraction)

    def final_share(self) -> Tensor:
        """(B, L + 1) float: per row, the share of the row's total score held by the
        explained position itself (1.0 at the last row of a causal LM)."""
        totals = self.scores.double().sum(-1)
        own = self.scores.double().gather(-1, self.positions.to(self.scores.device)[:, None, None].expand(
            -1, self.scores.shape[1], 1))[..., 0]
        return (own / totals.clamp_min(torch.finfo(torch.float64).tiny)).cpu()

    def normalised(self) -> Tensor:
        """(B, L + 1, seq) each row divided by its own maximum (0 rows stay 0): the
        rows' scales differ because the residual stream grows with depth."""
        peak = self.scores.amax(dim=-1, keepdim=True)
        return self.scores / peak.clamp_min(torch.finfo(self.scores.dtype).tiny)


def handoff_layers(scores: Tensor, fraction: float = HANDOFF_FRACTION) -> Tensor:
    """The hand-off rule of :meth:`LayerMap.handoff` for any layer grid: ``scores``
    (..., L + 1, seq) -> (..., seq) int64 CPU, computed on each row's shares."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    scores = scores.double()
    scores = scores / scores.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    peak = scores.amax(dim=-2, keepdim=True)  # (..., 1, seq)
    above = (scores >= fraction * peak) & (peak > 0)  # (..., L + 1, seq)
    rows = torch.arange(scores.shape[-2], device=scores.device)[:, None]
    last_above = torch.where(above, rows, torch.full_like(rows, -1)).amax(dim=-2)  # (..., seq)
    return (last_above + 1).clamp(min=0).cpu()


def layer_map(
    scope: JacobianScope,
    input_ids: Tensor,
    target: Any = None,
    position: Union[int, Tensor] = -1,
    attention_mask: Optional[Tensor] = None,
    **options: Any,
) -> LayerMap:
    """Every layer's map of ``scope`` from one forward and the scope's usual
    backward passes.

    Args:
        scope: a Jacobian Scope (built in or registered).
        input_ids, target, position, attention_mask, **options: as in
            ``scope.attribute`` (batches, padding, ``token_mask``,
            ``exclude_special_tokens``, the scope's own options; not the
            path-integrated ``n_steps``, which has no layer view).
    Returns:
        a :class:`LayerMap` whose ``scores[:, 0]`` equals ``scope.attribute(...)``.
    Raises:
        ValueError: the model's decoder layers are not found (the message names
            what was looked for), or bad input as in ``scope.attribute``.
    """
    if not isinstance(scope, JacobianScope):
        raise TypeError(f"scope must be a Jacobian Scope instance, got {type(scope).__name__}")
    decoder_layers(scope.model)  # the clear error first, before any work
    options.pop("return_error", None)
    scores, error = scope.attribute(input_ids, target=target, position=position, attention_mask=attention_mask,
                                    layers=True, return_error=True, **options)
    ids, mask = prepare_inputs(scope.model, input_ids, attention_mask)
    return LayerMap(
        scores=scores.detach(),
        error=error.detach(),
        input_ids=ids.cpu(),
        attention_mask=mask.cpu(),
        positions=resolve_positions(position, mask).cpu(),
        scope=scope.name,
    )


def spearman_by_layer(scores: Tensor, effects: Tensor, columns: Optional[Sequence[int]] = None) -> Tensor:
    """(L + 1,) Spearman correlation per row between a prompt's layer map
    ``scores`` (L + 1, seq) and a patching effect of the same shape, over
    ``columns`` (default every column where either is non-zero); NaN where fewer
    than 3 columns or a constant row."""
    from scipy.stats import spearmanr

    out = torch.full((scores.shape[0],), float("nan"), dtype=torch.float64)
    for layer in range(scores.shape[0]):
        a, b = scores[layer].double(), effects[layer].double()
        keep = list(columns) if columns is not None else ((a != 0) | (b != 0)).nonzero().flatten().tolist()
        if len(keep) < 3 or float(a[keep].std()) == 0 or float(b[keep].std()) == 0:
            continue
        out[layer] = float(spearmanr(a[keep].numpy(), b[keep].numpy()).statistic)
    return out
