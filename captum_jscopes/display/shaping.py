"""Right-to-left and complex scripts in the pictures: how a text reaches matplotlib.

Arabic letters take a different form at the start, middle and end of a word
and are joined; Arabic and Hebrew read from right to left; Devanagari, Bengali
and Thai stack and combine characters into clusters (the conjunct क्ष is one
glyph). None of this is in the characters themselves: a *shaping* engine
(HarfBuzz) picks the glyphs and the *bidi* algorithm (Unicode UAX #9) their order.

* matplotlib >= 3.11 (Python >= 3.11) lays every text out with libraqm, which
  runs HarfBuzz and FriBiDi: all scripts are shaped and ordered, Devanagari
  conjuncts included (:data:`HAS_SHAPING`), and :func:`for_matplotlib` leaves
  the text as it is.
* Older matplotlib (Python 3.10) places one glyph per character from left to
  right. There :func:`for_matplotlib` gives Arabic its joined letter forms
  (``arabic-reshaper``) and puts right-to-left runs in display order
  (``python-bidi``): Arabic and Hebrew read right, but Indic and Thai clusters
  stay unshaped (their marks are placed, no conjuncts are formed). Upgrade
  matplotlib for those.

The boxes of a token row follow the direction of the prompt
(:func:`right_to_left`, Unicode's paragraph rule: its first strong character):
an Arabic or Hebrew prompt starts at the right. Each box holds one token, so a
right-to-left word inside a left-to-right prompt stays in token order.
"""

from __future__ import annotations

from functools import lru_cache

from bidi import get_base_level, get_display
from matplotlib import ft2font

__all__ = ["HAS_SHAPING", "right_to_left", "for_matplotlib", "visual_order"]

#: whether matplotlib's own text engine shapes and orders text (libraqm: HarfBuzz + FriBiDi)
HAS_SHAPING = bool(getattr(ft2font, "__libraqm_version__", ""))


def right_to_left(text: str) -> bool:
    """Whether ``text`` reads from right to left as a paragraph: its first strong
    character is Arabic, Hebrew, Syriac, Thaana, N'Ko ... (python-bidi)."""
    return bool(text) and get_base_level(text) == 1


def for_matplotlib(text: str) -> str:
    """``text`` as matplotlib's text engine must be given it to show it right:
    itself where matplotlib shapes (:data:`HAS_SHAPING`), else :func:`visual_order`.
    Measure and draw the same string."""
    return text if HAS_SHAPING or not text else visual_order(text)


@lru_cache(maxsize=20000)
def visual_order(text: str) -> str:
    """What a left-to-right, one-glyph-per-character engine must draw: Arabic
    letters in their joined forms (arabic-reshaper) and right-to-left runs in
    display order (python-bidi). Without ``arabic-reshaper`` (a dependency on
    Python < 3.11 only) the order alone."""
    try:
        import arabic_reshaper
    except ImportError:
        return get_display(text)
    return get_display(arabic_reshaper.reshape(text))
