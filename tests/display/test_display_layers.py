"""The layer view's picture (captum_jscopes.display.layers): the grid holds each
row divided by its maximum with the input embeddings at the bottom, the columns
are the prompt's readable tokens up to the explained position (padding left
out), the explained position and the hand-off layers are marked, the colour bar
states the normalisation, and the figure is written as a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from helpers import BOS, PAD, make_model, make_tokenizer
from matplotlib.figure import Figure
from matplotlib.image import imread

from captum_jscopes import SemanticScope, TemperatureScope, layer_map
from captum_jscopes.analysis.layers import LayerMap
from captum_jscopes.display.common import TARGET_COLOR
from captum_jscopes.display.layers import (
    HANDOFF_COLOR,
    HANDOFF_MIN,
    display_labels,
    layer_labels,
    plot_layer_map,
    plot_layer_scores,
    save_layer_map,
)
from captum_jscopes.core.text import CONTINUATION_MARK

PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def tiny():
    return make_model("llama"), make_tokenizer()


@pytest.fixture(scope="module")
def found(tiny):
    """A Temperature Scope layer map of the prompt (BOS first, excluded: all-zero column)."""
    model, tokenizer = tiny
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert int(ids[0, 0]) == BOS
    return layer_map(TemperatureScope(model, tokenizer), ids)


def grid_of(fig: Figure) -> np.ndarray:
    return np.asarray(fig.axes[0].images[0].get_array())


def handoff_bars(fig: Figure) -> list:
    """(column, y) of the orange hand-off bars drawn on the grid."""
    bars = []
    for line in fig.axes[0].lines:
        if matplotlib.colors.to_hex(line.get_color()) == HANDOFF_COLOR:
            x, y = line.get_data()
            bars.append((round(float(np.mean(x))), float(y[0])))
    return sorted(bars)


def test_the_grid_is_each_row_over_its_maximum_embeddings_at_the_bottom(found, tiny):
    fig = plot_layer_map(found, tiny[1])
    assert isinstance(fig, Figure)
    grid = grid_of(fig)
    scores = found.scores[0].double().numpy()
    assert grid.shape == scores.shape == (found.n_layers + 1, 6)  # BOS + 5 words, up to the explained last one
    np.testing.assert_allclose(grid, found.normalised()[0].double().numpy(), rtol=1e-6)
    assert grid.max(axis=1) == pytest.approx(np.ones(found.n_layers + 1))
    ax = fig.axes[0]
    assert ax.images[0].origin == "lower"  # row 0 (the embeddings) at the bottom
    assert ax.get_yticklabels()[0].get_text() == "emb" and "0 = input embeddings" in ax.get_ylabel()
    bar_label = fig.axes[1].get_ylabel()
    assert "maximum" in bar_label and "residual stream grows with depth" in bar_label
    title = " ".join(t.get_text() for t in fig.texts)
    assert "Temperature Scope" in title


def test_columns_are_readable_tokens_and_the_explained_one_is_marked(found, tiny):
    fig = plot_layer_map(found, tiny[1], target=" house")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["<bos>", *PROMPT.split()]
    red = [t.get_text() for t in ax.get_xticklabels() if matplotlib.colors.to_hex(t.get_color()) == TARGET_COLOR]
    assert red == ["the"] and ax.get_xticklabels()[-1].get_text() == "the"
    outline = [p for p in ax.patches if matplotlib.colors.to_hex(p.get_edgecolor()) == TARGET_COLOR]
    assert len(outline) == 1 and outline[0].get_x() == pytest.approx(5 - 0.5)
    assert "explains ' house'" in " ".join(t.get_text() for t in fig.texts)


def test_handoff_layers_are_marked_under_their_row(found, tiny):
    fig = plot_layer_map(found, tiny[1])
    handoff = found.handoff()[0].tolist()
    peaks = found.normalised()[0].amax(0)
    expected = sorted((t, h - 0.5) for t, h in enumerate(handoff)
                      if 0 < h <= found.n_layers and peaks[t] >= HANDOFF_MIN)
    assert handoff_bars(fig) == expected
    assert handoff[0] == 0 and handoff[-1] == found.n_layers + 1  # BOS: no score; the explained token: carried
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("hand-off" in t for t in legend) and "explained position" in legend


def test_padding_and_the_columns_after_the_explained_position_are_left_out(tiny):
    model, tokenizer = tiny
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    padded = torch.cat([torch.full((1, 2), PAD), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], dim=1)
    found = layer_map(SemanticScope(model, tokenizer), padded, target=7, attention_mask=mask, position=3)
    assert int(found.positions[0]) == 5  # the 4th real token
    fig = plot_layer_map(found, tokenizer)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["<bos>", "the", "cat", "sat"]
    np.testing.assert_allclose(grid_of(fig), found.normalised()[0, :, 2:6].double().numpy(), rtol=1e-6)


def test_other_normalisations_and_a_callers_axes(found, tiny):
    share = plot_layer_map(found, tiny[1], normalise="share")
    np.testing.assert_allclose(grid_of(share).sum(axis=1)[1:], 1.0, rtol=1e-6)
    assert "total" in share.axes[1].get_ylabel()
    raw = plot_layer_map(found, tiny[1], normalise="none")
    np.testing.assert_allclose(grid_of(raw), found.scores[0].double().numpy(), rtol=1e-6)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    assert plot_layer_map(found, tiny[1], ax=ax, title="mine") is fig
    assert ax.get_title(loc="left").startswith("mine")
    with pytest.raises(ValueError, match="normalise"):
        plot_layer_map(found, tiny[1], normalise="max")


def test_without_a_tokenizer_the_columns_are_ids(found):
    labels = [t.get_text() for t in plot_layer_map(found).axes[0].get_xticklabels()]
    assert labels == [str(i) for i in found.input_ids[0].tolist()]


def test_a_long_prompt_labels_every_kth_token_and_the_explained_one():
    n, layers = 300, 4
    scores = torch.rand(layers + 1, n, generator=torch.Generator().manual_seed(0))
    labels = [f"w{i}" for i in range(n)]
    fig = plot_layer_scores(scores, labels, position=n - 1, scope="semantic")
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert 20 < len(shown) < n and shown[-1] == f"w{n - 1}" and shown[0] == "w0"
    assert "labelled" in fig.axes[0].get_xlabel()
    assert fig.get_size_inches()[0] < 20  # capped


def test_labels_are_short_and_readable():
    grouped = display_labels(["I", " love", " 🍣", "", ""])
    assert grouped == ["I", "love", "🍣", CONTINUATION_MARK, CONTINUATION_MARK]
    assert display_labels(["\n", "  ", "\tx", " " + "a" * 40]) == ["⏎", "␣␣", "→x", "a" * 13 + "…"]
    assert layer_labels([1, 2], None) == ["1", "2"]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="labels"):
        plot_layer_scores(torch.ones(3, 4), ["a"])
    with pytest.raises(ValueError, match="shape"):
        plot_layer_scores(torch.ones(4), ["a"] * 4)
    with pytest.raises(ValueError, match="NaN"):
        plot_layer_scores(torch.full((3, 2), float("nan")), ["a", "b"])


def test_save_writes_a_png(found, tiny, tmp_path):
    path = save_layer_map(found, tmp_path / "sub" / "layers.png", tiny[1], target=" house")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert height > 300 and width > 300


def test_a_layer_map_built_by_hand_plots(tiny):
    # what the CLI does: a summed map over kept columns, with its own labels and no position mark
    scores = torch.rand(1, 3, 4, generator=torch.Generator().manual_seed(1))
    built = LayerMap(scores=scores, error=torch.zeros_like(scores), input_ids=torch.tensor([[5, 6, 7, 8]]),
                     attention_mask=torch.ones(1, 4, dtype=torch.long), positions=torch.tensor([3]), scope="fisher")
    fig = plot_layer_map(built, labels=["a", "b", "c", "d"], mark_position=False, caption="summed")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert not [p for p in ax.patches if matplotlib.colors.to_hex(p.get_edgecolor()) == TARGET_COLOR]
    assert "summed" in " ".join(t.get_text() for t in fig.texts)
