"""Pictures and HTML of token attributions, in the style of the Jacobian Scopes
paper: every token is a rounded box coloured by its influence, lines wrap, the
explained (target) token comes last in red.

Works for any Captum ``LLMAttributionResult`` (ours or a baseline's). Scores
that are all >= 0 use a sequential colour map starting at 0; signed scores
(e.g. Integrated Gradients, Feature Ablation) use a diverging map centred at 0.
PNG and HTML take their colours from the same helper (``_colors``) so they agree.

Only the Agg canvas is used (no window, no pyplot state): returned figures are
plain ``matplotlib.figure.Figure`` objects; Jupyter shows them when they are the
cell's value, and ``fig.savefig`` writes them.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import matplotlib
import numpy as np
from captum.attr import LLMAttributionResult
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import text_to_path

PathLike = Union[str, Path]

DIVERGING_CMAP = "PiYG"  # negative pink/red, positive green, like Captum's own plots
TARGET_COLOR = "#d62728"  # red
NEWLINE_MARK = "⏎"
PNG_DPI = 150
_MAX_LABEL_CHARS = 30  # longer tokens are cut with "…" so one box never fills a line


# ------------------------------------------------------------------ tokens
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table used by byte-level BPE tokenizers
    (GPT-2, Llama 3, SmolLM2, Qwen): 'Ġ' is the byte of a space, 'Ċ' of a newline."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def display_token(token: str) -> str:
    """The text a raw tokenizer piece stands for: 'Ġthe' -> ' the', 'Ċ' -> newline,
    '▁the' (SentencePiece) -> ' the', '<0x0A>' -> newline, 'âĢĻ' -> '’'.

    Pieces that are not valid byte-level text (e.g. half of a multi-byte
    character) keep their raw form, with only the space/newline markers replaced.
    """
    match = _SP_BYTE.match(token)
    if match and int(match.group(1), 16) < 0x80:
        return chr(int(match.group(1), 16))
    decoder = _byte_decoder()
    if token and all(ch in decoder for ch in token):
        try:
            return bytes(decoder[ch] for ch in token).decode("utf-8")
        except UnicodeDecodeError:
            pass
    return token.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")


@dataclass
class _Label:
    """How one token is drawn: its box text, whether a word starts there (a
    leading space, drawn as a wider gap) and whether a line break follows."""

    text: str
    word_start: bool
    newline_after: bool


def _label(token: str) -> _Label:
    text = display_token(token)
    stripped = text.lstrip(" ")
    word_start = len(stripped) < len(text)
    newline_after = text.endswith("\n")
    shown = stripped.replace("\r", "\\r").replace("\n", NEWLINE_MARK).replace("\t", "→")
    if not shown:  # a token made only of spaces
        shown, word_start = "␣" * len(text), False
    if len(shown) > _MAX_LABEL_CHARS:
        shown = shown[: _MAX_LABEL_CHARS - 1] + "…"
    return _Label(shown, word_start, newline_after)


# ------------------------------------------------------------------ colours
def _as_scores(scores: Any, n: Optional[int] = None, name: str = "scores") -> np.ndarray:
    """1-D float64 numpy copy of a tensor / array / list; checks length and NaN."""
    if hasattr(scores, "detach"):  # torch tensor, any dtype or device
        scores = scores.detach().float().cpu().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values for {n} tokens")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or inf")
    return arr


def _colors(
    scores: Any,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
) -> tuple[np.ndarray, ScalarMappable]:
    """RGBA colour of every score, and the mappable for a colour bar / legend.

    Non-negative scores: ``cmap`` from 0 (white end) to ``vmax``. Any negative
    score: ``diverging_cmap`` from -vmax to +vmax (0 in the middle).
    ``vmax`` defaults to the largest |score| (1 if all are 0); larger values clip.

    Returns: (rgba array (n, 4), ScalarMappable).
    """
    arr = _as_scores(scores)
    signed = bool((arr < 0).any())
    top = float(np.abs(arr).max()) if arr.size else 0.0
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be > 0, got {vmax}")
        top = float(vmax)
    top = top if top > 0 else 1.0
    norm = Normalize(vmin=-top if signed else 0.0, vmax=top, clip=True)
    mappable = ScalarMappable(norm=norm, cmap=matplotlib.colormaps[diverging_cmap if signed else cmap])
    return mappable.to_rgba(arr), mappable


def _text_color(rgba: Sequence[float]) -> str:
    """Black on light boxes, white on dark ones (perceived luminance)."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


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
    """Width of ``text`` in points at font size 1 (widths scale with the size)."""
    width, _, _ = text_to_path.get_text_width_height_descent(
        text, FontProperties(size=100), ismath=False
    )
    return width / 100


def _layout(labels: list[_Label], style: _Style, line_width: float) -> list[tuple[float, int, float]]:
    """Place the boxes left to right, wrapping at ``line_width`` points and after
    newlines. Returns (x, line index, box width) per label, in points."""
    placed = []
    x, line = 0.0, 0
    for i, lab in enumerate(labels):
        w = _text_width_at_1pt(lab.text) * style.fontsize + 2 * style.pad
        gap = (style.word_gap if lab.word_start else style.gap) if x > 0 else 0.0
        if x > 0 and x + gap + w > line_width:
            x, line, gap = 0.0, line + 1, 0.0
        placed.append((x + gap, line, w))
        x += gap + w
        if lab.newline_after and i < len(labels) - 1:
            x, line = 0.0, line + 1
    return placed


def _one_line_width(labels: list[_Label], style: _Style) -> float:
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
            fontsize=style.fontsize,
            color=TARGET_COLOR if is_target else _text_color(colors[i]),
            fontweight="bold" if is_target else "normal",
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
    target: Optional[str] = None,
    title: Optional[str] = None,
    cmap: str = "Blues",
    ax: Optional[Axes] = None,
    max_width: float = 10.0,
    fontsize: float = 10.0,
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
    label: str = "influence",
) -> Figure:
    """Tokens as rounded boxes coloured by score, wrapped into lines, with a colour bar.

    Args:
        tokens: n raw tokenizer pieces ('Ġ'/'▁' become spaces, newlines '⏎').
        scores: n scores (tensor, array or list). All >= 0: ``cmap`` from 0;
            any < 0: ``diverging_cmap`` centred at 0.
        target: the explained token (raw piece or text), appended in red. Default none.
        title: text above the tokens. Default none.
        cmap: sequential colour map name. Default "Blues".
        ax: draw into this Axes (its width sets the wrapping; the font shrinks
            if the text does not fit its height). Default: a new figure whose
            height grows with the number of lines.
        max_width: width of a new figure in inches (short prompts get a narrower
            one). Default 10.
        fontsize: token font size in points. Default 10.
        vmax: score at the dark end of the colour map (larger scores clip);
            default the largest |score|. Useful when an attention sink dwarfs the rest.
        label: colour bar label. Default "influence".
    Returns:
        the Figure.
    """
    tokens = _check_tokens(tokens)
    values = _as_scores(scores, len(tokens))
    colors, mappable = _colors(values, cmap, diverging_cmap, vmax)
    labels = [_label(t) for t in tokens]
    target_index = None
    if target is not None:
        labels.append(_Label(_label(str(target)).text, True, False))
        target_index = len(labels) - 1
    style = _Style(fontsize)
    if ax is None:
        fig, ax, line_width = _new_heatmap_figure(labels, style, max_width, title, mappable, label)
    else:
        fig = ax.figure
        _add_colorbar(fig, mappable, label, ax=ax, fraction=0.05, pad=0.03, aspect=40)
        if title:
            ax.set_title(title)
        line_width, ax_h = _ax_size_pt(ax)
        style = _fit_font(labels, style, line_width, ax_h)
    placed = _layout(labels, style, line_width)
    _draw_boxes(ax, labels, placed, colors, style, target_index)
    _set_point_axes(ax, line_width, max(_n_lines(placed) * style.line_h, _ax_size_pt(ax)[1]))
    return fig


# Fixed margins of a new heatmap figure, in inches.
_MARGIN_X = 0.25
_MARGIN_TOP = 0.2
_TITLE_H = 0.35
_CBAR_AREA_H = 0.8  # colour bar, its ticks and its label
_MIN_WIDTH = 5.0


def _new_heatmap_figure(labels, style, max_width, title, mappable, label):
    """A figure sized to the wrapped text: fixed width, height from the line count."""
    if max_width <= 2 * _MARGIN_X + 1:
        raise ValueError(f"max_width must be more than {2 * _MARGIN_X + 1} inches, got {max_width}")
    one_line = _one_line_width(labels, style) / 72
    fig_w = min(max_width, max(_MIN_WIDTH, one_line + 2 * _MARGIN_X + 0.05))
    line_width = (fig_w - 2 * _MARGIN_X) * 72
    text_h = _n_lines(_layout(labels, style, line_width)) * style.line_h / 72
    top = _MARGIN_TOP + (_TITLE_H if title else 0.0)
    fig_h = top + text_h + _CBAR_AREA_H
    fig = Figure(figsize=(fig_w, fig_h), facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((_MARGIN_X / fig_w, _CBAR_AREA_H / fig_h, 1 - 2 * _MARGIN_X / fig_w, text_h / fig_h))
    if title:
        fig.text(_MARGIN_X / fig_w, 1 - _MARGIN_TOP / fig_h, title, ha="left", va="top", fontsize=12)
    cbar_w = min(4.0, fig_w - 2 * _MARGIN_X)
    cax = fig.add_axes(((fig_w - cbar_w) / 2 / fig_w, 0.42 / fig_h, cbar_w / fig_w, 0.12 / fig_h))
    _add_colorbar(fig, mappable, label, cax=cax)
    return fig, ax, line_width


def _add_colorbar(fig: Figure, mappable: ScalarMappable, label: str, **where) -> None:
    cbar = fig.colorbar(mappable, orientation="horizontal", **where)
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


def _check_tokens(tokens: Any) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a list of str, not {type(tokens).__name__}")
    if not tokens:
        raise ValueError("tokens is empty: nothing to draw")
    bad = [t for t in tokens if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tokens must hold only str, found {type(bad[0]).__name__} {bad[0]!r}")
    return list(tokens)


# ------------------------------------------------------------------ results
def _check_result(result: Any) -> LLMAttributionResult:
    if not isinstance(result, LLMAttributionResult):
        raise TypeError(f"expected a captum LLMAttributionResult, not {type(result).__name__}")
    return result


def _result_row(result: LLMAttributionResult, row: Optional[int]) -> tuple[list[str], Any, Optional[str]]:
    """(tokens, scores, target) of ``seq_attr`` (row=None, target = all output
    tokens joined) or of ``token_attr[row]`` (target = output_tokens[row])."""
    if row is None:
        # No output tokens (e.g. a target-free scope): no red target box.
        return list(result.input_tokens), result.seq_attr, "".join(result.output_tokens) or None
    if result.token_attr is None:
        raise ValueError("row was given but the result has no token_attr")
    m = result.token_attr.shape[0]
    if isinstance(row, bool) or not isinstance(row, int) or not -m <= row < m:
        raise ValueError(f"row must be an int in [0, {m}), got {row!r}")
    return list(result.input_tokens), result.token_attr[row], result.output_tokens[row]


def save_heatmap(result: LLMAttributionResult, path: PathLike, row: Optional[int] = None, **kwargs) -> Path:
    """Write the token heatmap of a result as a PNG (dpi 150). Returns the path.

    Args:
        result: any captum LLMAttributionResult (a ScopeResult included).
        path: output file; parent folders are created.
        row: None uses ``seq_attr`` (target = the output tokens joined);
            an int uses ``token_attr[row]`` (target = ``output_tokens[row]``).
        kwargs: passed to ``plot_token_heatmap`` (title, cmap, vmax, ...).
    """
    tokens, scores, target = _result_row(_check_result(result), row)
    fig = plot_token_heatmap(tokens, scores, target=target, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PNG_DPI, format="png", facecolor="white")
    return path


# ------------------------------------------------------------------ series
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
    series = _as_scores(values, name="values")
    scores = _as_scores(value_scores, len(series), name="value_scores")
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


# ------------------------------------------------------------------ HTML
def render_html(
    result: Any,
    title: Optional[str] = None,
    *,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
    full_page: bool = False,
) -> str:
    """Self-contained HTML (inline styles only, no script, no external asset).

    Args:
        result: an LLMAttributionResult, or a tuple (tokens, scores) or
            (tokens, scores, target). With a ``token_attr`` of several rows,
            one line per output token; otherwise one line of ``seq_attr``.
        title: heading; default built from ``metadata["scope"]``/``["model"]`` if any.
        cmap, diverging_cmap, vmax: as in ``plot_token_heatmap`` (same colours).
            One colour scale is shared by all lines.
        full_page: wrap the fragment in an <html> page. Default False (a <div>,
            which is what Jupyter's ``_repr_html_`` wants).
    Every token and metadata string is escaped with ``html.escape``.
    """
    lines, probs, metadata = _html_lines(result)
    all_scores = np.concatenate([scores for _, scores, _ in lines])
    colors, mappable = _colors(all_scores, cmap, diverging_cmap, vmax)
    if title is None:
        title = " · ".join(str(metadata[k]) for k in ("scope", "model") if metadata.get(k)) or None
    parts = ['<div style="font-family: sans-serif; font-size: 14px; line-height: 1.9; max-width: 60em;">']
    if title:
        parts.append(f'<div style="font-weight: bold; margin-bottom: 0.4em;">{html.escape(str(title))}</div>')
    start = 0
    for (tokens, scores, target), prob in zip(lines, probs):
        row_colors = colors[start : start + len(tokens)]
        start += len(tokens)
        parts.append(_html_line(tokens, scores, row_colors, target, prob))
    parts.append(_html_legend(mappable))
    if metadata:
        dump = json.dumps(metadata, indent=2, ensure_ascii=False, default=str)
        parts.append(
            '<details style="font-size: 12px; margin-top: 0.3em;"><summary>metadata</summary>'
            f'<pre style="white-space: pre-wrap;">{html.escape(dump)}</pre></details>'
        )
    parts.append("</div>")
    fragment = "\n".join(parts)
    if not full_page:
        return fragment
    page_title = html.escape(str(title)) if title else "Token attribution"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{page_title}</title></head>\n<body>\n{fragment}\n</body>\n</html>\n"
    )


def save_html(result: Any, path: PathLike, title: Optional[str] = None, **kwargs) -> Path:
    """Write ``render_html(result, title, full_page=True)`` as UTF-8. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result, title, full_page=True, **kwargs), encoding="utf-8")
    return path


def _html_lines(result: Any):
    """([(tokens, scores, target)], [prob or None], metadata) for render_html."""
    if isinstance(result, tuple):
        if len(result) not in (2, 3):
            raise ValueError("a tuple for render_html must be (tokens, scores) or (tokens, scores, target)")
        tokens = _check_tokens(result[0])
        target = result[2] if len(result) == 3 else None
        return [(tokens, _as_scores(result[1], len(tokens)), target)], [None], {}
    result = _check_result(result)
    metadata = dict(getattr(result, "metadata", None) or {})
    tokens = _check_tokens(result.input_tokens)
    probs = result.output_probs
    if result.token_attr is not None and result.token_attr.shape[0] > 1:
        rows = [_result_row(result, i) for i in range(result.token_attr.shape[0])]
        lines = [(tokens, _as_scores(s, len(tokens)), t) for _, s, t in rows]
        row_probs = [None] * len(lines) if probs is None else [float(p) for p in probs]
        return lines, row_probs, metadata
    _, scores, target = _result_row(result, None)
    prob = float(probs.prod()) if probs is not None and len(probs) else None
    return [(tokens, _as_scores(scores, len(tokens)), target)], [prob], metadata


def _html_line(tokens, scores, colors, target, prob) -> str:
    spans = []
    for i, (token, score, color) in enumerate(zip(tokens, scores, colors)):
        lab = _label(token)
        if lab.word_start:
            spans.append(" ")
        tip = html.escape(f"#{i} {token!r}: {score:.6g}")
        spans.append(
            f'<span title="{tip}" style="background: {to_hex(color)}; color: {_text_color(color)}; '
            f'border-radius: 4px; padding: 1px 3px; margin: 0 1px;">{html.escape(lab.text)}</span>'
        )
        if lab.newline_after:
            spans.append("<br>")
    if target is not None:
        lab = _label(str(target))
        tip = "target" + ("" if prob is None else f", p = {prob:.4g}")
        spans.append(
            f' <span title="{html.escape(tip)}" style="color: {TARGET_COLOR}; font-weight: bold; '
            f'border: 1.5px solid {TARGET_COLOR}; border-radius: 4px; padding: 0 3px;">'
            f"{html.escape(lab.text)}</span>"
        )
    return f'<div style="margin: 0.3em 0; padding-bottom: 0.2em; border-bottom: 1px solid #eee;">{"".join(spans)}</div>'


def _html_legend(mappable: ScalarMappable, n_stops: int = 11) -> str:
    lo, hi = mappable.norm.vmin, mappable.norm.vmax
    stops = ", ".join(to_hex(mappable.to_rgba(v)) for v in np.linspace(lo, hi, n_stops))
    return (
        '<div style="font-size: 12px; margin-top: 0.4em;">influence '
        f"<span>{lo:.3g}</span> "
        f'<span style="display: inline-block; width: 12em; height: 0.8em; vertical-align: middle; '
        f'border: 1px solid #bbb; background: linear-gradient(to right, {stops});"></span> '
        f"<span>{hi:.3g}</span></div>"
    )
