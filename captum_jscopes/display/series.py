"""The paper's time-series figure (:func:`plot_series_influence`): influence of
each value of a series as bars, the series itself as a line."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from captum_jscopes.display.common import TARGET_COLOR, as_scores

__all__ = ["plot_series_influence"]


def plot_series_influence(
    values: Any,
    value_scores: Any,
    *,
    title: Optional[str] = None,
    ax: Optional[Axes] = None,
    target: Optional[float] = None,
) -> Figure:
    """The paper's time-series figure: influence of each value as bars, the
    series itself as a line on a second y axis.

    Args:
        values: n series values, in order.
        value_scores: n influence scores (one per value).
        title: figure title. Default none.
        ax: draw into this Axes. Default: a new 9 x 3.5 inch figure.
        target: the next value the model predicts, drawn as a red marker at
            position n. Default none.
    Returns:
        the Figure.
    """
    series = as_scores(values, name="values")
    scores = as_scores(value_scores, len(series), name="value_scores")
    if series.size == 0:
        raise ValueError("values is empty: nothing to draw")
    if ax is None:
        fig = Figure(figsize=(9, 3.5), facecolor="white", layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    fig = ax.figure
    positions = np.arange(len(series))
    bars = ax.bar(positions, scores, width=0.8, color="#4c72b0", alpha=0.75, label="influence")
    ax.set_xlabel("position in the series")
    ax.set_ylabel("influence", color="#4c72b0")
    ax.axhline(0, color="0.6", linewidth=0.6)
    ax.spines[["top"]].set_visible(False)
    twin = ax.twinx()
    (line,) = twin.plot(positions, series, color="black", linewidth=1.2, marker="o", markersize=2.5, label="value")
    handles = [bars, line]
    if target is not None:
        # dashed step from the last value to the predicted one
        twin.plot([len(series) - 1, len(series)], [series[-1], float(target)], color="black", linestyle=":", linewidth=1)
        handles.append(
            twin.scatter([len(series)], [float(target)], color=TARGET_COLOR, marker="*", s=90, zorder=3, label="target")
        )
    twin.set_ylabel("value")
    ax.set_xlim(-0.8, len(series) - 0.2 + (1 if target is not None else 0))
    # Above the axes, so it never hides bars or the line.
    twin.legend(handles=handles, loc="lower right", bbox_to_anchor=(1, 1), ncol=len(handles), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, loc="left")
    return fig
