"""Fonts of the pictures: a fallback list that covers every script of the text
where fonts for it are installed, and characters no installed font has drawn
as :data:`MISSING_GLYPH` with one :class:`MissingGlyphWarning` per figure
(instead of one per glyph) that names the Debian packages with fonts for the
scripts missing. See docs/reading.md.

The list starts with :data:`FONT_FAMILIES` (Latin, Greek, Cyrillic, CJK,
emoji); a character none of them has (Devanagari, Thai, Bengali, Tamil,
Georgian, Ethiopic ...) adds the first installed font that has it (Noto Sans
first), found once per process among all the fonts matplotlib knows and, should
none have it, the system fonts installed since matplotlib cached its list.
Shaping and right-to-left order: :mod:`captum_jscopes.display.shaping`.
"""

from __future__ import annotations

import contextlib
import unicodedata
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
from fontTools import unicodedata as script_data
from matplotlib import font_manager
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.ft2font import FT2Font

from captum_jscopes.display.shaping import for_matplotlib

__all__ = [
    "FONT_FAMILIES",
    "MISSING_GLYPH",
    "FONT_HINT",
    "MissingGlyphWarning",
    "font_families",
    "font_for",
    "font_package",
    "font_hint",
    "font_properties",
    "use_fonts",
    "drawable",
    "warn_missing",
    "drawable_labels",
]

#: Font families tried first, in order, for every character (matplotlib's
#: per-glyph fallback); only the installed ones are used. DejaVu Sans (shipped
#: with matplotlib) covers Latin, Greek, Cyrillic, Arabic and Hebrew; the Noto
#: CJK fonts Chinese, Japanese, Korean; Symbola / Noto Emoji / Segoe UI Emoji the
#: emoji. Other scripts add their own font when a text needs it (:func:`font_for`).
#: Colour bitmap fonts (Noto Color Emoji, Apple Color Emoji) cannot be scaled by
#: matplotlib's FreeType renderer, so they serve the HTML (the browser) only.
FONT_FAMILIES = (
    "DejaVu Sans",
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
    "Hiragino Sans", "PingFang SC", "Microsoft YaHei", "Malgun Gothic", "Arial Unicode MS",
    "Noto Emoji", "Symbola", "Segoe UI Emoji", "Segoe UI Symbol", "Noto Sans Symbols 2", "Noto Sans Symbols",
)  # fmt: skip
MISSING_GLYPH = "□"  # drawn for a character no installed font has (DejaVu Sans has it)
#: the Debian packages of every font the pictures can use (scripts/setup.sh installs them);
#: a warning names only those of the scripts missing (:func:`font_hint`)
FONT_HINT = "apt-get install fonts-noto-core fonts-noto-cjk fonts-symbola"

# Debian packages by script (ISO 15924 codes, fontTools' Unicode script data):
# the CJK scripts are in fonts-noto-cjk, symbols and emoji in fonts-symbola, and
# every other script that has a Noto font in fonts-noto-core.
_CJK_SCRIPTS = {"Hani", "Hira", "Kana", "Hrkt", "Hang", "Bopo"}
_NO_SCRIPT = {"Zyyy", "Zinh", "Zzzz"}  # common, inherited, unknown


class MissingGlyphWarning(UserWarning):
    """Some characters of a figure have no glyph in the installed fonts."""


@dataclass(frozen=True)
class _Font:
    family: str
    chars: frozenset


def _charmap(path: str, index: int = 0) -> Optional[frozenset]:
    try:
        font = FT2Font(path, face_index=index) if index else FT2Font(path)  # face_index: matplotlib >= 3.10
        return frozenset(font.get_charmap())
    except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it
        return None


@lru_cache(maxsize=1)
def _preferred_fonts() -> tuple[_Font, ...]:
    """The installed FONT_FAMILIES with the code points they cover, in order."""
    paths: dict[str, tuple[str, int]] = {}
    for entry in fontManager.ttflist:
        if entry.name in FONT_FAMILIES and entry.style == "normal":
            paths.setdefault(entry.name, (entry.fname, getattr(entry, "index", 0)))
    found, seen = [], set()
    for family in FONT_FAMILIES:
        where = paths.get(family)
        if where is None or where[0] in seen:  # the CJK families share one file
            continue
        seen.add(where[0])
        chars = _charmap(*where)
        if chars is not None:
            found.append(_Font(family, chars))
    return tuple(found)


#: fonts added for the characters the preferred ones lack, in the order first needed
_added: list[_Font] = []


def _fonts() -> list[_Font]:
    return [*_preferred_fonts(), *_added]


def _rank(name: str) -> tuple:
    """Noto Sans first, then other sans fonts; plain faces before UI, mono, display ones."""
    special = any(word in name for word in ("Mono", " UI", "Display", "Looped", "Unjoined", "Emoji"))
    return (0 if name.startswith("Noto Sans ") else 1 if "Sans" in name else 2, special, len(name), name)


@lru_cache(maxsize=1)
def _candidates() -> tuple[_Font, ...]:
    """Every regular face of the system matplotlib knows besides the preferred
    ones, best first. Not matplotlib's own (its TeX fonts map letters to symbols,
    and its Last Resort font draws every character as a box)."""
    preferred = {font.family for font in _preferred_fonts()}
    own = str(Path(matplotlib.get_data_path()).resolve())
    entries: dict[str, tuple[str, int]] = {}
    for entry in fontManager.ttflist:
        if (entry.style == "normal" and entry.weight in (400, "normal", "regular") and entry.name not in preferred
                and not str(Path(entry.fname).resolve()).startswith(own)):
            entries.setdefault(entry.name, (entry.fname, getattr(entry, "index", 0)))
    fonts = []
    for name in sorted(entries, key=_rank):
        chars = _charmap(*entries[name])
        if chars:
            fonts.append(_Font(name, chars))
    return tuple(fonts)


_rescanned = False


def _add_system_fonts() -> bool:
    """Tell matplotlib about system fonts installed since it cached its font list
    (once per process). Whether there were any."""
    global _rescanned
    if _rescanned:
        return False
    _rescanned = True
    known = {entry.fname for entry in fontManager.ttflist}
    new = [path for path in font_manager.findSystemFonts() if path not in known]
    for path in new:
        with contextlib.suppress(Exception):  # a font matplotlib cannot read: skip it
            fontManager.addfont(path)
    if new:
        _preferred_fonts.cache_clear()
        _candidates.cache_clear()
    return bool(new)


def font_for(ch: str) -> Optional[str]:
    """The family that draws ``ch`` in the pictures, or None when no installed font
    has it. A font found outside :data:`FONT_FAMILIES` joins the fallback list."""
    code = ord(ch)
    for font in _fonts():
        if code in font.chars:
            return font.family
    for _ in range(2):
        font = next((font for font in _candidates() if code in font.chars), None)
        if font is not None:
            _added.append(font)
            return font.family
        if not _add_system_fonts():
            break
        for font in _preferred_fonts():  # a preferred family installed since
            if code in font.chars:
                return font.family
    return None


def font_families() -> list[str]:
    """The installed families of :data:`FONT_FAMILIES`, in fallback order, then
    those added for other scripts (:func:`font_for`); at least DejaVu Sans,
    which matplotlib ships."""
    return [font.family for font in _fonts()] or ["DejaVu Sans"]


@contextlib.contextmanager
def use_fonts():
    """Context in which new matplotlib text uses the fallback list (for Captum's plots)."""
    with matplotlib.rc_context({"font.family": font_families()}):
        yield


# Characters that draw nothing (joiners, variation selectors): dropped when no
# font has them, rather than drawn as a box.
_INVISIBLE = {"Cf", "Mn", "Me"}


def drawable(text: str, missing: set) -> str:
    """``text`` as the pictures draw it: every character no installed font covers
    replaced by MISSING_GLYPH (invisible ones dropped) and added to ``missing``;
    fonts for the other scripts found (:func:`font_for`); shaped and ordered for
    matplotlib (:func:`~captum_jscopes.display.shaping.for_matplotlib`)."""
    out = []
    for ch in text:
        if ch.isspace() or font_for(ch) is not None:
            out.append(ch)
            continue
        missing.add(ch)
        if unicodedata.category(ch) not in _INVISIBLE:
            out.append(MISSING_GLYPH)
    return for_matplotlib("".join(out))


def _script(ch: str) -> str:
    """ISO 15924 code of the script of ``ch``; for a common or inherited
    character the first script that uses it (the danda '।': Bengali), if any."""
    script = script_data.script(ch)
    if script in _NO_SCRIPT:
        script = next(iter(sorted(script_data.script_extension(ch) - _NO_SCRIPT)), script)
    return script


def font_package(ch: str) -> Optional[str]:
    """The Debian package with a font for ``ch``: fonts-noto-cjk (Chinese,
    Japanese, Korean), fonts-symbola (symbols, emoji) or fonts-noto-core (every
    other script: Arabic, Hebrew, Devanagari, Thai, Bengali, Tamil, Georgian ...);
    None for a private-use or unassigned character (no font has it)."""
    if unicodedata.category(ch) in ("Co", "Cn", "Cs"):
        return None
    script = _script(ch)
    if script in _CJK_SCRIPTS:
        return "fonts-noto-cjk"
    if script in _NO_SCRIPT:
        return "fonts-symbola"
    return "fonts-noto-core"


def _script_label(ch: str) -> str:
    script = _script(ch)
    return "symbols" if script in _NO_SCRIPT else script_data.script_name(script)


def font_hint(chars) -> str:
    """What to install for ``chars``: their scripts and the Debian packages with
    fonts for them (``"for the pictures install fonts for Devanagari, Thai, e.g.
    on Debian: apt-get install fonts-noto-core"``); private-use and unassigned
    characters are said to have none."""
    shown = sorted(set(chars))
    known = [ch for ch in shown if font_package(ch) is not None]
    packages = " ".join(sorted({font_package(ch) for ch in known}))
    scripts = ", ".join(dict.fromkeys(_script_label(ch) for ch in known))
    hint = f"for the pictures install fonts for {scripts}, e.g. on Debian: apt-get install {packages}" if known else ""
    if len(known) < len(shown):
        hint += ("; " if hint else "") + "no font package has private-use or unassigned characters"
    return hint


def warn_missing(missing: set) -> None:
    """One warning for all characters of a figure that have no glyph, naming
    their scripts and the Debian packages with fonts for them."""
    shown = [ch for ch in sorted(missing) if unicodedata.category(ch) not in _INVISIBLE]
    if not shown:
        return
    listed = ", ".join(f"{ch} (U+{ord(ch):04X})" for ch in shown[:8]) + (" ..." if len(shown) > 8 else "")
    warnings.warn(
        f"{len(shown)} character(s) have no glyph in the installed fonts and are drawn as "
        f"{MISSING_GLYPH}: {listed}. The HTML page shows them; {font_hint(shown)} (docs/reading.md)",
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

