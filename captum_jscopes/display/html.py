"""Self-contained HTML of token attributions (:func:`render_html`,
:func:`save_html`): inline styles only, no script, no external asset; the same
colours as the heatmap (:func:`captum_jscopes.display.common.token_colors`) and
the same readable text (:mod:`captum_jscopes.core.text`)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import to_hex

from captum_jscopes.display.common import CLIP_QUANTILE, DIVERGING_CMAP, TARGET_COLOR, PathLike, as_scores, check_tokens
from captum_jscopes.display.common import color_scale, result_row, result_view, text_color, token_colors
from captum_jscopes.core.text import display_token, readable_tokens, token_labels
from captum_jscopes.display.labels import box_labels, token_label

__all__ = ["render_html", "save_html"]


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
    colors, mappable = token_colors(all_scores, cmap, diverging_cmap, vmax, clip_quantile)
    note = color_scale(all_scores, vmax, clip_quantile).note
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
        tokens = check_tokens(result[0])
        target = display_token(str(result[2])) if len(result) == 3 and result[2] is not None else None
        scores = as_scores(result[1], len(tokens))
        return [_HtmlLine(tokens, readable_tokens(tokens), scores, target, None)], {}
    result = result_view(result)
    tokens = check_tokens(result.input_tokens)
    n_rows = 0 if result.token_attr is None else result.token_attr.shape[0]
    rows = [result_row(result, i) for i in range(n_rows)] if n_rows > 1 else [result_row(result, None)]
    lines = [
        _HtmlLine(tokens, result.input_display, as_scores(r.scores, len(tokens)), r.target, r.prob) for r in rows
    ]
    return lines, dict(result.metadata)


def _html_line(line: _HtmlLine, colors) -> str:
    spans = []
    named = token_labels(line.display, numbered=True)
    for i, (lab, token, name, score, color) in enumerate(
        zip(box_labels(line.display), line.tokens, named, line.scores, colors)
    ):
        if lab.word_start:
            spans.append(" ")
        tip = html.escape(f"#{i} {token!r} = {name!r}: {score:.6g}")
        spans.append(
            f'<span title="{tip}" style="background: {to_hex(color)}; color: {text_color(color)}; '
            f'border-radius: 4px; padding: 1px 3px; margin: 0 1px;">{html.escape(lab.text)}</span>'
        )
        if lab.newline_after:
            spans.append("<br>")
    if line.target is not None:
        lab = token_label(line.target, limit=None)
        spans.append(
            f' <span title="target" style="color: {TARGET_COLOR}; font-weight: bold; '
            f'border: 1.5px solid {TARGET_COLOR}; border-radius: 4px; padding: 0 3px;">'
            f"{html.escape(lab.text)}</span>"
        )
        if line.prob is not None:
            spans.append(f' <span style="color: #666; font-size: 12px;">p = {line.prob:.3g}</span>')
    # dir="auto": an Arabic or Hebrew prompt reads from the right, as in the picture
    return (f'<div dir="auto" style="margin: 0.3em 0; padding-bottom: 0.2em; border-bottom: 1px solid #eee;">'
            f'{"".join(spans)}</div>')


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
