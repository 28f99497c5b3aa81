"""The picture of a linearity check: relative error against the perturbation size,
one line per token, with each token's validity radius and swap distance
(:func:`captum_jscopes.linearity_check` computes what is drawn)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from captum_jscopes.analysis.linearity import LinearityResult, check_tokens

__all__ = ["plot_linearity"]

def plot_linearity(
    result: LinearityResult,
    tokens: Optional[Union[Sequence[int], Tensor]] = None,
    labels: Optional[Sequence[str]] = None,
    ax: Any = None,
):
    """Relative error against eps (log-log), one line per token, with the ``tol``
    line, each token's radius (a large dot on its curve; a cross at the smallest
    eps when the radius is 0) and its swap distance (a triangle of the same colour
    on the top edge).

    Args:
        result: a :class:`LinearityResult`.
        tokens: positions to draw (a subset of ``result.tokens``); default all checked.
        labels: one label per prompt token (seq,) or per drawn token; default the
            result's token labels.
        ax: a matplotlib Axes to draw on; default a new
            :class:`matplotlib.figure.Figure` (no pyplot state).
    Returns:
        the matplotlib Figure.
    """
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    if not isinstance(result, LinearityResult):
        raise TypeError(f"result must be a LinearityResult, got {type(result).__name__}")
    n = result.radius.shape[0]
    checked = set(result.tokens.tolist())
    drawn = result.tokens.tolist() if tokens is None else check_tokens(tokens, n)
    missing = [t for t in drawn if t not in checked]
    if missing:
        raise ValueError(f"tokens {missing} were not checked; checked: {sorted(checked)}")
    if labels is None:
        names = [f"{t}: {result.token_labels[t]}" for t in drawn]
    else:
        labels = [str(label) for label in labels]
        if len(labels) == n:
            names = [labels[t] for t in drawn]
        elif len(labels) == len(drawn):
            names = labels
        else:
            raise ValueError(
                f"labels must have one entry per prompt token ({n}) or per drawn token ({len(drawn)}), "
                f"got {len(labels)}"
            )
    if ax is None:
        figure = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.get_figure()
    eps = result.epsilons.numpy()
    finite = result.relative_error[drawn].flatten()
    finite = finite[torch.isfinite(finite) & (finite > 0)]
    floor = float(finite.min()) / 3 if finite.numel() else result.tol * 1e-3
    floor = min(floor, result.tol / 10)
    top_edge = blended_transform_factory(ax.transData, ax.transAxes)
    for t, name in zip(drawn, names):
        error = result.relative_error[t].clamp(min=floor).nan_to_num(posinf=1e300).numpy()
        (line,) = ax.plot(eps, error, marker="o", markersize=3, label=name, gid="relative_error")
        color = line.get_color()
        radius = float(result.radius[t])
        if radius > 0:
            k = int((result.epsilons == radius).nonzero()[0, 0])
            ax.plot([radius], [error[k]], marker="o", markersize=9, color=color, gid="radius")
        else:
            ax.plot([eps[0]], [error[0]], marker="x", markersize=9, color=color, gid="radius")
        swap = float(result.swap_distance[t])
        if math.isfinite(swap) and swap > 0:
            ax.plot([swap], [0.97], marker="v", markersize=8, color=color, transform=top_edge,
                    clip_on=False, gid="swap_distance")
    ax.axhline(result.tol, color="0.3", linestyle="--", linewidth=1, label=f"tol = {result.tol:g}", gid="tol")
    ax.axvline(1.0, color="0.6", linestyle=":", linewidth=1, gid="zero_distance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"perturbation size $\varepsilon$ (units of $\|x_t\|$; dotted: zero ablation; triangles: token swap)")
    ax.set_ylabel("relative error of the scope's prediction")
    reference = f", {result.fisher_reference} reference" if result.fisher_reference else ""
    ax.set_title(f"{result.scope} scope: linearity check (position {result.position}{reference})")
    ax.legend(fontsize="small", loc="best")
    return figure
