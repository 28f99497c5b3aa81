"""Pictures and HTML of token attributions, in the style of the Jacobian Scopes
paper: every token is a rounded box coloured by its influence, lines wrap, the
explained (target) token comes last in red.

Works for any Captum ``LLMAttributionResult`` (ours or a baseline's). Scores
that are all >= 0 use a sequential colour map starting at 0; signed scores
(e.g. Integrated Gradients, Feature Ablation) use a diverging map centred at 0.
PNG and HTML take their colours from the same helper (``_colors``) so they agree.
The colour scale ends at the 99th percentile of |score| (larger scores clip, and
the colour bar says so), so one attention sink does not wash out a long prompt.

Every view shows readable text (:mod:`captum_jscopes.results.spans`): the tokens of one
character (byte-level BPE splits '🍣' into three) show it once. Pictures use a
font fallback list (:data:`FONT_FAMILIES`) that covers CJK and emoji where such
fonts are installed; a character no installed font has is drawn as '□', with one
warning per figure instead of one per glyph. See docs/reading.md.

Only the Agg canvas is used (no window, no pyplot state): returned figures are
plain ``matplotlib.figure.Figure`` objects; Jupyter shows them when they are the
cell's value, and ``fig.savefig`` writes them.
"""

from __future__ import annotations

import contextlib
import html
import json
import unicodedata
import warnings
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
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.ft2font import FT2Font
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import text_to_path

from captum_jscopes.results import spans as _spans
from captum_jscopes.results.result import ScopeResult

PathLike = Union[str, Path]

DIVERGING_CMAP = "PiYG"  # negative pink/red, positive green, like Captum's own plots
TARGET_COLOR = "#d62728"  # red
NEWLINE_MARK = "⏎"
PNG_DPI = 150
_MAX_LABEL_CHARS = 30  # longer tokens are cut with "…" so one box never fills a line


# ------------------------------------------------------------------ fonts
#: Font families tried in order for every character (matplotlib's per-glyph
#: fallback); only the installed ones are used. DejaVu Sans (shipped with
#: matplotlib) covers Latin, Greek, Cyrillic; the Noto CJK fonts Chinese,
#: Japanese, Korean; Symbola / Noto Emoji / Segoe UI Emoji the emoji. Colour
#: bitmap fonts (Noto Color Emoji, Apple Color Emoji) cannot be scaled by
#: matplotlib's FreeType renderer, so they serve the HTML (the browser) only.
FONT_FAMILIES = (
    "DejaVu Sans",
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
    "Hiragino Sans", "PingFang SC", "Microsoft YaHei", "Malgun Gothic", "Arial Unicode MS",
    "Noto Emoji", "Symbola", "Segoe UI Emoji", "Segoe UI Symbol", "Noto Sans Symbols 2", "Noto Sans Symbols",
)  # fmt: skip
MISSING_GLYPH = "□"  # drawn for a character no installed font has (DejaVu Sans has it)
FONT_HINT = "apt-get install fonts-noto-cjk fonts-noto-color-emoji fonts-symbola"


class MissingGlyphWarning(UserWarning):
    """Some characters of a figure have no glyph in the installed fonts."""


@lru_cache(maxsize=1)
def _installed_fonts() -> tuple[tuple[str, frozenset], ...]:
    """(family, code points it covers) of the installed FONT_FAMILIES, in order."""
    paths: dict[str, str] = {}
    for entry in fontManager.ttflist:
        if entry.name in FONT_FAMILIES and entry.style == "normal":
            paths.setdefault(entry.name, entry.fname)
    found, seen = [], set()
    for family in FONT_FAMILIES:
        path = paths.get(family)
        if path is None or path in seen:  # the CJK families share one file
            continue
        seen.add(path)
        try:
            found.append((family, frozenset(FT2Font(path).get_charmap())))
        except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it
            continue
    return tuple(found)


def font_families() -> list[str]:
    """The installed families of :data:`FONT_FAMILIES`, in fallback order
    (at least DejaVu Sans, which matplotlib ships)."""
    return [family for family, _ in _installed_fonts()] or ["DejaVu Sans"]


@contextlib.contextmanager
def use_fonts():
    """Context in which new matplotlib text uses the fallback list (for Captum's plots)."""
    with matplotlib.rc_context({"font.family": font_families()}):
        yield


# Characters that draw nothing (joiners, variation selectors): dropped when no
# font has them, rather than drawn as a box.
_INVISIBLE = {"Cf", "Mn", "Me"}


def _drawable(text: str, missing: set) -> str:
    """``text`` with every character no installed font covers replaced by
    MISSING_GLYPH (invisible ones dropped); those characters are added to ``missing``."""
    fonts = _installed_fonts()
    out = []
    for ch in text:
        if ch.isspace() or any(ord(ch) in covered for _, covered in fonts):
            out.append(ch)
            continue
        missing.add(ch)
        if unicodedata.category(ch) not in _INVISIBLE:
            out.append(MISSING_GLYPH)
    return "".join(out)


def _warn_missing(missing: set) -> None:
    """One warning for all characters of a figure that have no glyph."""
    shown = [ch for ch in sorted(missing) if unicodedata.category(ch) not in _INVISIBLE]
    if not shown:
        return
    listed = ", ".join(f"{ch} (U+{ord(ch):04X})" for ch in shown[:8]) + (" ..." if len(shown) > 8 else "")
    warnings.warn(
        f"{len(shown)} character(s) have no glyph in the installed fonts and are drawn as "
        f"{MISSING_GLYPH}: {listed}. The HTML page shows them; for the pictures install fonts, "
        f"e.g. on Debian: {FONT_HINT} (docs/reading.md)",
        MissingGlyphWarning,
        stacklevel=3,
    )


def drawable_labels(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each list of labels made drawable (see ``_drawable``), with one
    :class:`MissingGlyphWarning` for all of them together."""
    missing: set = set()
    out = [[_drawable(label, missing) for label in labels] for labels in groups]
    _warn_missing(missing)
    return out


# ------------------------------------------------------------------ tokens
def display_token(token: str) -> str:
    """The text a raw tokenizer piece stands for on its own: 'Ġthe' -> ' the',
    'Ċ' -> newline, '▁the' (SentencePiece) -> ' the', '<0x0A>' -> newline,
    'âĢĻ' -> '’'. Pieces that are not valid text alone (e.g. half of a multi-byte
    character) keep their raw form, with only the space/newline markers replaced;
    :func:`captum_jscopes.results.spans.readable_groups` joins such pieces with their neighbours.
    """
    return _spans.display_piece(token)


def readable_tokens(tokens: Sequence[str]) -> list[str]:
    """Readable text per raw piece (n,): the text of a run of pieces that only
    together decode cleanly is on its first piece, "" on the others."""
    return _spans.token_display(_spans.readable_groups(list(tokens)), len(tokens))


@dataclass
class _Label:
    """How one token is drawn: its box text, whether a word starts there (a
    leading space, drawn as a wider gap) and whether a line break follows."""

    text: str
    word_start: bool
    newline_after: bool


def _label(text: str, limit: Optional[int] = _MAX_LABEL_CHARS) -> _Label:
    """The label of a token's readable text (a raw piece: decode it first)."""
    stripped = text.lstrip(" ")
    word_start = len(stripped) < len(text)
    newline_after = text.endswith("\n")
    shown = stripped.replace("\r", "\\r").replace("\n", NEWLINE_MARK).replace("\t", "→")
    if not shown:  # a token made only of spaces
        shown, word_start = "␣" * len(text), False
    if limit is not None and len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return _Label(shown, word_start, newline_after)


def _token_labels(display: Sequence[str]) -> list[_Label]:
    """Labels of readable tokens; the 2nd, 3rd ... token of a group shows '·'
    and sits close to the first (no word gap)."""
    labels = []
    for text, shown in zip(display, _spans.token_labels(display)):
        if text == "" and shown == _spans.CONTINUATION_MARK:
            labels.append(_Label(shown, False, False))
        else:
            labels.append(_label(text))
    return labels


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


#: default colour-scale end: this quantile of |score| (numpy "higher" method,
#: so prompts of up to 100 tokens end at their largest score)
CLIP_QUANTILE = 0.99


@dataclass
class _Scale:
    """The colour scale: ``top`` is the score at the dark end; ``note`` says how
    it was chosen when scores above it clip (None when nothing clips)."""

    top: float
    note: Optional[str]


def _color_scale(arr: np.ndarray, vmax: Optional[float], clip_quantile: Optional[float]) -> _Scale:
    """Where the colour scale ends. An explicit ``vmax`` wins; else the
    ``clip_quantile`` quantile of |score| (None: the largest |score|). On a
    3000-token prompt the largest score is often one attention sink 10-100x the
    rest, which would leave every other box white; the top 1% clip instead."""
    magnitudes = np.abs(arr)
    largest = float(magnitudes.max()) if arr.size else 0.0
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be > 0, got {vmax}")
        top, how = float(vmax), f"clipped at vmax = {float(vmax):.3g}"
    elif clip_quantile is not None and arr.size:
        if not 0 < clip_quantile <= 1:
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        top = float(np.quantile(magnitudes, clip_quantile, method="higher"))
        how = f"clipped at the {100 * clip_quantile:g}th percentile of |score|, {top:.3g}"
    else:
        top, how = largest, ""
    if not top > 0:  # all zero, or a quantile that is 0 while a few scores are not
        top = largest if largest > 0 else 1.0
    note = f"{how} (max {largest:.3g})" if largest > top else None
    return _Scale(top, note)


def _colors(
    scores: Any,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
    clip_quantile: Optional[float] = CLIP_QUANTILE,
) -> tuple[np.ndarray, ScalarMappable]:
    """RGBA colour of every score, and the mappable for a colour bar / legend.

    Non-negative scores: ``cmap`` from 0 (white end) to the scale's top. Any
    negative score: ``diverging_cmap`` from -top to +top (0 in the middle). The
    top is ``vmax`` if given, else the ``clip_quantile`` quantile of |score|
    (default 0.99, see ``_color_scale``; None: the largest |score|; 1 if all are 0).
    Larger scores clip to the darkest colour.

    Returns: (rgba array (n, 4), ScalarMappable).
    """
    arr = _as_scores(scores)
    signed = bool((arr < 0).any())
    top = _color_scale(arr, vmax, clip_quantile).top
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


def _font(size: float) -> FontProperties:
    """The fallback font list at ``size`` points: the same for measuring and
    drawing, so a box fits its text. (No bold: the emoji fonts have no bold
    face, and asking for one makes matplotlib log a line per text.)"""
    return FontProperties(family=font_families(), size=size)


@lru_cache(maxsize=20000)
def _text_width_at_1pt(text: str) -> float:
    """Width of ``text`` in points at font size 1 (widths scale with the size),
    in the fonts it is drawn with."""
    width, _, _ = text_to_path.get_text_width_height_descent(text, _font(100), ismath=False)
    return width / 100


def _box_width(lab: _Label, style: _Style) -> float:
    return _text_width_at_1pt(lab.text) * style.fontsize + 2 * style.pad


def _shorten_to(lab: _Label, style: _Style, width: float) -> None:
    """Cut a label's text with '…' until its box fits ``width`` points (a long
    target, or a token wider than the line); the label is changed in place."""
    while _box_width(lab, style) > width and len(lab.text) > 1:
        lab.text = lab.text[:-2] + "…"


def _layout(labels: list[_Label], style: _Style, line_width: float) -> list[tuple[float, int, float]]:
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
            fontproperties=_font(style.fontsize),
            color=TARGET_COLOR if is_target else _text_color(colors[i]),
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
        the Figure. Characters no installed font has are drawn as '□' with one
        :class:`MissingGlyphWarning` (see :data:`FONT_FAMILIES`).
    """
    tokens = _check_tokens(tokens)
    values = _as_scores(scores, len(tokens))
    colors, mappable = _colors(values, cmap, diverging_cmap, vmax, clip_quantile)
    scale = _color_scale(values, vmax, clip_quantile)
    if display is None:
        display = readable_tokens(tokens)
    elif len(display) != len(tokens):
        raise ValueError(f"display has {len(display)} texts for {len(tokens)} tokens")
    labels = _token_labels(display)
    target_index = None
    if target is not None:
        target_label = _label(display_token(str(target)), limit=None)
        labels.append(_Label(target_label.text, True, False))
        target_index = len(labels) - 1
    if caption is None and target_prob is not None and target is not None:
        caption = f"target {display_token(str(target))!r} (p = {float(target_prob):.3g})"
    missing: set = set()
    for lab in labels:
        lab.text = _drawable(lab.text, missing)
    title, caption = (None if t is None else _drawable(t, missing) for t in (title, caption))
    _warn_missing(missing)
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
            ax.set_title(heading, fontproperties=_font(10))
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
            fig.text(_MARGIN_X / fig_w, y, text, ha="left", va="top", fontproperties=_font(size), parse_math=False)
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
def _as_scope_result(result: Any) -> ScopeResult:
    """A ScopeResult view of any Captum result (its readable texts, its target)."""
    if isinstance(result, ScopeResult):
        return result
    if not isinstance(result, LLMAttributionResult):
        raise TypeError(f"expected a captum LLMAttributionResult, not {type(result).__name__}")
    return ScopeResult.from_captum(result)


@dataclass
class _Row:
    """What one picture of a result shows: scores (n,), the red target text,
    its probability and a caption that says which scores these are."""

    scores: Any
    target: Optional[str]
    prob: Optional[float]
    caption: Optional[str]


def _result_row(result: ScopeResult, row: Optional[int]) -> _Row:
    """``seq_attr`` (row=None: all output tokens, their scores summed) or
    ``token_attr[row]`` (one output token, given the prompt and the earlier ones)."""
    outputs = result.output_display
    probs = None if result.output_probs is None else [float(p) for p in result.output_probs]
    m = len(outputs)
    if row is None:
        target = result.metadata.get("target")
        target = target if isinstance(target, str) and target else "".join(outputs) or None
        prob = None if probs is None or not probs else float(np.prod(probs))
        if target is None:  # no output tokens (e.g. a target-free scope): no red box
            return _Row(result.seq_attr, None, None, None)
        what = f"{m} tokens, " if m > 1 else ""
        caption = f"target {target!r} ({what}p = {prob:.3g})" if prob is not None else f"target {target!r}"
        if m > 1:
            caption += f" · colours: the sum of the {m} target tokens' scores"
        return _Row(result.seq_attr, target, prob, caption + _view_note(result))
    if result.token_attr is None:
        raise ValueError("row was given but the result has no token_attr")
    m = result.token_attr.shape[0]
    if isinstance(row, bool) or not isinstance(row, int) or not -m <= row < m:
        raise ValueError(f"row must be an int in [0, {m}), got {row!r}")
    row = row % m
    prob = None if probs is None else probs[row]
    caption = f"target token {row + 1} of {m}: {outputs[row]!r}" + ("" if prob is None else f" (p = {prob:.3g})")
    if row > 0:
        caption += f", after {''.join(outputs[:row])!r}"
    caption += " · colours: this token's scores"
    return _Row(result.token_attr[row], outputs[row], prob, caption + _view_note(result))


_RULE_WORDS = {"l2": "root of the sum of squares", "sum": "sum"}


def _view_note(result: ScopeResult) -> str:
    """' · per word: root of the sum of squares of its tokens' for a word/span view."""
    view = result.metadata.get("view")
    if not isinstance(view, dict) or view.get("rule") not in _RULE_WORDS:
        return ""
    unit = "word" if view.get("unit") == "words" else "span"
    return f" · per {unit}: {_RULE_WORDS[view['rule']]} of its tokens' scores"


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
    result = _as_scope_result(result)
    shown = _result_row(result, row)
    kwargs.setdefault("caption", shown.caption)
    fig = plot_token_heatmap(
        list(result.input_tokens), shown.scores, display=result.input_display, target=shown.target,
        target_prob=shown.prob, **kwargs,
    )  # fmt: skip
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
# Browsers fall back per character too; naming the emoji/CJK fonts first-hand
# makes them prefer the colour emoji font over a monochrome symbol font.
_HTML_FONTS = (
    'sans-serif, "Noto Sans CJK JP", "Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji"'
)


@dataclass
class _HtmlLine:
    """One line of the HTML: raw tokens, readable texts, scores, target, probability."""

    tokens: list[str]
    display: list[str]
    scores: np.ndarray
    target: Optional[str]
    prob: Optional[float]


def render_html(
    result: Any,
    title: Optional[str] = None,
    *,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
    clip_quantile: Optional[float] = CLIP_QUANTILE,
    full_page: bool = False,
) -> str:
    """Self-contained HTML (inline styles only, no script, no external asset).

    Args:
        result: an LLMAttributionResult, or a tuple (tokens, scores) or
            (tokens, scores, target). With a ``token_attr`` of several rows,
            one line per output token; otherwise one line of ``seq_attr``.
        title: heading; default built from ``metadata["scope"]``/``["model"]`` if any.
        cmap, diverging_cmap, vmax, clip_quantile: as in ``plot_token_heatmap``
            (same colours). One colour scale is shared by all lines; the legend
            says where it clips.
        full_page: wrap the fragment in an <html> page. Default False (a <div>,
            which is what Jupyter's ``_repr_html_`` wants).
    Tokens show their readable text (the raw piece and score are in the tooltip);
    every token and metadata string is escaped with ``html.escape``.
    """
    lines, metadata = _html_lines(result)
    all_scores = np.concatenate([line.scores for line in lines])
    colors, mappable = _colors(all_scores, cmap, diverging_cmap, vmax, clip_quantile)
    note = _color_scale(all_scores, vmax, clip_quantile).note
    if title is None:
        title = " · ".join(str(metadata[k]) for k in ("scope", "model") if metadata.get(k)) or None
    parts = [f'<div style="font-family: {html.escape(_HTML_FONTS)}; font-size: 14px; line-height: 1.9; max-width: 60em;">']
    if title:
        parts.append(f'<div style="font-weight: bold; margin-bottom: 0.4em;">{html.escape(str(title))}</div>')
    start = 0
    for line in lines:
        row_colors = colors[start : start + len(line.tokens)]
        start += len(line.tokens)
        parts.append(_html_line(line, row_colors))
    parts.append(_html_legend(mappable, note))
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


def _html_lines(result: Any) -> tuple[list[_HtmlLine], dict]:
    """The lines of render_html and the metadata to show."""
    if isinstance(result, tuple):
        if len(result) not in (2, 3):
            raise ValueError("a tuple for render_html must be (tokens, scores) or (tokens, scores, target)")
        tokens = _check_tokens(result[0])
        target = display_token(str(result[2])) if len(result) == 3 and result[2] is not None else None
        scores = _as_scores(result[1], len(tokens))
        return [_HtmlLine(tokens, readable_tokens(tokens), scores, target, None)], {}
    result = _as_scope_result(result)
    tokens = _check_tokens(result.input_tokens)
    n_rows = 0 if result.token_attr is None else result.token_attr.shape[0]
    rows = [_result_row(result, i) for i in range(n_rows)] if n_rows > 1 else [_result_row(result, None)]
    lines = [
        _HtmlLine(tokens, result.input_display, _as_scores(r.scores, len(tokens)), r.target, r.prob) for r in rows
    ]
    return lines, dict(result.metadata)


def _html_line(line: _HtmlLine, colors) -> str:
    spans = []
    named = _spans.token_labels(line.display, numbered=True)
    for i, (lab, token, name, score, color) in enumerate(
        zip(_token_labels(line.display), line.tokens, named, line.scores, colors)
    ):
        if lab.word_start:
            spans.append(" ")
        tip = html.escape(f"#{i} {token!r} = {name!r}: {score:.6g}")
        spans.append(
            f'<span title="{tip}" style="background: {to_hex(color)}; color: {_text_color(color)}; '
            f'border-radius: 4px; padding: 1px 3px; margin: 0 1px;">{html.escape(lab.text)}</span>'
        )
        if lab.newline_after:
            spans.append("<br>")
    if line.target is not None:
        lab = _label(line.target, limit=None)
        spans.append(
            f' <span title="target" style="color: {TARGET_COLOR}; font-weight: bold; '
            f'border: 1.5px solid {TARGET_COLOR}; border-radius: 4px; padding: 0 3px;">'
            f"{html.escape(lab.text)}</span>"
        )
        if line.prob is not None:
            spans.append(f' <span style="color: #666; font-size: 12px;">p = {line.prob:.3g}</span>')
    return f'<div style="margin: 0.3em 0; padding-bottom: 0.2em; border-bottom: 1px solid #eee;">{"".join(spans)}</div>'


def _html_legend(mappable: ScalarMappable, note: Optional[str] = None, n_stops: int = 11) -> str:
    lo, hi = mappable.norm.vmin, mappable.norm.vmax
    stops = ", ".join(to_hex(mappable.to_rgba(v)) for v in np.linspace(lo, hi, n_stops))
    clipped = "" if note is None else f" <span>(colour {html.escape(note)})</span>"
    return (
        '<div style="font-size: 12px; margin-top: 0.4em;">influence '
        f"<span>{lo:.3g}</span> "
        f'<span style="display: inline-block; width: 12em; height: 0.8em; vertical-align: middle; '
        f'border: 1px solid #bbb; background: linear-gradient(to right, {stops});"></span> '
        f"<span>{hi:.3g}</span>{clipped}</div>"
    )
