"""The spectral view of the Fisher Scope: what each top eigen-direction of F is
about, in output space (the tokens it trades against each other) and in input
space (the tokens that drive it).

``tr(J_t^T F J_t) = sum_i l_i ||u_i^T J_t||^2``: direction i of F holds the share
``l_i / tr F`` of the distribution's sensitivity, and its token scores
``l_i ||u_i^T J_t||^2`` (one backward pass) add up over all d directions to the
Fisher score. A direction moves the logits by ``G u_i``; the tokens it raises and
lowers most are ranked by their part in ``l_i = sum_c p_c ((g_c - mu)^T u_i)^2``,
i.e. by ``sqrt(p_c) (g_c - mu)^T u_i``, and the sign of ``u_i`` is fixed so that
the top-ranked token rises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from captum_jscopes.core.forward import resolve_positions, run_forward
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.fisher.algebra import (
    eigen,
    fisher_matrix,
    fisher_mean,
    fisher_trace,
    top_eigenpairs,
    vocabulary_chunks,
)
from captum_jscopes.fisher.estimators.eig import EigEstimator

__all__ = ["FisherComponents", "components", "describe"]


@dataclass
class FisherComponents:
    """Top eigen-directions of F at one explained position per prompt.

    ``repr`` gives a short summary, :meth:`describe` one line per direction and
    :meth:`plot` one heat strip per direction.

    Attributes:
        values: (B, k) eigenvalues, descending.
        share: (B, k) their share of ``tr F``.
        trace: (B,) ``tr F``.
        token_scores: (B, k, seq) ``l_i ||u_i^T J_t||^2`` (0 for tokens not scored).
        directions: (B, k, d) unit eigenvectors ``u_i`` (sign fixed, see the module).
        raised, lowered: (B, k, top) vocabulary ids each direction raises / lowers most.
        raised_weight, lowered_weight: (B, k, top) their ``sqrt(p_c) (g_c - mu)^T u_i``.
        path: ``"formed"`` or ``"matrix_free"``.
        position: (B,) the explained token's column in each prompt (None if unknown).
    """

    values: Tensor
    share: Tensor
    trace: Tensor
    token_scores: Tensor
    directions: Tensor
    raised: Tensor
    lowered: Tensor
    raised_weight: Tensor
    lowered_weight: Tensor
    path: str
    position: Optional[Tensor] = None

    def __repr__(self) -> str:
        batch, k = self.values.shape
        lines = [f"FisherComponents({batch} prompt{'s' if batch != 1 else ''}, top {k} direction{'s' if k != 1 else ''} "
                 f"of F, path={self.path!r}, {self.token_scores.shape[-1]} tokens)"]
        for row in range(min(batch, 3)):
            parts = ", ".join(f"{float(v):.3g} ({100 * float(s):.0f}%)" for v, s in zip(self.values[row], self.share[row]))
            at = "" if self.position is None else f" at position {int(self.position[row])}"
            lines.append(f"  prompt {row}{at}: tr F = {float(self.trace[row]):.3g}; eigenvalues (share of tr F): {parts}")
        if batch > 3:
            lines.append(f"  ... {batch - 3} more")
        return "\n".join(lines)

    def describe(self, tokenizer: Any, input_ids: Tensor, row: int = 0, n_tokens: int = 3,
                 n_drivers: int = 3) -> list[str]:
        """One line per direction (see :func:`describe`)."""
        return describe(self, tokenizer, input_ids, row, n_tokens, n_drivers)

    def plot(self, tokenizer: Any, input_ids: Tensor, path=None, row: int = 0, n_tokens: int = 3):
        """One heat strip per direction, saved to ``path`` when given; returns the
        figure (see :func:`captum_jscopes.display.fisher_components.plot_components`)."""
        # imported here: the display module imports this one, and loads matplotlib
        from captum_jscopes.display.fisher_components import plot_components

        return plot_components(self, tokenizer, input_ids, path=path, row=row, n_tokens=n_tokens)


def components(
    scope: Any,
    input_ids: Tensor,
    k: int = 4,
    position: Union[int, Tensor] = -1,
    attention_mask: Optional[Tensor] = None,
    *,
    top: int = 5,
    path: str = "auto",
    token_mask: Optional[Tensor] = None,
    exclude_special_tokens: Optional[bool] = None,
    vocab_chunk: int = 8192,
) -> FisherComponents:
    """The top ``k`` eigen-directions of F for the prediction at ``position``
    with their token scores (k backward passes), from one forward pass.

    ``path``: ``"formed"`` (F and its full eigendecomposition), ``"matrix_free"``
    (subspace iteration on F X products) or ``"auto"`` (the cheaper)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    ids, mask = scope._inputs(input_ids, attention_mask)
    positions = resolve_positions(position, mask)[:, None]
    scored = scope._scored_tokens(ids, mask, positions, token_mask, exclude_special_tokens)
    with preserved_state(scope.model):
        forward = run_forward(scope.model, ids, mask, positions)
        d = forward.weight.shape[1]
        k = min(k, d)
        chosen = "formed" if path == "auto" and k == d else EigEstimator(k=k).choose_path(forward, path)
        if chosen == "formed":
            values, vectors = eigen(fisher_matrix(forward, vocab_chunk))
            values, vectors = values[..., :k], vectors[..., :k]
        else:
            values, vectors, _ = top_eigenpairs(forward, k, vocab_chunk=vocab_chunk)
        mean = fisher_mean(forward, vocab_chunk)
        trace = fisher_trace(forward, mean, vocab_chunk)
        weight = _output_weights(forward, vectors, mean, vocab_chunk)  # (B, P, V, k)
        # sign: the token weighing most in the direction rises
        peak = weight.gather(-2, weight.abs().argmax(-2, keepdim=True)).squeeze(-2)  # (B, P, k)
        flip = torch.where(peak < 0, -1.0, 1.0).to(vectors)
        vectors, weight = vectors * flip[..., None, :], weight * flip[..., None, :]
        directions = (vectors * values[..., None, :].sqrt()).movedim(-1, 0)  # (k, B, P, d)
        token_scores = forward.squared_norms(directions, scope.chunk_size)  # (k, B, P, n)
    top = min(top, weight.shape[-2])
    raised_weight, raised = weight.topk(top, dim=-2)
    lowered_weight, lowered = (-weight).topk(top, dim=-2)
    first = (slice(None), 0)
    return FisherComponents(
        values=values[first],
        share=(values / trace[..., None].clamp_min(torch.finfo(trace.dtype).tiny))[first],
        trace=trace[first],
        token_scores=(token_scores.movedim(0, 2) * scored[:, :, None, :].to(token_scores))[first],
        directions=vectors[first].transpose(-1, -2),
        raised=raised[first].transpose(-1, -2),
        lowered=lowered[first].transpose(-1, -2),
        raised_weight=raised_weight[first].transpose(-1, -2),
        lowered_weight=(-lowered_weight)[first].transpose(-1, -2),
        path=chosen,
        position=positions[:, 0].cpu(),
    )


def _output_weights(forward, vectors: Tensor, mean: Tensor, vocab_chunk: int) -> Tensor:
    """(B, P, V, k) ``sqrt(p_c) (g_c - mu)^T u_i``."""
    parts = []
    centre = torch.einsum("bpd,bpdk->bpk", mean, vectors)
    for _, rows, p, scale in vocabulary_chunks(forward, vocab_chunk):
        change = torch.einsum("cd,bpdk->bpck", rows, vectors)
        if scale is not None:
            change = change * scale[..., None]
        parts.append(p[..., None].sqrt() * (change - centre[..., None, :]))
    return torch.cat(parts, dim=-2)


def describe(found: FisherComponents, tokenizer: Any, input_ids: Tensor, row: int = 0, n_tokens: int = 3,
             n_drivers: int = 3) -> list[str]:
    """One line per direction: ``direction 1, 34% of the uncertainty: ' helmet' up,
    ' visor' down; driven by: 'helmet' (41%), ...``."""
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]

    def text(token_id: int) -> str:
        return repr(tokenizer.decode([int(token_id)])) if tokenizer is not None else str(int(token_id))

    lines = []
    for i in range(found.values.shape[1]):
        up = ", ".join(text(t) for t in found.raised[row, i, :n_tokens])
        down = ", ".join(text(t) for t in found.lowered[row, i, :n_tokens])
        scores = found.token_scores[row, i]
        total = float(scores.sum()) or 1.0
        order = scores.argsort(descending=True)[:n_drivers]
        drivers = ", ".join(f"{text(ids[row, t])} ({100 * float(scores[t]) / total:.0f}%)" for t in order)
        lines.append(f"direction {i + 1}, {100 * float(found.share[row, i]):.0f}% of the uncertainty: "
                     f"{up} up, {down} down; driven by: {drivers}")
    return lines
