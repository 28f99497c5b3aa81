"""Token heatmaps (PNG), HTML and the time-series figure."""

import re
import warnings

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch
from captum.attr import LLMAttributionResult
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from captum_jscopes.results.result import ScopeResult
from captum_jscopes.display.common import DIVERGING_CMAP, TARGET_COLOR, result_row, token_colors
from captum_jscopes.display.fonts import FONT_FAMILIES, MISSING_GLYPH, MissingGlyphWarning, font_families
from captum_jscopes.display.heatmap import plot_token_heatmap, save_heatmap
from captum_jscopes.display.html import render_html, save_html
from captum_jscopes.display.series import plot_series_influence
from captum_jscopes.core.text import CONTINUATION_MARK, display_token, readable_tokens
from captum_jscopes.display import visualize
from captum_jscopes.display.labels import NEWLINE_MARK, box_labels, token_label

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"
WORDS = ["Bob", "Ġwas", "Ġp", "ensive", "Ġfor", "Ġthe", "Ġrest", "Ġof", "Ġthe", "Ġevening", ","]


def prompt(n):
    return [WORDS[i % len(WORDS)] for i in range(n)]


def boxes(fig):
    return [p for ax in fig.axes for p in ax.patches if isinstance(p, FancyBboxPatch)]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def captum_result(negative=True):
    seq = torch.tensor([0.5, -1.0 if negative else 1.0, 2.0, 0.0])
    return LLMAttributionResult(
        input_tokens=["The", "Ġcat", HOSTILE, "Ċ"],
        output_tokens=["Ġsat", "Ġdown"],
        seq_attr=seq,
        token_attr=torch.stack([seq, seq.flip(0)]),
    )


# ------------------------------------------------------------------ tokens and colours
@pytest.mark.parametrize(
    "raw, text",
    [
        ("Ġthe", " the"),
        ("Ċ", "\n"),
        ("ĊĊ", "\n\n"),
        ("▁the", " the"),
        ("<0x0A>", "\n"),
        ("âĢĻ", "\u2019"),  # byte-level pieces of a right quote
        ("hello", "hello"),
        ("<|endoftext|>", "<|endoftext|>"),
        ("ĠâĢ", " âĢ"),  # half a character: raw form, spaces still shown
    ],
)
def test_display_token(raw, text):
    assert display_token(raw) == text


def test_colors_sequential_from_zero():
    rgba, mappable = token_colors([0.0, 1.0, 2.0], "Blues")
    blues = matplotlib.colormaps["Blues"]
    assert np.allclose(rgba[0], blues(0.0)) and np.allclose(rgba[2], blues(1.0))
    assert mappable.norm.vmin == 0.0 and mappable.norm.vmax == 2.0


def test_colors_diverging_centred_at_zero():
    rgba, mappable = token_colors([-1.0, 0.0, 3.0], "Blues")
    div = matplotlib.colormaps[DIVERGING_CMAP]
    assert mappable.norm.vmin == -3.0 and mappable.norm.vmax == 3.0
    assert np.allclose(rgba[1], div(0.5))
    assert np.allclose(rgba[2], div(1.0))


def test_colors_vmax_clips():
    rgba, _ = token_colors([1.0, 10.0], "Blues", vmax=1.0)
    assert np.allclose(rgba[0], rgba[1])


# ------------------------------------------------------------------ heatmap
def test_heatmap_draws_one_box_per_token_plus_red_target():
    tokens = prompt(12)
    scores = torch.linspace(0, 1, 12, requires_grad=True)
    fig = plot_token_heatmap(tokens, scores, target="Ġnight", title="t")
    assert isinstance(fig, Figure)
    drawn = boxes(fig)
    assert len(drawn) == 13
    expected, _ = token_colors(scores.detach(), "Blues")
    for box, color in zip(drawn, expected):
        assert np.allclose(box.get_facecolor(), color)
    assert np.allclose(drawn[-1].get_edgecolor(), matplotlib.colors.to_rgba(TARGET_COLOR))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[-1] == "night"
    assert not any("Ġ" in t for t in texts)
    assert texts[1] == "was"  # the leading space became a gap, not a 'Ġ'


def _lines(fig):
    """{y: [(x0, x1)]} of the token boxes, in data units (points)."""
    rows = {}
    for box in boxes(fig):
        rows.setdefault(round(box.get_y(), 3), []).append((box.get_x(), box.get_x() + box.get_width()))
    return rows


def test_boxes_never_overlap_and_stay_inside():
    fig = plot_token_heatmap(prompt(120), torch.rand(120), target="Ġx")
    ax = fig.axes[0]
    right = ax.get_xlim()[1]
    for spans in _lines(fig).values():
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 < b0
        assert spans[0][0] >= 0 and spans[-1][1] <= right + 1e-6


def test_long_prompt_wraps_and_figure_grows():
    short = plot_token_heatmap(prompt(20), torch.rand(20), target="Ġx")
    long = plot_token_heatmap(prompt(500), torch.rand(500), target="Ġx")
    assert len(_lines(long)) > 10
    assert long.get_size_inches()[1] > 3 * short.get_size_inches()[1]
    assert long.get_size_inches()[0] <= 10.0


def test_newline_token_breaks_the_line():
    fig = plot_token_heatmap(["a", "Ċ", "b"], [1.0, 1.0, 1.0])
    ys = [box.get_y() for box in boxes(fig)]
    assert ys[0] == ys[1] < ys[2]
    assert fig.axes[0].texts[1].get_text() == "⏎"


def test_heatmap_into_given_axes():
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    out = plot_token_heatmap(prompt(200), torch.rand(200), target="Ġx", ax=ax)
    assert out is fig
    assert len(ax.patches) == 201
    # all lines fit into the axes (the font shrank to make room)
    assert max(b.get_y() + b.get_height() for b in ax.patches) <= ax.get_ylim()[0] + 1e-6


def test_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="3 values for 2 tokens"):
        plot_token_heatmap(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        plot_token_heatmap(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        plot_token_heatmap([], [])
    with pytest.raises(TypeError):
        plot_token_heatmap("ab", [1.0, 2.0])


def test_save_heatmap_png_for_scope_result(tmp_path):
    r = ScopeResult(
        input_tokens=prompt(30),
        output_tokens=["Ġnight"],
        seq_attr=torch.rand(30),
        metadata={"scope": "temperature"},
    )
    path = save_heatmap(r, tmp_path / "out" / "heat.png", title="Temperature scope")
    assert_png(path)


def test_save_heatmap_png_for_plain_captum_result_with_negative_scores(tmp_path):
    r = captum_result()
    assert_png(save_heatmap(r, tmp_path / "seq.png"))
    assert_png(save_heatmap(r, tmp_path / "row.png", row=1))
    fig = plot_token_heatmap(r.input_tokens, r.seq_attr, target="Ġsat")
    faces = [b.get_facecolor() for b in boxes(fig)]
    div = matplotlib.colormaps[DIVERGING_CMAP]
    assert np.allclose(faces[3], div(0.5))  # 0 sits in the middle of the diverging map
    assert np.allclose(faces[1], div(0.25))  # -1 of [-2, 2]
    with pytest.raises(ValueError, match="row"):
        save_heatmap(r, tmp_path / "bad.png", row=2)
    with pytest.raises(TypeError):
        save_heatmap({"seq_attr": [1.0]}, tmp_path / "bad.png")


def test_tokens_with_dollar_signs_are_not_tex(tmp_path):
    fig = plot_token_heatmap(["$", "Ġ$\\frac{", "x$", "$$"], [1.0, 2.0, 3.0, 4.0], target="$")
    fig.savefig(tmp_path / "dollars.png")
    assert_png(tmp_path / "dollars.png")


# ------------------------------------------------------------------ HTML
def test_html_escapes_hostile_tokens_and_metadata():
    r = ScopeResult.from_captum(
        captum_result(), metadata={"scope": "semantic", "target": "<img src=x onerror=alert(1)>"}
    )
    out = render_html(r, title="<b>title</b>")
    assert "<script" not in out.lower()
    assert "<img" not in out and "<b>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "&lt;b&gt;title&lt;/b&gt;" in out


def test_html_is_self_contained(tmp_path):
    page = save_html(captum_result(), tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?:", page)
    assert not re.search(r"<(script|link|img|iframe)\b", page, flags=re.I)
    assert " src=" not in page
    assert "&lt;script&gt;" in page


def _span_colors(fragment):
    return re.findall(r'<span title="#\d+[^"]*" style="background: (#[0-9a-f]{6})', fragment)


def test_html_one_line_per_output_token_and_same_colours_as_png():
    r = captum_result(negative=False)
    out = render_html(r)
    assert out.count(f"border: 1.5px solid {TARGET_COLOR}") == 2  # a red target per line
    assert ">sat</span>" in out and ">down</span>" in out
    colors = _span_colors(out)
    assert len(colors) == 2 * 4
    # one colour scale over both lines, the same one the PNG uses
    expected, _ = token_colors(torch.cat([r.token_attr[0], r.token_attr[1]]), "Blues")
    assert colors == [to_hex(c) for c in expected]
    fig = plot_token_heatmap(r.input_tokens, r.token_attr[0], target="Ġsat")
    assert [to_hex(b.get_facecolor()) for b in boxes(fig)[:4]] == colors[:4]


def test_html_from_tuple_and_single_line():
    out = render_html((["a", "Ġb"], [0.0, 1.0], "Ġc"))
    assert len(_span_colors(out)) == 2 and ">c</span>" in out
    r = ScopeResult(input_tokens=["a", "Ġb"], output_tokens=["Ġc"], seq_attr=[0.0, 1.0], token_attr=[[0.0, 1.0]])
    assert out.count("solid #d62728") == render_html(r).count("solid #d62728") == 1
    with pytest.raises(ValueError):
        render_html((["a"],))


# ------------------------------------------------------------------ time series
def test_series_influence_figure(tmp_path):
    values = torch.sin(torch.arange(30) / 3.0)
    fig = plot_series_influence(values, torch.rand(30), title="series", target=0.2)
    assert isinstance(fig, Figure)
    ax, twin = fig.axes
    assert len(ax.patches) == 30  # one bar per value
    assert np.allclose(twin.lines[0].get_ydata(), values.numpy())
    fig.savefig(tmp_path / "series.png", dpi=100)
    assert_png(tmp_path / "series.png")
    with pytest.raises(ValueError, match="value_scores"):
        plot_series_influence([1.0, 2.0], [1.0])


# ------------------------------------------------------------------ readable text, fonts
EMOJI_PIECES = ["I", "Ġlove", "ĠðŁ", "į", "£", "Ġand", "Ġæ", "Ŀ", "±", "äº", "¬", "."]


def test_byte_level_pieces_are_drawn_as_text():
    fig = plot_token_heatmap(EMOJI_PIECES, torch.rand(len(EMOJI_PIECES)))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[:5] == ["I", "love", "🍣", "·", "·"] or texts[2] == MISSING_GLYPH
    assert texts[6:11] == ["東", "·", "·", "京", "·"] or MISSING_GLYPH in texts[6:11]
    assert not any(ch in "".join(texts) for ch in "ĠðŁįæĿäº")


def test_missing_glyphs_give_at_most_one_warning(tmp_path):
    # Private-use characters: no font has them, on any machine.
    tokens = [f"Ġ{chr(0xF0000 + i)}{chr(0xF0100 + i)}" for i in range(40)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plot_token_heatmap(tokens, torch.rand(40), target=chr(0xF0200), title=f"title {chr(0xF0300)}")
        fig.savefig(tmp_path / "pua.png")
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "Glyph" in m]  # matplotlib's own per-glyph warnings
    ours = [w for w in caught if issubclass(w.category, MissingGlyphWarning)]
    assert len(ours) == 1 and "no font package has private-use" in str(ours[0].message)
    assert "apt-get" not in str(ours[0].message)  # no package would help
    assert all(t.get_text().strip(MISSING_GLYPH) == "" for t in fig.axes[0].texts)


def test_fonts_cover_at_least_latin():
    families = font_families()
    assert families[0] == "DejaVu Sans"
    preferred = [family for family in families if family in FONT_FAMILIES]
    assert preferred == families[: len(preferred)]  # FONT_FAMILIES first, in order, then other scripts' fonts
    assert preferred == sorted(preferred, key=FONT_FAMILIES.index)


@pytest.mark.parametrize("target", [" Paris", " Paris, the city of light", " and a very long target" * 8])
def test_target_box_contains_its_text(target):
    fig = plot_token_heatmap(prompt(12), torch.rand(12), target=target, title="t")
    renderer = fig.canvas.get_renderer()
    box, text = boxes(fig)[-1], fig.axes[0].texts[-1]
    outer, inner = box.get_window_extent(renderer), text.get_window_extent(renderer)
    assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1
    assert text.get_text().startswith(target.strip()[:10])
    assert outer.x1 <= fig.bbox.x1  # a target longer than a line is cut to it, with '…'


def multi_token_result():
    """What LLMScopeAttribution returns for ' Paris, the city of light': Captum's
    output tokens are stripped, the target text keeps its spaces."""
    g = torch.Generator().manual_seed(0)
    out = ["Paris", ",", "the", "city", "of", "light"]
    token_attr = torch.rand(len(out), 11, generator=g)
    return ScopeResult(
        input_tokens=prompt(11), output_tokens=out, seq_attr=token_attr.sum(0), token_attr=token_attr,
        output_probs=torch.full((6,), 0.5), metadata={"scope": "semantic", "target": " Paris, the city of light"},
    )  # fmt: skip


def _fig_texts(fig):
    return [t.get_text() for t in fig.texts]


def test_multi_token_heatmap_says_what_it_shows(tmp_path):
    r = multi_token_result()
    assert r.output_display == [" Paris", ",", " the", " city", " of", " light"]
    fig = plot_token_heatmap(
        r.input_tokens, r.seq_attr, target=r.metadata["target"], title="My title", caption=result_row(r, None).caption
    )
    texts = " ".join(_fig_texts(fig))
    assert fig.texts[0].get_text() == "My title"  # kept as given
    assert "' Paris, the city of light'" in texts and "p = 0.0156" in texts  # 0.5 ** 6
    assert "sum of the 6 target tokens" in texts
    assert fig.axes[0].texts[-1].get_text() == "Paris, the city of light"  # spaces kept
    row = result_row(r, 3)
    assert row.target == " city" and torch.equal(row.scores, r.token_attr[3])
    assert "target token 4 of 6: ' city' (p = 0.5), after ' Paris, the'" in row.caption
    assert_png(save_heatmap(r, tmp_path / "sum.png", title="My title"))
    assert_png(save_heatmap(r, tmp_path / "row.png", row=3))


def test_colour_scale_clips_at_a_high_quantile_on_long_prompts():
    n = 3000
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    scores[0] = 500.0  # an attention sink
    rgba, mappable = token_colors(scores)
    assert mappable.norm.vmax == pytest.approx(float(torch.quantile(scores, 0.99)), rel=0.01)
    assert np.allclose(rgba[0], rgba[int(scores[1:].argmax()) + 1])  # the sink clips to the darkest colour
    # a typical token is clearly coloured, not washed out to white
    median = float(scores.median())
    assert mappable.norm(median) > 0.4
    fig = plot_token_heatmap(prompt(n), scores)
    label = fig.axes[1].get_xlabel()
    assert "99th percentile" in label and "max 500" in label
    # short prompts end at their largest score: nothing clips, nothing said
    _, short = token_colors(scores[:100])
    assert short.norm.vmax == 500.0
    assert "percentile" not in plot_token_heatmap(prompt(20), scores[:20]).axes[1].get_xlabel()
    _, plain = token_colors(scores, clip_quantile=None)
    assert plain.norm.vmax == 500.0


def test_html_shows_readable_text_and_the_probability():
    r = ScopeResult(
        input_tokens=EMOJI_PIECES, output_tokens=["Ġcity"], seq_attr=torch.rand(len(EMOJI_PIECES)),
        output_probs=torch.tensor([0.25]),
    )  # fmt: skip
    out = render_html(r)
    assert ">🍣</span>" in out and ">東</span>" in out and ">京</span>" in out
    shown = re.sub(r'title="[^"]*"', "", out)  # the tooltips name the raw pieces, on purpose
    assert not any(ch in shown for ch in "ĠðŁįæĿ")
    assert "p = 0.25" in out and ">city</span>" in out


def test_box_labels():
    labels = box_labels([" big", "\n", " 🍣", "", "  "])
    assert [lab.text for lab in labels] == ["big", NEWLINE_MARK, "🍣", CONTINUATION_MARK, "␣␣"]
    assert [lab.word_start for lab in labels] == [True, False, True, False, False]
    assert labels[1].newline_after and token_label("x" * 40).text == "x" * 29 + "…"


def test_visualize_reexports_the_display_modules():
    from captum_jscopes.display import heatmap, html, series

    assert visualize.display_token is display_token and visualize.readable_tokens is readable_tokens
    assert visualize.save_heatmap is heatmap.save_heatmap and visualize.save_html is html.save_html
    assert visualize.plot_series_influence is series.plot_series_influence
    assert all(hasattr(visualize, name) for name in visualize.__all__)
