"""ScopeResult: a valid Captum result, lossless JSON, helpers."""

import json
import math

import matplotlib

matplotlib.use("Agg")  # captum's plot_* use pyplot; never open a window

import matplotlib.pyplot as plt
import pytest
import torch
from captum.attr import LLMAttributionResult

from captum_jscopes.results.result import ScopeResult, sink_share
from captum_jscopes.display.html import render_html

TOKENS = ["<|im_start|>", "Bob", "Ġwas", "Ċ", "Ġ<script>alert(1)</script>", "âĢĻ", "Ġ😀"]


def make_result(dtype=torch.float32, metadata=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, m = len(TOKENS), 2
    # Values of very different magnitudes, a subnormal and a negative zero:
    # all must survive the JSON round trip bit for bit.
    seq = torch.rand(n, generator=g, dtype=torch.float64) * torch.logspace(-6, 4, n, dtype=torch.float64)
    seq[1] = 1e-40
    seq[2] = -0.0
    token = torch.randn(m, n, generator=g, dtype=torch.float64) / 3
    return ScopeResult(
        input_tokens=TOKENS,
        output_tokens=["Ġcat", "s"],
        seq_attr=seq.to(dtype),
        token_attr=token.to(dtype),
        output_probs=torch.tensor([0.25, 0.125], dtype=dtype),
        metadata=metadata
        if metadata is not None
        else {
            "scope": "semantic",
            "model": "tiny-llama",
            "settings": {"k": 1, "exact": False, "alphas": [0.5, 1.0]},
            "prediction": {"token": " cat", "prob": 0.3333333333333333},
            "position": 6,
            "target": "<b>cat</b>",
        },
    )


def bits(t):
    width = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
    return t.contiguous().view(width[t.dtype])


# ------------------------------------------------------------------ captum compatibility
def test_is_a_captum_result_and_captum_plots_work():
    r = make_result()
    assert isinstance(r, LLMAttributionResult)
    fig, ax = r.plot_token_attr()
    assert len(ax.get_yticklabels()) == 2
    plt.close(fig)
    fig, ax = r.plot_seq_attr()
    assert len(ax.patches) == 2 * len(TOKENS)  # captum draws a positive and a negative bar per token
    plt.close(fig)
    assert r.seq_attr_dict.keys() == set(TOKENS)


def test_constructor_rejects_bad_input():
    with pytest.raises(ValueError, match="seq_attr"):
        ScopeResult(input_tokens=["a", "b"], output_tokens=["c"], seq_attr=torch.ones(3))
    with pytest.raises(ValueError, match="token_attr"):
        ScopeResult(input_tokens=["a", "b"], output_tokens=["c"], seq_attr=torch.ones(2), token_attr=torch.ones(2, 2))
    with pytest.raises(ValueError, match="output_probs"):
        ScopeResult(input_tokens=["a"], output_tokens=["c"], seq_attr=torch.ones(1), output_probs=torch.ones(2))
    with pytest.raises(TypeError, match="input_tokens"):
        ScopeResult(input_tokens=["a", 3], output_tokens=["c"], seq_attr=torch.ones(2))
    with pytest.raises(TypeError, match="input_tokens"):
        ScopeResult(input_tokens="ab", output_tokens=["c"], seq_attr=torch.ones(2))
    with pytest.raises(TypeError, match="metadata"):
        ScopeResult(input_tokens=["a"], output_tokens=["c"], seq_attr=torch.ones(1), metadata=["x"])


def test_metadata_is_copied_from_the_callers_dict():
    meta = {"scope": "fisher"}
    r = ScopeResult(input_tokens=["a"], output_tokens=["b"], seq_attr=[1.0], metadata=meta)
    meta["scope"] = "changed"
    assert r.metadata == {"scope": "fisher"}


# ------------------------------------------------------------------ JSON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_json_round_trip_is_exact(tmp_path, dtype):
    r = make_result(dtype)
    path = r.save_json(tmp_path / "sub" / "r.json")
    loaded = ScopeResult.load_json(path)
    assert loaded == r
    assert loaded.input_tokens == TOKENS and loaded.output_tokens == ["Ġcat", "s"]
    assert loaded.metadata == r.metadata
    for name in ("seq_attr", "token_attr", "output_probs"):
        a, b = getattr(r, name), getattr(loaded, name)
        assert b.dtype == dtype and b.shape == a.shape
        assert torch.equal(bits(a), bits(b)), name
    assert math.copysign(1.0, float(loaded.seq_attr[2])) == -1.0  # -0.0 kept


def test_json_round_trip_without_optional_tensors(tmp_path):
    r = ScopeResult(input_tokens=["a", "b"], output_tokens=["c"], seq_attr=torch.tensor([0.1, 0.2]))
    loaded = ScopeResult.load_json(r.save_json(tmp_path / "r.json"))
    assert loaded == r
    assert loaded.token_attr is None and loaded.output_probs is None and loaded.metadata == {}


def test_file_is_plain_json_with_dtypes(tmp_path):
    path = make_result().save_json(tmp_path / "r.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["seq_attr"]["dtype"] == "float32"
    assert data["token_attr"]["shape"] == [2, len(TOKENS)]
    assert all(isinstance(v, float) for v in data["seq_attr"]["data"])


def test_to_dict_from_dict(tmp_path):
    r = make_result()
    assert ScopeResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_scores_refuse_to_save(tmp_path, bad):
    r = make_result()
    r.token_attr[1, 2] = bad
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match="token_attr"):
        r.save_json(path)
    assert not path.exists()


def test_unserialisable_metadata_is_an_error(tmp_path):
    r = make_result(metadata={"model": object()})
    with pytest.raises(TypeError, match="metadata"):
        r.save_json(tmp_path / "r.json")


def test_from_dict_rejects_other_files():
    with pytest.raises(ValueError, match="format"):
        ScopeResult.from_dict({"input_tokens": ["a"]})
    data = make_result().to_dict()
    data["seq_attr"]["shape"] = [3]
    with pytest.raises(ValueError, match="seq_attr"):
        ScopeResult.from_dict(data)


def test_equality_sees_one_bit_and_dtype():
    a, b = make_result(), make_result()
    assert a == b
    b.seq_attr[3] = torch.nextafter(b.seq_attr[3], torch.tensor(float("inf")))
    assert a != b
    c = make_result()
    c.output_probs = c.output_probs.double()
    assert a != c
    d = make_result()
    d.metadata["scope"] = "fisher"
    assert a != d


# ------------------------------------------------------------------ wrapping, helpers
def test_from_captum_wraps_a_plain_result():
    plain = LLMAttributionResult(
        input_tokens=["a", "b", "c"],
        output_tokens=["d"],
        seq_attr=torch.tensor([0.5, -1.0, 2.0]),
        token_attr=torch.tensor([[0.5, -1.0, 2.0]]),
    )
    r = ScopeResult.from_captum(plain, metadata={"scope": "integrated_gradients"})
    assert isinstance(r, ScopeResult)
    assert r.seq_attr is plain.seq_attr  # shared, not copied
    assert r.metadata == {"scope": "integrated_gradients"}
    again = ScopeResult.from_captum(r, metadata={"model": "m"})
    assert again.metadata == {"scope": "integrated_gradients", "model": "m"}
    with pytest.raises(TypeError):
        ScopeResult.from_captum({"seq_attr": [1.0]})


def test_top_tokens():
    r = ScopeResult(
        input_tokens=["a", "b", "c", "d"],
        output_tokens=["x", "y"],
        seq_attr=torch.tensor([0.1, 0.9, 0.9, 0.3]),
        token_attr=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.2, 0.7]]),
    )
    top = r.top_tokens(3)
    assert [i for i, _, _ in top] == [1, 2, 3]  # tie keeps the earlier token first
    assert top[0] == (1, "b", pytest.approx(0.9))
    assert [i for i, _, _ in r.top_tokens(2, row=1)] == [3, 2]
    assert len(r.top_tokens(10)) == 4
    with pytest.raises(ValueError):
        r.top_tokens(0)
    with pytest.raises(ValueError):
        r.top_tokens(2, row=2)
    no_rows = ScopeResult(input_tokens=["a"], output_tokens=["x"], seq_attr=[1.0])
    with pytest.raises(ValueError, match="token_attr"):
        no_rows.top_tokens(1, row=0)


def test_sink_share():
    s = torch.tensor([6.0, 2.0, 1.0, 1.0])
    assert float(sink_share(s)) == pytest.approx(0.6)
    assert float(sink_share(s, k=2)) == pytest.approx(0.8)
    batch = torch.tensor([[6.0, 2.0, 1.0, 1.0], [0.0, 1.0, 1.0, 2.0]])
    out = sink_share(batch, k=1)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([0.6, 0.0])  # first position, even if it is an excluded 0
    assert math.isnan(float(sink_share(torch.zeros(3))))
    with pytest.raises(ValueError, match="non-negative"):
        sink_share(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="k"):
        sink_share(s, k=5)
    with pytest.raises(ValueError, match="1-D"):
        sink_share(torch.ones(2, 2, 2))


def test_repr_html_is_render_html():
    r = make_result()
    assert r._repr_html_() == render_html(r)
    assert "&lt;script&gt;" in r._repr_html_()
    assert "semantic" in repr(r)


# ------------------------------------------------------------------ readable text, words
BYTE_TOKENS = ["I", "Ġlove", "ĠðŁ", "į", "£", "Ġand", "Ġæ", "Ŀ", "±", "äº", "¬", "."]


def emoji_result(scope="semantic"):
    g = torch.Generator().manual_seed(1)
    token_attr = torch.rand(2, len(BYTE_TOKENS), generator=g)
    return ScopeResult(
        input_tokens=BYTE_TOKENS,
        output_tokens=["New", "York"],  # Captum's stripped display tokens
        seq_attr=token_attr.sum(0),
        token_attr=token_attr,
        output_probs=torch.tensor([0.5, 0.25]),
        metadata={"scope": scope, "target": " New York"},
    )


def test_display_texts_are_readable_and_consistent():
    r = emoji_result()
    assert r.input_display == ["I", " love", " 🍣", "", "", " and", " 東", "", "", "京", "", "."]
    assert "".join(r.input_display) == "I love 🍣 and 東京."
    assert r.output_display == [" New", " York"]  # spaces back, like the inputs
    assert r.input_tokens == BYTE_TOKENS and r.output_tokens == ["New", "York"]  # raw kept
    overlap = ScopeResult(input_tokens=["a"], output_tokens=["🍣", "🍣 [OVERLAP]"], seq_attr=[1.0],
                          metadata={"target": " 🍣"})  # fmt: skip
    assert overlap.output_display == [" 🍣", ""]
    raw_out = ScopeResult(input_tokens=["a"], output_tokens=["Ġcat", "s"], seq_attr=[1.0])
    assert raw_out.output_display == [" cat", "s"]


def test_top_tokens_are_readable():
    r = emoji_result()
    r.seq_attr = torch.arange(len(BYTE_TOKENS), dtype=torch.float32).flip(0)
    r.seq_attr[3] = 100.0
    assert r.top_tokens(2) == [(3, " 🍣 (2/3)", 100.0), (0, "I", 11.0)]
    assert r.top_tokens(1, raw=True) == [(3, "į", 100.0)]


def test_json_keeps_display_and_reads_old_files(tmp_path):
    r = emoji_result()
    data = json.loads(r.save_json(tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["input_tokens"] == BYTE_TOKENS and data["input_display"][2] == " 🍣"
    assert data["output_display"] == [" New", " York"]
    loaded = ScopeResult.load_json(tmp_path / "r.json")
    assert loaded == r and loaded.input_display == r.input_display
    # a file written before the display fields existed
    del data["input_display"], data["output_display"]
    (tmp_path / "old.json").write_text(json.dumps(data), encoding="utf-8")
    old = ScopeResult.load_json(tmp_path / "old.json")
    assert old == r and old.output_display == [" New", " York"]
    # a display given by the file is used as saved
    data["input_display"] = ["x"] * len(BYTE_TOKENS)
    assert ScopeResult.from_dict(data).input_display == ["x"] * len(BYTE_TOKENS)


def test_words_view_and_its_json(tmp_path):
    r = emoji_result()
    w = r.words()
    assert w.input_display == ["I", " love", " 🍣", " and", " 東京", "."]
    assert w.input_tokens[2] == "ĠðŁį£"  # the raw pieces, joined
    assert w.metadata["view"] == {"unit": "words", "rule": "l2",
                                  "positions": [[0], [1], [2, 3, 4], [5], [6, 7, 8, 9, 10], [11]]}  # fmt: skip
    expected = r.token_attr[:, 2:5].pow(2).sum(-1).sqrt()
    assert torch.allclose(w.token_attr[:, 2], expected) and torch.allclose(w.seq_attr, w.token_attr.sum(0))
    assert w.source is r
    fisher = emoji_result("fisher").words()
    assert torch.allclose(fisher.seq_attr[4], r.seq_attr[6:11].sum())
    loaded = ScopeResult.load_json(w.save_json(tmp_path / "w.json"))
    assert loaded == w and loaded.input_display == w.input_display
    with pytest.raises(ValueError, match="rule="):
        ScopeResult.from_captum(r, {"scope": "integrated_gradients"}).words()
    assert ScopeResult.from_captum(r, {"scope": "integrated_gradients"}).words(rule="sum").metadata["view"]["rule"] == "sum"


def test_spans_by_positions_and_by_characters():
    r = emoji_result()
    by_pos = r.spans([[0, 1], [3]])  # position 3 is inside the emoji: the whole emoji
    assert by_pos.input_display == ["I love", " 🍣"]
    assert by_pos.metadata["view"]["positions"] == [[0, 1], [2, 3, 4]]
    text = "".join(r.input_display)
    by_chars = r.spans(chars=[(text.index("東"), len(text))])
    assert by_chars.input_display == [" 東京."]
    with pytest.raises(ValueError, match="exactly one"):
        r.spans()


def test_captum_plots_show_readable_text():
    r = emoji_result()
    fig, ax = r.plot_token_attr()
    inputs = [t.get_text() for t in ax.get_xticklabels()]
    outputs = [t.get_text() for t in ax.get_yticklabels()]
    plt.close(fig)
    assert not any(ch in "".join(inputs) for ch in "ĠðŁįæĿ")
    assert inputs[3] == "·" and outputs == [" New", " York"]
    fig, ax = r.plot_seq_attr()
    assert not any(ch in "".join(t.get_text() for t in ax.get_xticklabels()) for ch in "ĠðŁ")
    plt.close(fig)
