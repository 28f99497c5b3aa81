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

from captum_jscopes.fisher.estimators import fisher_matrix, fisher_mean, fisher_trace, eigen, top_eigenpairs, choose_path
from captum_jscopes.core.forward import resolve_positions, run_forward
from captum_jscopes.core.model_state import preserved_state


@dataclass
class FisherComponents:
    """Top eigen-directions of F at one explained position per prompt.

    Attributes:
        values: (B, k) eigenvalues, descending.
        share: (B, k) their share of ``tr F``.
        trace: (B,) ``tr F``.
        token_scores: (B, k, seq) ``l_i ||u_i^T J_t||^2`` (0 for tokens not scored).
        directions: (B, k, d) unit eigenvectors ``u_i`` (sign fixed, see the module).
        raised, lowered: (B, k, top) vocabulary ids each direction raises / lowers most.
        raised_weight, lowered_weight: (B, k, top) their ``sqrt(p_c) (g_c - mu)^T u_i``.
        path: ``"formed"`` or ``"matrix_free"``.
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
        chosen = "formed" if path == "auto" and k == d else choose_path(forward, path, "eig")
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
    )


def _output_weights(forward, vectors: Tensor, mean: Tensor, vocab_chunk: int) -> Tensor:
    """(B, P, V, k) ``sqrt(p_c) (g_c - mu)^T u_i``."""
    probs = forward.probs()
    parts = []
    centre = torch.einsum("bpd,bpdk->bpk", mean, vectors)
    for start in range(0, probs.shape[-1], vocab_chunk):
        rows = forward.weight[start : start + vocab_chunk].to(probs.device, probs.dtype)
        change = torch.einsum("cd,bpdk->bpck", rows, vectors)
        if forward.head_slope is not None:
            change = change * forward.head_slope[..., start : start + vocab_chunk, None]
        parts.append(probs[..., start : start + vocab_chunk, None].sqrt() * (change - centre[..., None, :]))
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


def plot_components(found: FisherComponents, tokenizer: Any, input_ids: Tensor, path=None, row: int = 0,
                    n_tokens: int = 3):
    """A picture with one row per direction: its heat strip over the input tokens
    (its share of each token's Fisher score) and, as the row title, the line of
    :func:`describe`. Saved to ``path`` when given; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    labels = [tokenizer.decode([int(t)]) if tokenizer is not None else str(int(t)) for t in ids[row]]
    lines = describe(found, tokenizer, ids, row, n_tokens)
    k = found.values.shape[1]
    width = max(6.0, 0.32 * len(labels))
    fig, axes = plt.subplots(k, 1, figsize=(width, 1.3 * k + 0.6), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        scores = found.token_scores[row, i].float().cpu()
        ax.imshow(scores[None].numpy(), aspect="auto", cmap="Reds", vmin=0)
        ax.set_yticks([])
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_title(lines[i], fontsize=8, loc="left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
