"""benchmarks/fisher_gemma_step.py on a tiny real model: the rows it reports are what they say."""

import importlib.util
from pathlib import Path

from tests.helpers import assert_unchanged, make_model, make_tokenizer, snapshot

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fisher_gemma_step.py"


def _script():
    spec = importlib.util.spec_from_file_location("fisher_gemma_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fisher_step_rows_measure_error_against_exact_and_time_the_f_side():
    script = _script()
    model, tokenizer = make_model(dtype=__import__("torch").float64), make_tokenizer()
    before = snapshot(model)
    # words of the tiny tokenizer; few directions (d = 16), so that the estimators are not exact
    sentences = [("one", "the cat sat on the mat", " the dog ran home"), ("two", "Tom liked food", " he went home")]
    estimators = {"exact": dict(estimator="exact"), "deflated": dict(estimator="deflated", k=3, n_probes=4),
                  "hutchinson": dict(estimator="hutchinson", k=3, n_probes=4)}
    rows = script.measure(model, tokenizer, seeds=2, sentences=sentences, estimators=estimators)
    assert_unchanged(model, before)
    assert [(r["language"], r["estimator"]) for r in rows] == [(s[0], e) for s in sentences for e in estimators]
    for r in rows:
        assert r["output_tokens"] >= 1 and r["input_tokens"] >= 1
        assert 0 <= r["f_seconds"] <= r["seconds"]
        if r["estimator"] == "exact":
            assert r["median_rel_l2"] == 0 == r["worst_rel_l2"]
        else:
            # a randomised estimator with k < d is not exact, and it is not far off
            assert 0 < r["median_rel_l2"] <= r["worst_rel_l2"] < 0.5
    markdown = script._markdown(rows)
    assert all(r["n_probes"] == (0 if r["estimator"] == "exact" else 4) for r in rows)
    assert markdown.count("\n") == len(rows) + 2


def test_timing_only_rows_without_exact_have_no_errors():
    script = _script()
    model, tokenizer = make_model(dtype=__import__("torch").float64), make_tokenizer()
    sentences = [("one", "the cat sat on the mat", " the dog ran home")]
    rows = script.measure(model, tokenizer, seeds=1, sentences=sentences,
                          estimators={"hutchinson": dict(estimator="hutchinson", k=3, n_probes=4)})
    (row,) = rows
    assert row["median_rel_l2"] is None and row["worst_rel_l2"] is None and row["seconds"] > 0
    assert "| - | - |" in script._markdown(rows)
