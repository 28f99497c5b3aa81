"""Pictures and HTML of token attributions, in the style of the Jacobian Scopes
paper: every token is a rounded box coloured by its influence, lines wrap, the
explained (target) token comes last in red.

This module is the documented entry point; it only gathers the public names of
the modules that do the work, each of which can be imported directly:

* :mod:`captum_jscopes.core.text`: a token's readable text (byte-level pieces
  merged into the characters they spell, :func:`display_token`, :func:`readable_tokens`);
* :mod:`captum_jscopes.display.fonts`: fonts for every script of the text
  (:data:`FONT_FAMILIES` first) and the missing-glyph warning that names the
  Debian packages to install;
* :mod:`captum_jscopes.display.shaping`: Arabic and Hebrew joined and read right
  to left, Devanagari and Thai shaped (matplotlib's libraqm engine);
* :mod:`captum_jscopes.display.heatmap`: :func:`plot_token_heatmap`, :func:`save_heatmap`;
* :mod:`captum_jscopes.display.html`: :func:`render_html`, :func:`save_html`;
* :mod:`captum_jscopes.display.series`: :func:`plot_series_influence`.

Works for any Captum ``LLMAttributionResult`` (ours or a baseline's). Scores
that are all >= 0 use a sequential colour map starting at 0; signed scores
(e.g. Integrated Gradients, Feature Ablation) use a diverging map centred at 0.
PNG and HTML take their colours from the same helper so they agree. The colour
scale ends at the 99th percentile of |score| (larger scores clip, and the
colour bar says so), so one attention sink does not wash out a long prompt.
See docs/reading.md.
"""

from __future__ import annotations

from captum_jscopes.display.common import CLIP_QUANTILE, DIVERGING_CMAP, TARGET_COLOR
from captum_jscopes.display.fonts import (
    FONT_FAMILIES,
    FONT_HINT,
    MISSING_GLYPH,
    MissingGlyphWarning,
    drawable_labels,
    font_families,
    use_fonts,
)
from captum_jscopes.display.heatmap import PNG_DPI, plot_token_heatmap, save_heatmap
from captum_jscopes.display.html import render_html, save_html
from captum_jscopes.display.series import plot_series_influence
from captum_jscopes.core.text import display_token, readable_tokens
from captum_jscopes.display.labels import NEWLINE_MARK

__all__ = [
    "CLIP_QUANTILE",
    "DIVERGING_CMAP",
    "TARGET_COLOR",
    "NEWLINE_MARK",
    "PNG_DPI",
    "FONT_FAMILIES",
    "FONT_HINT",
    "MISSING_GLYPH",
    "MissingGlyphWarning",
    "drawable_labels",
    "font_families",
    "use_fonts",
    "display_token",
    "readable_tokens",
    "plot_token_heatmap",
    "save_heatmap",
    "render_html",
    "save_html",
    "plot_series_influence",
]
