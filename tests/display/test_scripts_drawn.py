"""Every script drawn: an Arabic and a Hindi token row come out of the heatmap
with their letters joined, in reading order and shaped (Devanagari conjuncts),
in fonts that cover every character (no box), an Arabic prompt reads from the
right, and a missing script's warning names the Debian package with its fonts.

The glyphs are read back from matplotlib's own text layout of the strings the
figure draws, in the fonts it draws them with, and compared with an independent
reference: arabic-reshaper's joined letter forms in python-bidi's display order,
each drawn on its own (unshaped)."""

from __future__ import annotations

import unicodedata
import warnings

import pytest
import torch
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import text_to_path

from captum_jscopes.display import fonts, shaping
from captum_jscopes.display.fonts import MISSING_GLYPH, MissingGlyphWarning, drawable, font_for, font_hint
from captum_jscopes.display.heatmap import plot_token_heatmap
from captum_jscopes.display.html import render_html

arabic_reshaper = pytest.importorskip("arabic_reshaper", reason="the reference needs arabic-reshaper (the test extra)")

# SentencePiece pieces: "What is the capital of France?" -> " Paris"; "India's capital is" -> " New Delhi"
ARABIC = ["▁ما", "▁هي", "▁عاصمة", "▁فرنسا", "؟"]
ARABIC_TARGET = " باريس"
HINDI = ["▁भारत", "▁की", "▁राजधानी", "▁और", "▁क्षेत्र", "▁है"]
HINDI_TARGET = " नई दिल्ली"


def _needs_font(text: str) -> None:
    missing = sorted({ch for ch in text if not ch.isspace() and font_for(ch) is None})
    if missing:
        pytest.skip(f"no installed font for {''.join(missing)}: {font_hint(missing)} (scripts/setup.sh does)")


def _row(tokens, target, title):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MissingGlyphWarning, no matplotlib "Glyph ... missing"
        fig = plot_token_heatmap(tokens, torch.linspace(0.1, 1.0, len(tokens)), target=target, title=title)
        fig.canvas.draw()
    return fig


def _font(prop: FontProperties):
    """The font with its fallback list that matplotlib draws text of ``prop`` with, at 100 pt."""
    font = get_font([findfont(FontProperties(family=family), fallback_to_default=False)
                     for family in prop.get_family()])
    font.set_size(100, 72)
    return font


def glyphs(text: str, prop: FontProperties) -> list[str]:
    """The glyphs matplotlib lays ``text`` out with, left to right ("<font>-<glyph index>")."""
    return [glyph for glyph, _ in _laid_out(text, prop)]


def outlines(text: str, prop: FontProperties) -> list[bytes]:
    """The outlines of those glyphs, left to right (a font may hold one shape twice:
    DejaVu's isolated reh is both its base glyph and its presentation form's)."""
    return [outline for _, outline in _laid_out(text, prop)]


def _laid_out(text: str, prop: FontProperties) -> list[tuple[str, bytes]]:
    info, paths, _ = text_to_path.get_glyphs_with_font(_font(prop), text)
    return [(glyph, paths[glyph][0].round(3).tobytes()) for glyph, _, _, _ in sorted(info, key=lambda g: g[1])]


def unshaped(text: str, prop: FontProperties) -> list[str]:
    """Each character of ``text`` drawn on its own, in string order (no joining, no reordering)."""
    return [glyphs(ch, prop)[0] for ch in text]


def _no_box(drawn: list[str]) -> None:
    assert not any(g.endswith("-0") or g.startswith("LastResort") for g in drawn), drawn  # .notdef, Last Resort


def _token_texts(fig):
    ax = fig.axes[0]
    return ax.texts, [p for p in ax.patches if isinstance(p, FancyBboxPatch)]


def test_an_arabic_row_is_joined_in_reading_order_and_starts_at_the_right():
    _needs_font("".join(ARABIC) + ARABIC_TARGET)
    fig = _row(ARABIC, ARABIC_TARGET, "عاصمة فرنسا")
    texts, boxes = _token_texts(fig)
    words = [t.lstrip("▁") for t in ARABIC] + [ARABIC_TARGET.strip()]
    assert [t.get_text() for t in texts] == [shaping.for_matplotlib(w) for w in words]
    renderer = fig.canvas.get_renderer()
    for word, text in zip(words, texts):
        prop = text.get_fontproperties()
        drawn = glyphs(text.get_text(), prop)
        _no_box(drawn)
        # the reference: the joined forms (arabic-reshaper) in display order (python-bidi), unshaped
        assert outlines(text.get_text(), prop) == [outlines(ch, prop)[0] for ch in shaping.visual_order(word)], word
        if word in ("عاصمة", "فرنسا"):  # every letter joins a neighbour: none keeps its isolated form
            assert set(drawn).isdisjoint(unshaped(word, prop)), word
            # the drawn width is the joined word's, narrower than its letters set apart
            width = text.get_window_extent(renderer).width
            apart = sum(t.get_window_extent(renderer).width for t in _texts_of(fig, word, prop))
            assert width < 0.97 * apart, (word, width, apart)
    # the prompt reads from the right: its first token's box is rightmost, the target leftmost
    xs = [box.get_x() for box in boxes]
    assert xs == sorted(xs, reverse=True)
    assert MISSING_GLYPH not in "".join(t.get_text() for t in [*fig.texts, *texts])


def _texts_of(fig, word, prop):
    """Each letter of ``word`` as its own text in ``fig`` (drawn apart, isolated forms)."""
    return [fig.text(0, 0, ch, fontproperties=prop) for ch in word]


def test_a_hindi_row_is_shaped_with_its_conjuncts():
    _needs_font("".join(HINDI) + HINDI_TARGET)
    if not shaping.HAS_SHAPING:
        pytest.skip("matplotlib < 3.11 has no text shaping (libraqm): Devanagari is drawn unshaped")
    fig = _row(HINDI, HINDI_TARGET, "भारत की राजधानी")
    texts, boxes = _token_texts(fig)
    words = [t.lstrip("▁") for t in HINDI] + [HINDI_TARGET.strip()]
    assert [t.get_text() for t in texts] == words
    xs = [box.get_x() for box in boxes]
    assert xs == sorted(xs)  # a left-to-right prompt
    prop = texts[0].get_fontproperties()
    devanagari = glyphs("क", prop)[0].rsplit("-", 1)[0]  # the font drawing Devanagari
    for text in texts:
        _no_box(glyphs(text.get_text(), prop))
        for word in text.get_text().split():  # each word in one font
            assert all(g.startswith(devanagari) for g in glyphs(word, prop)), word
    # क्ष (ka + virama + ssa) is one conjunct glyph, none of its letters
    (conjunct,) = glyphs("क्ष", prop)
    assert conjunct not in unshaped("क्ष", prop)
    assert len(glyphs("क्षेत्र", prop)) < len("क्षेत्र")
    # the vowel sign i is read after its consonant but drawn before it (left)
    assert glyphs("की", prop)[0] == unshaped("क", prop)[0]
    assert glyphs("कि", prop)[1] == unshaped("क", prop)[0]
    assert "-".join(glyphs("राजधानी", prop)) != "-".join(unshaped("राजधानी", prop))
    # the drawn token is the shaped one: its width is the laid-out width of the whole word
    renderer = fig.canvas.get_renderer()
    word = texts[4]
    assert word.get_text() == "क्षेत्र"
    apart = sum(t.get_window_extent(renderer).width for t in _texts_of(fig, "क्षेत्र", prop))
    assert word.get_window_extent(renderer).width < 0.8 * apart


def test_fonts_are_found_for_the_scripts_of_the_prompt():
    text = "".join(ARABIC + HINDI) + "สวัสดี"
    _needs_font(text)
    found = {font_for(ch) for ch in text if not ch.isspace()}
    assert found <= set(fonts.font_families())
    for ch in set(text) - {" "}:  # the font named covers the character
        family = font_for(ch)
        path = findfont(FontProperties(family=family), fallback_to_default=False)
        assert ord(ch) in get_font(path).get_charmap(), (ch, family)
    assert drawable("สวัสดี", set()) == shaping.for_matplotlib("สวัสดี")


def test_the_warning_names_the_package_of_the_missing_script(monkeypatch):
    real = fonts.font_for
    monkeypatch.setattr(fonts, "font_for", lambda ch: None if "DEVANAGARI" in unicodedata.name(ch, "") else real(ch))
    with pytest.warns(MissingGlyphWarning) as caught:
        fig = plot_token_heatmap(["▁hello"] + HINDI[:2], torch.rand(3))
    (warning,) = caught
    message = str(warning.message)
    assert "Devanagari" in message and "apt-get install fonts-noto-core" in message
    assert "fonts-noto-cjk" not in message and "fonts-symbola" not in message
    assert set(fig.axes[0].texts[1].get_text()) == {MISSING_GLYPH}
    assert "fonts-noto-cjk" in font_hint("東京") and "Han" in font_hint("東京")
    assert "fonts-noto-core" in font_hint("ไทย") and "Thai" in font_hint("ไทย")
    assert "fonts-symbola" in font_hint("🀄")
    assert font_hint(chr(0xF0000)) == "no font package has private-use or unassigned characters"
    assert font_hint("ก" + chr(0xF0000)).endswith("fonts-noto-core; no font package has private-use or unassigned characters")


def test_without_a_shaping_engine_arabic_is_joined_and_reordered_by_python_bidi(monkeypatch):
    """Older matplotlib (Python 3.10) places one glyph per character, left to right:
    the text drawn is then the joined forms in display order."""
    word = "عاصمة"
    visual = shaping.visual_order(word)
    # the Unicode compatibility decompositions: the same letters, reversed, in joined forms
    decomposed = [unicodedata.decomposition(ch).split() for ch in visual]
    assert [chr(int(code, 16)) for _, code in decomposed] == list(reversed(word))
    assert [form for form, _ in decomposed] == ["<final>", "<medial>", "<initial>", "<final>", "<initial>"]
    assert shaping.visual_order("abc שלום") == "abc םולש"
    monkeypatch.setattr(shaping, "HAS_SHAPING", False)
    assert drawable(word, set()) == visual and drawable("abc", set()) == "abc"


def test_the_html_line_follows_the_prompts_direction():
    assert '<div dir="auto"' in render_html((ARABIC, torch.rand(len(ARABIC))))
    assert shaping.right_to_left("".join(ARABIC).replace("▁", " ")) and not shaping.right_to_left("hello")
