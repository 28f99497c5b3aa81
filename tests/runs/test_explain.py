"""One path for explaining a prompt: every requested scope from ONE forward pass
(runs/explain.py::explain_scopes) gives the scores of one call per scope."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_unchanged, make_model, make_tokenizer, snapshot

from captum_jscopes.core import forward as forward_module
from captum_jscopes.runs.explain import explain, explain_scopes

PROMPT = "the cat sat on the"
SCOPES = ("semantic", "temperature", "fisher")


@pytest.mark.parametrize("target", [None, " mat", " big red house"])
def test_all_scopes_from_one_forward_equal_single_calls(target, monkeypatch):
    model, tokenizer = make_model("llama"), make_tokenizer()
    singles = {name: explain(model, tokenizer, PROMPT, name, target) for name in SCOPES}
    calls = []
    real = forward_module.run_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    # the one forward of explain_scopes is the module's run_forward, looked up where it is used
    monkeypatch.setattr("captum_jscopes.runs.explain.run_forward", counted)
    monkeypatch.setattr("captum_jscopes.scopes.base.run_forward", counted)
    before = snapshot(model)
    together = list(explain_scopes(model, tokenizer, PROMPT, SCOPES, target))
    assert_unchanged(model, before)
    assert len(calls) == 1  # one forward served all three scopes and the prediction
    for name, result in zip(SCOPES, together):
        single = singles[name]
        assert result.metadata["scope"] == name
        assert result.metadata["prediction"] == pytest.approx(single.metadata["prediction"])
        assert result.output_tokens == single.output_tokens and result.input_tokens == single.input_tokens
        torch.testing.assert_close(result.token_attr, single.token_attr, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(result.output_probs, single.output_probs, rtol=1e-6, atol=1e-9)


def test_estimate_comes_before_the_costly_scope_with_measured_times():
    model, tokenizer = make_model("llama"), make_tokenizer()
    seen = []
    results = explain_scopes(model, tokenizer, PROMPT, ("fisher", "semantic"), " mat",
                             settings={"fisher_estimator": "exact"},
                             on_estimate=lambda scope, timing, passes: seen.append((scope, timing, passes)))
    first = next(results)
    assert [(scope, passes) for scope, _, passes in seen] == [("fisher", 16)]  # exact: d passes
    timing = seen[0][1]
    assert timing.forward_seconds > 0 and timing.backward_seconds > 0 and timing.n_targets == 1
    assert first.metadata["settings"]["fisher_estimator"] == "exact"
    assert next(results).metadata["scope"] == "semantic"


def test_unknown_scope_and_empty_list_are_one_line_errors():
    model, tokenizer = make_model("llama"), make_tokenizer()
    with pytest.raises(ValueError, match="unknown scope 'integrated'"):
        next(explain_scopes(model, tokenizer, PROMPT, ("semantic", "integrated")))
    with pytest.raises(ValueError, match="no scope"):
        next(explain_scopes(model, tokenizer, PROMPT, ()))
