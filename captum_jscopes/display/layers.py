"""The layer view of a scope's map: a layer x token heatmap of
:class:`~captum_jscopes.analysis.layers.LayerMap` (:func:`plot_layer_map`,
:func:`save_layer_map`; :func:`plot_layer_scores` draws any (L + 1, n) grid).

Rows are layers with the input embeddings (layer 0) at the BOTTOM and depth
growing upwards, so the token labels sit under the row that scores the tokens
themselves. Columns are the prompt's tokens, labelled with their readable text
(:mod:`captum_jscopes.core.text`). The explained position has a red label and
a red outline; each token's hand-off layer
(:meth:`~captum_jscopes.analysis.layers.LayerMap.handoff`) is an orange bar under
the first row from which the token's own position no longer carries its
influence.

Each row is divided by its own maximum (default ``normalise="row"``): the
residual stream grows with depth, so the gradients at deep layers are smaller and
raw scores of different rows do not compare; the colour bar says so.

Only the Agg canvas is used (no pyplot state): the functions return plain
``matplotlib.figure.Figure`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.textpath import text_to_path

from captum_jscopes.display.common import TARGET_COLOR, PathLike
from captum_jscopes.display.fonts import drawable, font_properties, use_fonts, warn_missing
from captum_jscopes.core.text import display_token, readable_tokens, token_labels
from captum_jscopes.display.labels import NEWLINE_MARK

__all__ = [
    "NORMALISE",
    "HANDOFF_COLOR",
    "HANDOFF_MIN",
    "plot_layer_map",
    "plot_layer_scores",
    "save_layer_map",
    "layer_labels",
    "display_labels",
]

#: the ``normalise`` choices: each row / its maximum, each row / its total, raw scores
NORMALISE = ("row", "share", "none")
#: the hand-off bars: orange reads on white and on the dark end of "Blues"
HANDOFF_COLOR = "#ff7f0e"
PNG_DPI = 150

# Sizes in inches: a column, a row, the margins around the grid.
_COL_W = 0.17
_ROW_H = 0.14
_MIN_GRID_W = 3.0
_MAX_GRID_W = 16.0
_MIN_GRID_H = 2.2
_LEFT = 1.0  # the layer labels and the axis title
_RIGHT = 1.55  # the colour bar and its label
_TITLE_LINE_H = 0.26
_CAPTION_LINE_H = 0.17
_LEGEND_ROW_H = 0.16
#: a narrower grid stacks the legend's entries (side by side they would run off the figure)
_LEGEND_ONE_ROW_W = 6.5
#: hand-off bars only for tokens whose shown score reaches this in some row: the
#: hand-off layer of a token that never carries much is noise
HANDOFF_MIN = 0.2
#: characters of a token label before it is cut with '…' (labels stand upright)
LABEL_CHARS = 14

_BAR_LABELS = {
    "row": "score ÷ its row's maximum\n(each layer on its own scale:\nthe residual stream grows with depth)",
    "share": "score ÷ its row's total\n(each layer on its own scale:\nthe residual stream grows with depth)",
    "none": "raw score\n(rows differ in scale: the\nresidual stream grows with depth)",
}


def layer_labels(ids: Any, tokenizer: Any = None) -> list[str]:
    """A short readable label per token id (n,) for the grid's columns: the
    token's text (:func:`~captum_jscopes.core.text.readable_tokens`; the 2nd,
    3rd ... piece of one character shows '·'), newlines as '⏎', a token of spaces
    only as '␣', cut to :data:`LABEL_CHARS` with '…'. Without a tokenizer the ids."""
    ids = [int(i) for i in (ids.flatten().tolist() if hasattr(ids, "flatten") else ids)]
    if tokenizer is None:
        return [str(i) for i in ids]
    try:
        display = readable_tokens(ids, tokenizer)
    except Exception:  # a tokenizer that cannot name these ids: show the ids
        return [str(i) for i in ids]
    return display_labels(display)


def display_labels(display: Sequence[str]) -> list[str]:
    """The column labels (n,) of readable token texts (``ScopeResult.input_display``,
    "" on the 2nd ... piece of one character), as :func:`layer_labels` makes them."""
    return [_short(label) for label in token_labels(display)]


def _short(text: str) -> str:
    """One tick label: visible whitespace, at most LABEL_CHARS characters."""
    text = text.replace("\n", NEWLINE_MARK).replace("\t", "→")
    if text.strip() == "":
        text = "␣" * max(1, len(text))
    text = text.strip(" ") or text
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _normalised(scores: np.ndarray, normalise: str) -> np.ndarray:
    if normalise == "none":
        return scores
    scale = scores.max(axis=1, keepdims=True) if normalise == "row" else scores.sum(axis=1, keepdims=True)
    return scores / np.where(scale > 0, scale, 1.0)  # an all-zero row stays 0


def plot_layer_scores(
    scores: Any,
    labels: Sequence[str],
    *,
    position: Optional[int] = None,
    handoff: Optional[Sequence[int]] = None,
    scope: Optional[str] = None,
    target: Optional[str] = None,
    title: Optional[str] = None,
    caption: Optional[str] = None,
    normalise: str = "row",
    ax: Optional[Axes] = None,
    cmap: str = "Blues",
) -> Figure:
    """A layer x token heatmap of one prompt's layer map.

    Args:
        scores: (L + 1, n) tensor or array, >= 0: row 0 over the input
            embeddings, row l after decoder layer l.
        labels: n column labels (readable token text; see :func:`layer_labels`).
        position: column of the explained position (red label and outline).
            Default None: none marked (e.g. it is not among the columns).
        handoff: n hand-off layers (:meth:`LayerMap.handoff`): an orange bar
            under row h of column t; 0 (no score) and L + 1 (still carried after
            the last layer) draw none, nor does a token that never reaches
            :data:`HANDOFF_MIN` of a row's maximum. Default None: no bars.
        scope: the scope's name, in the default title.
        target: the explained text (e.g. " Paris"), in the caption.
        title: the title; default "<Scope> Scope, layer by layer".
        caption: a smaller line under the title; default says what is explained.
        normalise: "row" (default: each row / its maximum), "share" (each row /
            its total) or "none" (raw scores; rows differ in scale).
        ax: draw into this Axes (the colour bar takes room beside it). Default: a
            new figure sized to the grid.
        cmap: colour map name. Default "Blues".
    Returns:
        the Figure. Characters no installed font has are drawn as '□' with one
        :class:`~captum_jscopes.display.fonts.MissingGlyphWarning`.
    """
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISE)}, got {normalise!r}")
    values = np.asarray(scores.detach().double().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"scores must have shape (L + 1, n) with L >= 1, got {values.shape}")
    n_rows, n = values.shape
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} columns")
    if not np.isfinite(values).all():
        raise ValueError("the scores hold NaN or inf")
    if handoff is not None and len(handoff) != n:
        raise ValueError(f"{len(handoff)} hand-off layers for {n} columns")
    if position is not None and not 0 <= position < n:
        position = None  # the explained position is not among the columns
    shown = _normalised(values, normalise)

    missing: set = set()
    labels = [drawable(str(label), missing) for label in labels]
    name = f"{scope.title()} Scope" if scope else "Scope"
    title = drawable(title if title is not None else f"{name}, layer by layer", missing)
    if caption is None:
        explained = f"explains {display_token(target)!r}" if target is not None else "explains the next token"
        caption = f"{explained}; rows: the residual stream after each layer, 0 = input embeddings"
    caption = drawable(caption, missing)
    warn_missing(missing)

    handles = []
    if handoff is not None:  # only where the token carries something worth following
        peaks = _normalised(values, "row").max(axis=0)
        handoff = [h if peak >= HANDOFF_MIN else 0 for h, peak in zip(handoff, peaks)]
        handles.append(Line2D([], [], color=HANDOFF_COLOR, linewidth=2.2,
                              label="hand-off: from here up, the token's share < ½ its peak"))
    if position is not None:
        handles.append(Line2D([], [], color=TARGET_COLOR, linewidth=1.5, label="explained position"))

    with use_fonts():
        if ax is None:
            fig, ax, cax, ticks, heading = _new_figure(labels, n_rows, position, title, caption, len(handles))
        else:
            fig, cax = ax.figure, None
            width_in = ax.get_position().width * fig.get_size_inches()[0]
            ticks, heading = _ticks(labels, width_in, position), None
        # a narrow grid stacks the legend's entries (side by side they would run past it)
        legend_rows = heading.legend_rows if heading is not None else (
            1 if width_in >= _LEGEND_ONE_ROW_W or len(handles) < 2 else len(handles))
        image = ax.imshow(shown, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest",
                          vmin=0.0, vmax=1.0 if normalise == "row" else None)
        # beside a caller's Axes: as tall as it (aspect), whatever its width
        bar = fig.colorbar(image, cax=cax, ax=None if cax is not None else ax, fraction=0.05, pad=0.03, aspect=40)
        bar.set_label(_BAR_LABELS[normalise], fontsize=8)
        bar.ax.tick_params(labelsize=7)
        bar.outline.set_linewidth(0.5)
        _label_axes(ax, labels, n_rows, position, ticks)
        if position is not None:
            ax.add_patch(Rectangle((position - 0.5, -0.5), 1, n_rows, fill=False, edgecolor=TARGET_COLOR,
                                   linewidth=1.5, zorder=3))
        if handoff is not None:
            _draw_handoff(ax, handoff, n_rows)
        if handles:
            ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                      ncol=len(handles) if legend_rows == 1 else 1,
                      fontsize=7, frameon=False, borderaxespad=0.2, handlelength=1.5)
        if heading is not None:  # a new figure: title and caption lines in the room above the legend
            fig_w, fig_h = fig.get_size_inches()
            y = 0.1
            for lines, size, height, colour in ((heading.title, 11, _TITLE_LINE_H, "black"),
                                                (heading.caption, 8, _CAPTION_LINE_H, "#444")):
                for line in lines:
                    fig.text(0.1 / fig_w, 1 - y / fig_h, line, ha="left", va="top", color=colour,
                             fontproperties=font_properties(size), parse_math=False)
                    y += height
        else:  # the caller's Axes: title and caption wrapped to its width, above the legend
            width_pt = width_in * 72
            lines = _wrap(title, 9, width_pt) + _wrap(caption, 8, width_pt)
            ax.set_title("\n".join(lines), fontproperties=font_properties(8), loc="left",
                         pad=6 + (11 * legend_rows + 2 if handles else 0))
    return fig


def _grid_width(n: int) -> float:
    return min(_MAX_GRID_W, max(_MIN_GRID_W, n * _COL_W))


@dataclass
class _Ticks:
    """Which columns are labelled (every ``step``-th, and the explained one) and how."""

    columns: list[int]
    step: int
    rotation: int


@dataclass
class _Heading:
    title: list[str]
    caption: list[str]
    legend_rows: int


def _ticks(labels: Sequence[str], width_in: float, position: Optional[int]) -> _Ticks:
    """At most ~one label per 0.12 inch of grid (every k-th token on a long
    prompt, the explained one always), upright unless every label fits across
    its column (a short prompt reads better so)."""
    n = len(labels)
    step = max(1, int(np.ceil(n / max(1.0, width_in / 0.12))))
    columns = [i for i in range(n) if i % step == 0 or i == position]
    if step > 1 and position is not None:  # keep the explained position's label clear of a neighbour's
        columns = [i for i in columns if i == position or abs(i - position) >= step]
    widest = max((_label_width(labels[i], 7) for i in columns), default=0.0)
    rotation = 0 if step == 1 and widest + 3 <= width_in * 72 / n else 90
    return _Ticks(columns, step, rotation)


def _new_figure(labels, n_rows, position, title, caption, n_handles):
    """A figure whose grid cells keep a readable size: width from the column
    count (capped; labels are then thinned), height from the row count plus room
    for the title and caption (wrapped to the figure's width), the legend and the
    token labels under the grid. Returns (fig, ax, colour bar ax, ticks, heading)."""
    grid_w = _grid_width(len(labels))
    grid_h = max(_MIN_GRID_H, n_rows * _ROW_H)
    ticks = _ticks(labels, grid_w, position)
    fig_w = _LEFT + grid_w + _RIGHT
    line_pt = (fig_w - 0.2) * 72
    heading = _Heading(_wrap(title, 11, line_pt), _wrap(caption, 8, line_pt),
                       legend_rows=1 if grid_w >= _LEGEND_ONE_ROW_W or n_handles < 2 else 2)
    top = (0.1 + _TITLE_LINE_H * len(heading.title) + _CAPTION_LINE_H * len(heading.caption) + 0.08
           + _LEGEND_ROW_H * (heading.legend_rows if n_handles else 0))
    if ticks.rotation == 90:  # upright labels, as long as the longest, and the axis title
        bottom = 0.3 + max((_label_width(labels[i], 7) for i in ticks.columns), default=0.0) / 72 + 0.1
    else:
        bottom = 0.5
    fig_h = top + grid_h + bottom
    fig = Figure(figsize=(fig_w, fig_h), facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((_LEFT / fig_w, bottom / fig_h, grid_w / fig_w, grid_h / fig_h))
    cax = fig.add_axes(((_LEFT + grid_w + 0.15) / fig_w, bottom / fig_h, 0.14 / fig_w, grid_h / fig_h))
    return fig, ax, cax, ticks, heading


def _wrap(text: str, size: float, width: float) -> list[str]:
    """``text`` cut at spaces into lines no wider than ``width`` points at ``size``."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _label_width(lines[-1] + " " + word, size) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _label_axes(ax: Axes, labels: list[str], n_rows: int, position: Optional[int], ticks: _Ticks) -> None:
    ax.set_xticks(ticks.columns)
    ax.set_xticklabels([labels[i] for i in ticks.columns], rotation=ticks.rotation, fontproperties=font_properties(7))
    for tick, i in zip(ax.get_xticklabels(), ticks.columns):
        if i == position:
            tick.set_color(TARGET_COLOR)
    ax.set_xlabel("input token" + (f" (every {ticks.step}th labelled)" if ticks.step > 1 else ""), fontsize=8)
    n_layers = n_rows - 1
    row_step = 1 if n_layers <= 12 else (2 if n_layers <= 24 else 5)
    rows = sorted({0, *range(row_step, n_layers + 1, row_step), n_layers})
    if n_layers - row_step < rows[-2] < n_layers and row_step > 1:  # no crowding below the last layer's label
        rows.remove(rows[-2])
    ax.set_yticks(rows)
    ax.set_yticklabels(["emb" if r == 0 else str(r) for r in rows], fontsize=7)
    ax.set_ylabel("layer (0 = input embeddings)", fontsize=8)
    ax.tick_params(length=2, pad=1.5)


def _label_width(text: str, size: float) -> float:
    """Width of ``text`` in points at ``size``, in the fonts it is drawn with."""
    width, _, _ = text_to_path.get_text_width_height_descent(text, font_properties(size), ismath=False)
    return width


def _draw_handoff(ax: Axes, handoff: Sequence[int], n_rows: int) -> None:
    """An orange bar at the lower edge of row h in column t: from that row up the
    token's own position no longer carries its influence."""
    for t, h in enumerate(int(h) for h in handoff):
        if 0 < h < n_rows:
            ax.plot([t - 0.45, t + 0.45], [h - 0.5, h - 0.5], color=HANDOFF_COLOR, linewidth=2.2,
                    solid_capstyle="butt", zorder=4)


def plot_layer_map(
    result: Any,
    tokenizer: Any = None,
    row: int = 0,
    ax: Optional[Axes] = None,
    title: Optional[str] = None,
    normalise: str = "row",
    *,
    target: Optional[str] = None,
    caption: Optional[str] = None,
    labels: Optional[Sequence[str]] = None,
    mark_position: bool = True,
) -> Figure:
    """The layer x token heatmap of one prompt of a :class:`~captum_jscopes.analysis.layers.LayerMap`.

    Columns: the prompt's tokens up to the explained position (padding and the
    all-zero columns after it are left out). Rows: layer 0 (the input
    embeddings, the scope's ordinary map) at the bottom to L (after the last
    decoder layer) at the top.

    Args:
        result: a LayerMap, scores (B, L + 1, seq).
        tokenizer: names the tokens (readable text). Default None: the ids.
        row: which prompt of the batch. Default 0.
        ax: draw into this Axes. Default: a new figure.
        title: default "<Scope> Scope, layer by layer".
        normalise: "row" (default), "share" or "none" (see :func:`plot_layer_scores`).
        target: the explained text, named in the caption. Default None.
        caption: the line under the title. Default: what is explained and what
            the rows are.
        labels: column labels to use instead of the tokenizer's (one per kept
            column). Default None.
        mark_position: mark the explained position. Default True.
    Returns:
        the Figure.
    """
    scores = result.scores[row].detach().double().cpu()
    keep = result.attention_mask[row].bool().cpu().clone()
    position = int(result.positions[row])
    keep[position + 1:] = False  # after the explained position every row is 0 in a causal LM
    columns = keep.nonzero().flatten()
    if labels is None:
        labels = layer_labels(result.input_ids[row][columns], tokenizer)
    handoff = result.handoff()[row][columns].tolist()
    shown_position = int((columns == position).nonzero().flatten()[0]) if mark_position and keep[position] else None
    return plot_layer_scores(scores[:, columns], list(labels), position=shown_position, handoff=handoff,
                             scope=result.scope, target=target, title=title, caption=caption, normalise=normalise,
                             ax=ax)


def save_layer_map(result: Any, path: PathLike, tokenizer: Any = None, **kwargs: Any) -> Path:
    """Write :func:`plot_layer_map` of ``result`` as a PNG (dpi 150; parent
    folders are created). ``kwargs`` go to :func:`plot_layer_map`. Returns the path."""
    fig = plot_layer_map(result, tokenizer, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PNG_DPI, format="png", facecolor="white")
    return path
