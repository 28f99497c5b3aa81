"""One picture and one page that compare several maps of the same prompt: every
method's scores on the same row of tokens, stacked, so that a column is one
token under every method (:func:`plot_compare`, :func:`save_compare_png`,
:func:`render_compare_html`, :func:`save_compare_html`).

Each row has its own colour scale: scopes and baselines score in different
units (a norm of a VJP, a trace, a log-probability difference), so one shared
scale would leave all but the largest row white. The end of each row's scale is
the 99th percentile of its |scores| (as in :mod:`captum_jscopes.display.heatmap`),
stated beside the row, with the row's maximum where larger scores clip. Signed
rows (leave-one-out, say) use the diverging map centred at 0.

``jscopes attribute --scope all`` (or ``--compare m1,m2``) writes
``compare.png`` and ``compare.html`` with :func:`save_compare`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import text_to_path

from captum_jscopes.display.common import CLIP_QUANTILE, DIVERGING_CMAP, TARGET_COLOR, PathLike, as_scores
from captum_jscopes.display.common import color_scale, text_color, token_colors
from captum_jscopes.display.fonts import drawable, font_properties, warn_missing
from captum_jscopes.display.heatmap import PNG_DPI
from captum_jscopes.display.labels import box_labels

__all__ = ["CompareRow", "plot_compare", "save_compare_png", "render_compare_html", "save_compare_html",
           "save_compare", "scale_text"]


@dataclass
class CompareRow:
    """One method's map: its name, its scores (n,) over the shared tokens, and
    an optional note (e.g. how its word scores were made)."""

    label: str
    scores: Any
    note: str = ""


def scale_text(scores: Any, clip_quantile: Optional[float] = CLIP_QUANTILE) -> str:
    """The scale a row is drawn on, in words: ``'0 – 0.0123'`` (``'±0.0123'`` for
    signed scores), and ``', max 0.52'`` where larger scores clip."""
    values = as_scores(scores)
    scale = color_scale(values, None, clip_quantile)
    text = f"±{scale.top:.3g}" if (values < 0).any() else f"0 – {scale.top:.3g}"
    largest = float(np.abs(values).max()) if values.size else 0.0
    return text + (f", max {largest:.3g}" if scale.note else "")


@lru_cache(maxsize=20000)
def _width(text: str) -> float:
    """Width of ``text`` in points at font size 1, in the fonts it is drawn with."""
    return text_to_path.get_text_width_height_descent(text, font_properties(100), ismath=False)[0] / 100


@dataclass
class _Prepared:
    """What the picture and the page draw: per row its scores, colours and scale note; the box labels."""

    pairs: list[tuple[CompareRow, np.ndarray]]
    colored: list[np.ndarray]
    notes: list[str]
    labels: list


def _prepare(display: Sequence[str], rows: Sequence[CompareRow], cmap: str, diverging_cmap: str,
             clip_quantile: Optional[float]) -> _Prepared:
    if not rows:
        raise ValueError("no row to compare")
    pairs = [(row, as_scores(row.scores, len(display), name=f"scores of {row.label!r}")) for row in rows]
    colored = [token_colors(scores, cmap, diverging_cmap, None, clip_quantile)[0] for _, scores in pairs]
    notes = [scale_text(scores, clip_quantile) + (f" · {row.note}" if row.note else "") for row, scores in pairs]
    return _Prepared(pairs, colored, notes, box_labels(display))


# ------------------------------------------------------------------ the picture
_MARGIN = 0.2
_HEAD_H = 0.3  # per title / caption line


def plot_compare(
    display: Sequence[str],
    rows: Sequence[CompareRow],
    *,
    title: Optional[str] = None,
    caption: Optional[str] = None,
    target: Optional[str] = None,
    max_width: float = 13.0,
    fontsize: float = 9.0,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    clip_quantile: Optional[float] = CLIP_QUANTILE,
) -> Figure:
    """Every row's scores as coloured boxes over the same tokens, one row per
    method under each line of tokens, each row on its own colour scale.

    Args:
        display: n readable token texts (``ScopeResult.input_display``, or a
            word view's: one text per word; "" marks the 2nd ... token of a character).
        rows: the methods' :class:`CompareRow` (scores (n,) each).
        title, caption: lines above the boxes. Default none.
        target: the explained text, shown in red after the title. Default none.
        max_width: figure width in inches. Default 13.
        fontsize: token font size in points. Default 9.
        cmap, diverging_cmap, clip_quantile: as in
            :func:`~captum_jscopes.display.heatmap.plot_token_heatmap`, per row.
    Returns:
        the Figure (Agg canvas).
    """
    display = list(display)
    n = len(display)
    prepared = _prepare(display, rows, cmap, diverging_cmap, clip_quantile)
    pairs, colored, notes, labels = prepared.pairs, prepared.colored, prepared.notes, prepared.labels
    missing: set = set()
    for lab in labels:
        lab.text = drawable(lab.text, missing)
    heading = [drawable(t, missing) for t in (title, caption) if t]
    if target is not None:
        heading.append(drawable(f"target {target!r}", missing))
    warn_missing(missing)
    pad, box_h, gap, word_gap = 0.3 * fontsize, 1.5 * fontsize, 0.15 * fontsize, 0.5 * fontsize
    row_h = 1.75 * fontsize
    widths = [_width(lab.text) * fontsize + 2 * pad for lab in labels]
    label_w = max(_width(row.label) * fontsize for row, _ in pairs) / 72 + 0.25
    scale_w = max(_width(text) * 0.8 * fontsize for text in notes) / 72 + 0.2
    line_w = max(2.0, max_width - label_w - scale_w - 2 * _MARGIN) * 72
    lines: list[list[tuple[int, float]]] = [[]]  # per line: (token, x)
    x = 0.0
    for i, (lab, w) in enumerate(zip(labels, widths)):
        step = (word_gap if lab.word_start else gap) if x > 0 else 0.0
        if x > 0 and x + step + w > line_w:
            lines.append([])
            x, step = 0.0, 0.0
        lines[-1].append((i, x + step))
        x += step + w
        if lab.newline_after and i < n - 1:
            lines.append([])
            x = 0.0
    lines = [line for line in lines if line]
    line_w = max(x + widths[i] for line in lines for i, x in line)  # a short prompt: a narrower figure
    heading_w = max((_width(t) * 11 / 72 for t in heading), default=0.0)
    fig_w = min(max_width, max(label_w + line_w / 72 + scale_w, heading_w) + 2 * _MARGIN)
    block_h = len(pairs) * row_h + 0.9 * fontsize
    fig_h = 2 * _MARGIN + _HEAD_H * len(heading) + len(lines) * block_h / 72
    fig = Figure(figsize=(fig_w, fig_h), facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    width_pt, height_pt = fig_w * 72, fig_h * 72
    ax.set_xlim(0, width_pt)
    ax.set_ylim(height_pt, 0)
    ax.set_axis_off()
    y = _MARGIN * 72
    for k, text in enumerate(heading):
        red = target is not None and k == len(heading) - 1
        ax.text(_MARGIN * 72, y, text, ha="left", va="top", fontproperties=font_properties(11 if k == 0 and title else 9),
                color=TARGET_COLOR if red else "black", parse_math=False)
        y += _HEAD_H * 72
    x0 = (_MARGIN + label_w) * 72
    for line in lines:
        for r, (row, _) in enumerate(pairs):
            top = y + r * row_h
            ax.text(_MARGIN * 72, top + box_h / 2, row.label, ha="left", va="center",
                    fontproperties=font_properties(fontsize), parse_math=False)
            for i, xi in line:
                color = colored[r][i]
                ax.add_patch(FancyBboxPatch((x0 + xi, top), widths[i], box_h,
                                            boxstyle=f"round,pad=0,rounding_size={0.3 * fontsize}",
                                            facecolor=color, edgecolor=(0.75, 0.75, 0.75, 1.0), linewidth=0.4))
                ax.text(x0 + xi + widths[i] / 2, top + box_h / 2, labels[i].text, ha="center", va="center",
                        fontproperties=font_properties(fontsize), color=text_color(color), parse_math=False)
            ax.text(x0 + line_w + 0.15 * 72, top + box_h / 2, notes[r], ha="left", va="center",
                    fontproperties=font_properties(0.8 * fontsize), color="#444444", parse_math=False)
        y += block_h
    return fig


def save_compare_png(display: Sequence[str], rows: Sequence[CompareRow], path: PathLike, **kwargs: Any) -> Path:
    """Write :func:`plot_compare` as a PNG (dpi 150). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_compare(display, rows, **kwargs).savefig(path, dpi=PNG_DPI, format="png", facecolor="white")
    return path


# ------------------------------------------------------------------ the page
#: about this many characters of tokens per block of the page
_HTML_LINE_CHARS = 60


def render_compare_html(
    display: Sequence[str],
    rows: Sequence[CompareRow],
    *,
    title: Optional[str] = None,
    caption: Optional[str] = None,
    target: Optional[str] = None,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    clip_quantile: Optional[float] = CLIP_QUANTILE,
) -> str:
    """The same comparison as a self-contained HTML page (no script, no external
    asset, every text escaped): blocks of tokens, in each a table with one row
    per method, its scale in the last column; a cell's tooltip gives the token's
    index, text and score."""
    display = list(display)
    prepared = _prepare(display, rows, cmap, diverging_cmap, clip_quantile)
    pairs, colored, notes, labels = prepared.pairs, prepared.colored, prepared.notes, prepared.labels
    blocks: list[list[int]] = [[]]
    chars = 0
    for i, lab in enumerate(labels):
        if blocks[-1] and chars + len(lab.text) > _HTML_LINE_CHARS:
            blocks.append([])
            chars = 0
        blocks[-1].append(i)
        chars += len(lab.text) + 1
    esc = html.escape
    parts = ['<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">',
             f"<title>{esc(title or 'Maps compared')}</title>",
             "<style>body{font-family:sans-serif,\"Noto Sans CJK JP\",\"Noto Color Emoji\";font-size:14px}"
             "table{border-collapse:separate;border-spacing:2px;margin:0.6em 0}"
             "td{padding:1px 4px;border-radius:4px;white-space:pre}"
             "td.label{font-weight:bold;padding-right:1em}td.scale{color:#555;font-size:12px;padding-left:1em}"
             ".target{color:" + TARGET_COLOR + ";font-weight:bold}</style></head>\n<body>"]
    if title:
        parts.append(f"<h3>{esc(title)}</h3>")
    if caption:
        parts.append(f"<p>{esc(caption)}</p>")
    if target is not None:
        parts.append(f'<p>target <span class="target">{esc(repr(target))}</span></p>')
    for block in blocks:
        parts.append('<table dir="ltr">')
        for r, (row, scores) in enumerate(pairs):
            cells = [f'<td class="label">{esc(row.label)}</td>']
            for i in block:
                color = colored[r][i]
                tip = esc(f"#{i} {display[i]!r}: {scores[i]:.6g}")
                cells.append(f'<td title="{tip}" style="background:{to_hex(color)};color:{text_color(color)}">'
                             f"{esc(labels[i].text)}</td>")
            cells.append(f'<td class="scale">{esc(notes[r])}</td>')
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append('<p style="font-size:12px;color:#555">Each row has its own colour scale, from 0 (white) to the '
                 "value on its right (the 99th percentile of its |scores|; larger ones clip: the row's max is "
                 "given); signed rows run from red (negative) to green.</p>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def save_compare_html(display: Sequence[str], rows: Sequence[CompareRow], path: PathLike, **kwargs: Any) -> Path:
    """Write :func:`render_compare_html` as UTF-8. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_compare_html(display, rows, **kwargs), encoding="utf-8")
    return path


def save_compare(display: Sequence[str], rows: Sequence[CompareRow], stem: PathLike, **kwargs: Any) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.html`` (:func:`save_compare_png`,
    :func:`save_compare_html`, the same ``kwargs``). Returns both paths."""
    stem = Path(stem)
    return [save_compare_png(display, rows, stem.with_suffix(".png"), **kwargs),
            save_compare_html(display, rows, stem.with_suffix(".html"), **kwargs)]
