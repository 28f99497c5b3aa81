"""Fonts of the pictures: a fallback list that covers CJK and emoji where such
fonts are installed (:data:`FONT_FAMILIES`), and characters no installed font
has drawn as :data:`MISSING_GLYPH` with one :class:`MissingGlyphWarning` per
figure instead of one per glyph. See docs/reading.md.
"""

from __future__ import annotations

import contextlib
import unicodedata
import warnings
from functools import lru_cache
from typing import Sequence

import matplotlib
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.ft2font import FT2Font

__all__ = [
    "FONT_FAMILIES",
    "MISSING_GLYPH",
    "FONT_HINT",
    "MissingGlyphWarning",
    "font_families",
    "font_properties",
    "use_fonts",
    "drawable",
    "warn_missing",
    "drawable_labels",
]

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


def drawable(text: str, missing: set) -> str:
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


def warn_missing(missing: set) -> None:
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
    """Each list of labels made drawable (see :func:`drawable`), with one
    :class:`MissingGlyphWarning` for all of them together."""
    missing: set = set()
    out = [[drawable(label, missing) for label in labels] for labels in groups]
    warn_missing(missing)
    return out


def font_properties(size: float) -> FontProperties:
    """The fallback font list at ``size`` points: the same for measuring and
    drawing, so a box fits its text. (No bold: the emoji fonts have no bold
    face, and asking for one makes matplotlib log a line per text.)"""
    return FontProperties(family=font_families(), size=size)

