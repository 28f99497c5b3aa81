"""One page that compares, a contrast everywhere: ``jscopes attribute --scope all``
and ``--compare m1,m2`` (baselines of the benchmark table) write compare.png and
compare.html (every method's map on the same tokens, each row on its own scale;
captum_jscopes.display.compare), ``--words`` prints and draws the word view, and
``--foil`` explains "target rather than foil"."""

from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from captum_jscopes import ScopeResult, SemanticScope, load_model
from captum_jscopes.bench.methods import METHODS
from captum_jscopes.cli import attribute as attribute_command
from captum_jscopes.cli.main import main
from captum_jscopes.display.compare import CompareRow, plot_compare, render_compare_html, scale_text
from captum_jscopes.runs.explain import explain
from captum_jscopes.scopes.registry import SCOPES

PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def tiny(model_dir):
    return load_model(str(model_dir))


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def page_rows(path: Path) -> dict[str, list[float]]:
    """{row label: scores} read back from the cells' tooltips of compare.html."""
    rows: dict[str, list[float]] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", path.read_text(encoding="utf-8")):
        label = html.unescape(re.search(r'<td class="label">(.*?)</td>', row).group(1))
        scores = [float(s) for s in re.findall(r'title="#\d+ [^"]*?: ([-0-9.e+]+)"', row)]
        rows.setdefault(label, []).extend(scores)
    return rows


def test_scope_all_writes_one_page_and_picture_comparing_the_scopes(model_dir, tmp_path, capsys):
    code, out, err = run(["attribute", PROMPT, "--model", model_dir, "--out", tmp_path], capsys)
    assert code == 0, err
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
    text = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "src=" not in text
    rows = page_rows(tmp_path / "compare.html")
    assert list(rows) == list(SCOPES)
    for scope in SCOPES:  # each row is that scope's map, stated with its own scale
        saved = ScopeResult.load_json(tmp_path / f"{scope}.json")
        np.testing.assert_allclose(rows[scope], saved.seq_attr.numpy(), rtol=1e-5)
        assert html.escape(scale_text(saved.seq_attr)) in text
    assert "compared: semantic, temperature, fisher" in out
    # one scope alone: nothing to compare
    code, _, err = run(["attribute", PROMPT, "--model", model_dir, "--scope", "semantic", "--out", tmp_path / "one"],
                       capsys)
    assert code == 0 and not (tmp_path / "one" / "compare.html").exists()


def test_compare_adds_the_benchmark_methods_on_the_same_tokens(model_dir, tiny, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", model_dir, "--scope", "semantic", "--target", " big red house",
            "--compare", "grad_x_input,semantic+input", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    rows = page_rows(tmp_path / "compare.html")
    assert list(rows) == ["semantic", "semantic+input", "grad_x_input"]
    model, tokenizer = tiny
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids  # BOS first: not a scored column
    target = tokenizer.encode(" big red house", add_special_tokens=False)
    for name in ("grad_x_input", "semantic+input"):  # summed over the teacher-forced target tokens
        expected = sum(METHODS[name].scores(model, tokenizer, torch.cat([prompt, torch.tensor([target[:k]], dtype=torch.long)], 1),
                                            token)[1: prompt.shape[1]] for k, token in enumerate(target))
        np.testing.assert_allclose(rows[name], expected.numpy(), rtol=1e-4, atol=1e-7)
    # the table's semantic+input is the Semantic Scope under reduce="input": the CLI's own flag gives the same
    reduced = explain(model, tokenizer, PROMPT, "semantic", " big red house", semantic_reduce="input")
    np.testing.assert_allclose(rows["semantic+input"], reduced.seq_attr.numpy(), rtol=1e-4, atol=1e-7)


def test_a_method_that_cannot_run_is_left_out_with_a_note(model_dir, tmp_path, monkeypatch, capsys):
    import captum_jscopes.bench.attnlrp as attnlrp

    def missing(*args, **kwargs):
        raise ImportError("AttnLRP needs LXT: pip install lxt")

    monkeypatch.setattr(attnlrp, "attnlrp_scores", missing)
    argv = ["attribute", PROMPT, "--model", model_dir, "--scope", "temperature", "--compare", "attnlrp,grad_x_input",
            "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "attnlrp left out: AttnLRP needs LXT" in err
    assert list(page_rows(tmp_path / "compare.html")) == ["temperature", "grad_x_input"]


def test_an_unknown_method_is_one_line_before_the_model_loads(tmp_path, capsys):
    code, out, err = run(["attribute", PROMPT, "--model", tmp_path / "nowhere", "--compare", "grad_x_input,nope",
                          "--out", tmp_path], capsys)
    assert code != 0 and "unknown method(s) 'nope'" in err and len(err.strip().splitlines()) == 1


def test_words_prints_and_draws_the_word_view(model_dir, tiny, tmp_path, capsys):
    argv = ["attribute", "Tom liked the red food .", "--model", model_dir, "--scope", "fisher", "--compare",
            "grad_x_input", "--words", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "fisher: top 5 words by influence" in out
    words = ScopeResult.load_json(tmp_path / "fisher_words.json")
    tokens = ScopeResult.load_json(tmp_path / "fisher.json")
    assert words.input_display == ["Tom", " liked", " the", " red", " food", " ."]
    torch.testing.assert_close(words.seq_attr, tokens.words().seq_attr)
    assert (tmp_path / "fisher_words.png").stat().st_size > 0 and (tmp_path / "fisher_words.html").is_file()
    rows = page_rows(tmp_path / "compare.html")
    assert len(rows["fisher"]) == len(rows["grad_x_input"]) == 6
    assert "per word: sum" in (tmp_path / "compare.html").read_text(encoding="utf-8")  # Fisher: traces add
    assert "per word: l2" in (tmp_path / "compare.html").read_text(encoding="utf-8")  # gradient norms


def test_foil_explains_target_rather_than_foil(model_dir, tiny, tmp_path, capsys):
    model, tokenizer = tiny
    argv = ["attribute", PROMPT, "--model", model_dir, "--foil", " dog", "--compare", "grad_x_input", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "temperature, fisher take no target and are left out" in err
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["semantic.json"]
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    predicted = saved.metadata["prediction"]["id"]
    dog = tokenizer.convert_tokens_to_ids("dog")
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    alone = SemanticScope(model, tokenizer).attribute(ids, target=(predicted, dog))[0, 1:]
    torch.testing.assert_close(saved.seq_attr, alone, rtol=1e-5, atol=1e-7)
    assert saved.metadata["contrast"]["foil_token"] == "dog" and "rather than 'dog'" in out
    assert list(page_rows(tmp_path / "compare.html")) == ["semantic", "grad_x_input"]
    # a scope without a target takes no foil: one line
    code, _, err = run(argv[:-4] + ["--scope", "fisher", "--out", tmp_path / "f"], capsys)
    assert code == 2 and "fisher takes no target" in err and len(err.strip().splitlines()) == 1


def test_foil_after_shared_tokens_with_layers(model_dir, tiny, tmp_path, capsys):
    model, tokenizer = tiny
    argv = ["attribute", PROMPT, "--model", model_dir, "--scope", "semantic", "--target", " big red house",
            "--foil", " big blue house", "--layers", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.output_tokens == ["red"] and saved.metadata["contrast"]["after"] == "big"
    assert "after 'big'" in out and (tmp_path / "semantic_layers.png").is_file()
    ids = tokenizer(PROMPT + " big", return_tensors="pt").input_ids
    red, blue = tokenizer.convert_tokens_to_ids(["red", "blue"])
    alone = SemanticScope(model, tokenizer).attribute(ids, target=(red, blue))[0, 1:-1]
    torch.testing.assert_close(saved.seq_attr, alone, rtol=1e-5, atol=1e-7)
    # the prediction is still the one after the prompt
    assert saved.metadata["prediction"] == explain(model, tokenizer, PROMPT, "semantic").metadata["prediction"]


# ----------------------------------------------------------------------------- the drawing


def test_each_row_has_its_own_scale():
    display = ["The", " cat", " 🍣", "", "", "."]
    rows = [CompareRow("small", [0.001, 0.002, 0.003, 0.0, 0.0, 0.004]),
            CompareRow("large", [100.0, 1.0, 1.0, 1.0, 1.0, 1.0], "a note"),
            CompareRow("signed", [-1.0, 0.5, 0.0, 0.0, 0.0, 1.0])]
    assert scale_text(rows[0].scores) == "0 – 0.004"
    assert scale_text(rows[2].scores) == "±1"
    page = render_compare_html(display, rows, title="<b>x</b>", target=" Paris")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page and "0 – 0.004" in page and "a note" in page
    # the largest score of each row is the darkest blue of that row
    darkest = re.findall(r'style="background:(#[0-9a-f]{6})', page)
    assert darkest[5] == darkest[6]  # 'small' at 0.004 and 'large' at 100, each its row's maximum
    fig = plot_compare(display, rows, title="t", caption="c")
    assert fig.get_size_inches()[1] > 1
    with pytest.raises(ValueError, match="no row"):
        plot_compare(display, [])
    with pytest.raises(ValueError, match="scores of 'short' has 2 values for 6 tokens"):
        plot_compare(display, [CompareRow("short", [1.0, 2.0])])


def test_a_foil_of_token_id_0_against_the_prediction(tiny):
    """The forward over the prompt alone serves a foil whatever its id (0 is '<pad>' here)."""
    model, tokenizer = tiny
    with torch.no_grad():
        predicted = int(model(tokenizer(PROMPT, return_tensors="pt").input_ids).logits[0, -1].argmax())
    result = explain(model, tokenizer, PROMPT, "semantic", foil="<pad>")
    assert result.metadata["prediction"]["id"] == predicted and result.metadata["contrast"]["foil_token"] == "<pad>"
    with pytest.raises(ValueError, match="are the same"):
        explain(model, tokenizer, PROMPT, "semantic", foil=tokenizer.decode([predicted]))
