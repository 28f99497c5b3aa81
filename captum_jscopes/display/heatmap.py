"""The token heatmap of the Jacobian Scopes paper: every token is a rounded box
coloured by its influence, lines wrap, the explained (target) token comes last
in red (:func:`plot_token_heatmap`, :func:`save_heatmap`).

Works for any Captum ``LLMAttributionResult`` (ours or a baseline's). Colours
come from :func:`captum_jscopes.display.common.token_colors`, as in the HTML.
Every box shows readable text (:mod:`captum_jscopes.core.text`): the tokens
of one character (byte-level BPE splits '🍣' into three) show it once, the
others '·'. Every script is drawn: fonts are found per script
(:mod:`captum_jscopes.display.fonts`), Arabic and Hebrew are joined and read
right to left, Devanagari and Thai are shaped, and the boxes of an Arabic or
Hebrew prompt run from the right (:mod:`captum_jscopes.display.shaping`).

Only the Agg canvas is used (no window, no pyplot state): returned figures are
plain ``matplotlib.figure.Figure`` objects; Jupyter shows them when they are the
cell's value, and ``fig.savefig`` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

from captum.attr import LLMAttributionResult
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import text_to_path

from captum_jscopes.display.common import CLIP_QUANTILE, DIVERGING_CMAP, TARGET_COLOR, PathLike, as_scores, check_tokens
from captum_jscopes.display.common import color_scale, result_row, result_view, text_color, token_colors
from captum_jscopes.display.fonts import drawable, font_properties, warn_missing
from captum_jscopes.display.shaping import right_to_left
from captum_jscopes.core.text import display_token, readable_tokens
from captum_jscopes.display.labels import TokenLabel, box_labels, token_label

__all__ = ["PNG_DPI", "plot_token_heatmap", "save_heatmap"]

PNG_DPI = 150


# ------------------------------------------------------------------ layout
@dataclass
class _Style:
    """Sizes in points, all proportional to the font size."""

    fontsize: float

    @property
    def pad(self) -> float:  # horizontal padding inside a box
        return 0.3 * self.fontsize

    @property
    def box_h(self) -> float:
        return 1.55 * self.fontsize

    @property
    def line_h(self) -> float:  # box plus the gap between lines
        return 2.05 * self.fontsize

    @property
    def gap(self) -> float:  # between pieces of one word
        return 0.15 * self.fontsize

    @property
    def word_gap(self) -> float:  # before a token that starts with a space
        return 0.6 * self.fontsize


@lru_cache(maxsize=20000)
def _text_width_at_1pt(text: str) -> float:
    """Width of ``text`` in points at font size 1 (widths scale with the size),
    in the fonts it is drawn with."""
    width, _, _ = text_to_path.get_text_width_height_descent(text, font_properties(100), ismath=False)
    return width / 100


def _box_width(lab: TokenLabel, style: _Style) -> float:
    return _text_width_at_1pt(lab.text) * style.fontsize + 2 * style.pad


def _shorten_to(lab: TokenLabel, style: _Style, width: float) -> None:
    """Cut a label's text with '…' until its box fits ``width`` points (a long
    target, or a token wider than the line); the label is changed in place."""
    while _box_width(lab, style) > width and len(lab.text) > 1:
        lab.text = lab.text[:-2] + "…"


def _layout(labels: list[TokenLabel], style: _Style, line_width: float) -> list[tuple[float, int, float]]:
    """Place the boxes left to right, wrapping at ``line_width`` points and after
    newlines. Returns (x, line index, box width) per label, in points."""
    placed = []
    x, line = 0.0, 0
    for i, lab in enumerate(labels):
        _shorten_to(lab, style, line_width)
        w = _box_width(lab, style)
        gap = (style.word_gap if lab.word_start else style.gap) if x > 0 else 0.0
        if x > 0 and x + gap + w > line_width:
            x, line, gap = 0.0, line + 1, 0.0
        placed.append((x + gap, line, w))
        x += gap + w
        if lab.newline_after and i < len(labels) - 1:
            x, line = 0.0, line + 1
    return placed


def _one_line_width(labels: list[TokenLabel], style: _Style) -> float:
    """Width in points the labels would take on a single line."""
    placed = _layout(labels, style, float("inf"))
    return max((x + w for x, _, w in placed), default=0.0)


def _n_lines(placed: list[tuple[float, int, float]]) -> int:
    return 1 + max((line for _, line, _ in placed), default=0)


def _draw_boxes(ax: Axes, labels, placed, colors, style: _Style, target_index: Optional[int]) -> None:
    """Draw the boxes and their text; ax data units must be points, y downward."""
    for i, (lab, (x, line, w)) in enumerate(zip(labels, placed)):
        y = line * style.line_h
        is_target = i == target_index
        face = "white" if is_target else colors[i]
        edge = TARGET_COLOR if is_target else (0.72, 0.72, 0.72, 1.0)
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                style.box_h,
                boxstyle=f"round,pad=0,rounding_size={0.35 * style.fontsize}",
                facecolor=face,
                edgecolor=edge,
                linewidth=1.4 if is_target else 0.5,
            )
        )
        ax.text(
            x + w / 2,
            y + style.box_h / 2,
            lab.text,
            ha="center",
            va="center",
            fontproperties=font_properties(style.fontsize),
            color=TARGET_COLOR if is_target else text_color(colors[i]),
            parse_math=False,  # a token such as "$x$" is text, not TeX
        )


def _ax_size_pt(ax: Axes) -> tuple[float, float]:
    fig_w, fig_h = ax.figure.get_size_inches()
    pos = ax.get_position()
    return pos.width * fig_w * 72, pos.height * fig_h * 72


# ------------------------------------------------------------------ heatmap
def plot_token_heatmap(
    tokens: Sequence[str],
    scores: Any,
    *,
    display: Optional[Sequence[str]] = None,
    target: Optional[str] = None,
    target_prob: Optional[float] = None,
    title: Optional[str] = None,
    caption: Optional[str] = None,
    cmap: str = "Blues",
    ax: Optional[Axes] = None,
    max_width: float = 10.0,
    fontsize: float = 10.0,
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
    clip_quantile: Optional[float] = CLIP_QUANTILE,
    label: str = "influence",
) -> Figure:
    """Tokens as rounded boxes coloured by score, wrapped into lines, with a colour bar.

    Args:
        tokens: n raw tokenizer pieces ('Ġ'/'▁' become spaces, newlines '⏎'; the
            pieces of one character show it once, the others '·').
        scores: n scores (tensor, array or list). All >= 0: ``cmap`` from 0;
            any < 0: ``diverging_cmap`` centred at 0.
        display: n readable texts to show instead of decoding ``tokens``
            (``ScopeResult.input_display``; "" marks the 2nd ... token of a group).
            Default: decoded from ``tokens``.
        target: the explained text (readable text, spaces kept, or a raw piece),
            appended in a red box that fits it (cut with '…' beyond a line). Default none.
        target_prob: the target's probability, shown in the caption. Default none.
        title: text above the tokens. Default none.
        caption: a smaller line under the title (what the colours show);
            default "target '…' (p = …)" when ``target_prob`` is given.
        cmap: sequential colour map name. Default "Blues".
        ax: draw into this Axes (its width sets the wrapping; the font shrinks
            if the text does not fit its height). Default: a new figure whose
            height grows with the number of lines.
        max_width: width of a new figure in inches (short prompts get a narrower
            one). Default 10.
        fontsize: token font size in points. Default 10.
        vmax: score at the dark end of the colour map (larger scores clip).
            Default None: the ``clip_quantile`` quantile of |score|.
        clip_quantile: quantile of |score| at the dark end when ``vmax`` is None.
            Default 0.99 (numpy "higher": the largest score for up to 100 tokens;
            on long prompts the top 1% clip). None: the largest |score|. When
            scores clip, the colour bar has an arrow and its label says where.
        label: colour bar label. Default "influence".
    Returns:
        the Figure. A prompt whose first letter is right-to-left (Arabic,
        Hebrew) is laid out from the right. Characters no installed font has
        are drawn as '□' with one
        :class:`~captum_jscopes.display.fonts.MissingGlyphWarning` naming the
        Debian packages with fonts for them (see :mod:`captum_jscopes.display.fonts`).
    """
    tokens = check_tokens(tokens)
    values = as_scores(scores, len(tokens))
    colors, mappable = token_colors(values, cmap, diverging_cmap, vmax, clip_quantile)
    scale = color_scale(values, vmax, clip_quantile)
    if display is None:
        display = readable_tokens(tokens)
    elif len(display) != len(tokens):
        raise ValueError(f"display has {len(display)} texts for {len(tokens)} tokens")
    labels = box_labels(display)
    target_index = None
    if target is not None:
        target_label = token_label(display_token(str(target)), limit=None)
        labels.append(TokenLabel(target_label.text, True, False))
        target_index = len(labels) - 1
    if caption is None and target_prob is not None and target is not None:
        caption = f"target {display_token(str(target))!r} (p = {float(target_prob):.3g})"
    missing: set = set()
    for lab in labels:
        lab.text = drawable(lab.text, missing)
    title, caption = (None if t is None else drawable(t, missing) for t in (title, caption))
    warn_missing(missing)
    bar_label = label if scale.note is None else f"{label}\n{scale.note}"
    extend = "neither" if scale.note is None else ("both" if mappable.norm.vmin < 0 else "max")
    style = _Style(fontsize)
    if ax is None:
        fig, ax, line_width = _new_heatmap_figure(labels, style, max_width, (title, caption), mappable, bar_label, extend)
    else:
        fig = ax.figure
        _add_colorbar(fig, mappable, bar_label, extend, ax=ax, fraction=0.05, pad=0.03, aspect=40)
        heading = "\n".join(t for t in (title, caption) if t)
        if heading:
            ax.set_title(heading, fontproperties=font_properties(10))
        line_width, ax_h = _ax_size_pt(ax)
        style = _fit_font(labels, style, line_width, ax_h)
    placed = _layout(labels, style, line_width)
    if right_to_left("".join(display)):  # an Arabic or Hebrew prompt reads from the right
        placed = [(line_width - x - w, line, w) for x, line, w in placed]
    _draw_boxes(ax, labels, placed, colors, style, target_index)
    _set_point_axes(ax, line_width, max(_n_lines(placed) * style.line_h, _ax_size_pt(ax)[1]))
    return fig


# Fixed margins of a new heatmap figure, in inches.
_MARGIN_X = 0.25
_MARGIN_TOP = 0.2
_TITLE_H = 0.35
_CAPTION_H = 0.21
_CBAR_AREA_H = 0.8  # colour bar, its ticks and its label
_CBAR_NOTE_H = 0.18  # a second label line saying where the colours clip
_MIN_WIDTH = 5.0


def _new_heatmap_figure(labels, style, max_width, heading, mappable, label, extend):
    """A figure sized to the wrapped text: fixed width, height from the line count."""
    if max_width <= 2 * _MARGIN_X + 1:
        raise ValueError(f"max_width must be more than {2 * _MARGIN_X + 1} inches, got {max_width}")
    title, caption = heading
    one_line = _one_line_width(labels, style) / 72
    fig_w = min(max_width, max(_MIN_WIDTH, one_line + 2 * _MARGIN_X + 0.05))
    line_width = (fig_w - 2 * _MARGIN_X) * 72
    text_h = _n_lines(_layout(labels, style, line_width)) * style.line_h / 72
    # A long title or caption wraps at the figure's width instead of running off it.
    title_lines = _wrap(title, 12, line_width)
    caption_lines = _wrap(caption, 9, line_width)
    top = _MARGIN_TOP + _TITLE_H * len(title_lines) + _CAPTION_H * len(caption_lines)
    cbar_area = _CBAR_AREA_H + (_CBAR_NOTE_H if "\n" in label else 0.0)
    fig_h = top + text_h + cbar_area
    fig = Figure(figsize=(fig_w, fig_h), facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((_MARGIN_X / fig_w, cbar_area / fig_h, 1 - 2 * _MARGIN_X / fig_w, text_h / fig_h))
    y = 1 - _MARGIN_TOP / fig_h
    for lines, size, height in ((title_lines, 12, _TITLE_H), (caption_lines, 9, _CAPTION_H)):
        for text in lines:
            fig.text(_MARGIN_X / fig_w, y, text, ha="left", va="top", fontproperties=font_properties(size), parse_math=False)
            y -= height / fig_h
    cbar_w = min(4.0, fig_w - 2 * _MARGIN_X)
    cax = fig.add_axes(((fig_w - cbar_w) / 2 / fig_w, (cbar_area - 0.38) / fig_h, cbar_w / fig_w, 0.12 / fig_h))
    _add_colorbar(fig, mappable, label, extend, cax=cax)
    return fig, ax, line_width


def _wrap(text: Optional[str], size: float, width: float) -> list[str]:
    """``text`` cut at spaces into lines no wider than ``width`` points at ``size``
    (a single word wider than that stays whole)."""
    if not text:
        return []
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _text_width_at_1pt(lines[-1] + " " + word) * size <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _add_colorbar(fig: Figure, mappable: ScalarMappable, label: str, extend: str = "neither", **where) -> None:
    cbar = fig.colorbar(mappable, orientation="horizontal", extend=extend, **where)
    cbar.set_label(label, fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    cbar.outline.set_linewidth(0.5)


def _fit_font(labels, style: _Style, line_width: float, height: float) -> _Style:
    """Shrink the font (down to 4 pt) until the wrapped text fits ``height`` points."""
    while style.fontsize > 4:
        if _n_lines(_layout(labels, style, line_width)) * style.line_h <= height:
            break
        style = _Style(style.fontsize * 0.9)
    return style


def _set_point_axes(ax: Axes, width: float, height: float) -> None:
    """Make one data unit one point, y growing downward, no frame or ticks."""
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()



def save_heatmap(result: LLMAttributionResult, path: PathLike, row: Optional[int] = None, **kwargs) -> Path:
    """Write the token heatmap of a result as a PNG (dpi 150). Returns the path.

    Args:
        result: any captum LLMAttributionResult (a ScopeResult included, also a
            ``result.words()`` view).
        path: output file; parent folders are created.
        row: which scores to show for a target of several tokens. None (default):
            ``seq_attr``, the sum over the target tokens; the red box holds the
            whole target with its spaces. An int: ``token_attr[row]``, one target
            token. The caption under the title says which, with the target and its
            probability (for the whole target, the product of the tokens').
        kwargs: passed to ``plot_token_heatmap`` (title, caption, cmap, vmax,
            clip_quantile, ...); ``title`` is kept as given.
    """
    result = result_view(result)
    shown = result_row(result, row)
    kwargs.setdefault("caption", shown.caption)
    fig = plot_token_heatmap(
        list(result.input_tokens), shown.scores, display=result.input_display, target=shown.target,
        target_prob=shown.prob, **kwargs,
    )  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PNG_DPI, format="png", facecolor="white")
    return path

