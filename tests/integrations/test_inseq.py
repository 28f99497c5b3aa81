"""The scopes as Inseq methods (captum_jscopes/integrations/inseq.py): Inseq's raw
per-step scores equal the standalone scopes at every step's prefix, options
pass through, bad options and attributed functions fail clearly, the caller's
model is left as it was, and Inseq's viewer and serialisation work."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import inseq  # in the test extra: a missing Inseq fails here rather than skipping
import pytest
import torch
from helpers import assert_unchanged, make_model, snapshot

import captum_jscopes.integrations.inseq as inseq_methods  # registers the methods
from captum_jscopes import FisherScope, SemanticScope, TemperatureScope

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Tom liked the food . he went to the"
TARGET = " big red house"  # three tokens of the test tokenizer
METHODS = {"semantic_scope": SemanticScope, "temperature_scope": TemperatureScope, "fisher_scope": FisherScope}


def attribute(model, tokenizer, method, **kwargs):
    wrapped = inseq.load_model(model, method, tokenizer=tokenizer, device="cpu")
    return wrapped.attribute(PROMPT, generated_texts=PROMPT + TARGET, show_progress=False, **kwargs)


def reference(scope, tokenizer, **options) -> list[torch.Tensor]:
    """The standalone scope at every step: prefix = prompt + target tokens so far."""
    ids = tokenizer(PROMPT + TARGET, return_tensors="pt").input_ids
    n_prompt = len(tokenizer(PROMPT).input_ids)
    rows = []
    for pos in range(n_prompt - 1, ids.shape[1] - 1):
        target = {"target": int(ids[0, pos + 1])} if isinstance(scope, SemanticScope) else {}
        rows.append(scope.attribute(ids[:, : pos + 1], **target, **options)[0])
    return rows


def assert_steps_equal(out, expected: list[torch.Tensor]) -> None:
    seq = out.sequence_attributions[0]
    scores = seq.target_attributions  # raw: (n_tokens, n_steps), NaN after each step's prefix
    assert scores.shape == (len(seq.target), len(expected))
    for step, alone in enumerate(expected):
        n = alone.numel()
        torch.testing.assert_close(scores[:n, step], alone.float(), rtol=1e-5, atol=1e-7)
        assert torch.isnan(scores[n:, step]).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_raw_step_scores_equal_the_scope_at_each_prefix(method, arch, tokenizer):
    model = make_model(arch, torch.float64 if arch == "gpt2" else torch.float32)
    out = attribute(model, tokenizer, method)
    assert out.info["attribution_method"] == method
    assert [t.token for t in out.sequence_attributions[0].target][-3:] == ["big", "red", "house"]
    assert_steps_equal(out, reference(METHODS[method](model, tokenizer), tokenizer))
    # no aggregation by default: what .show() and .save() see is the raw scores too
    aggregated = out.sequence_attributions[0].aggregate()
    torch.testing.assert_close(aggregated.target_attributions, out.sequence_attributions[0].target_attributions,
                               equal_nan=True)


def test_semantic_scope_equals_inseqs_own_logit_saliency(llama, tokenizer):
    # an independent route: Inseq's Captum Saliency on the target logit, L2 norm over
    # the embedding dimension (Inseq's vnorm), no normalisation
    ours = attribute(llama, tokenizer, "semantic_scope", exclude_special_tokens=False)
    theirs = attribute(llama, tokenizer, "saliency", attributed_fn="logit")
    saliency = theirs.sequence_attributions[0].aggregate(normalize=False).target_attributions
    torch.testing.assert_close(ours.sequence_attributions[0].target_attributions, saliency,
                               rtol=1e-5, atol=1e-7, equal_nan=True)


def test_options_pass_through_kwargs_and_attribution_args(llama, tokenizer):
    out = attribute(llama, tokenizer, "fisher_scope", k=2, attribution_args={"method": "eig"})
    assert out.info["attribution_args"] == {"method": "eig", "k": 2}
    eig = reference(FisherScope(llama, tokenizer), tokenizer, estimator="eig", k=2)
    assert_steps_equal(out, eig)
    assert not torch.allclose(eig[0], reference(FisherScope(llama, tokenizer), tokenizer)[0])
    out = attribute(llama, tokenizer, "semantic_scope", n_steps=3, exclude_special_tokens=False)
    assert_steps_equal(out, reference(SemanticScope(llama, tokenizer), tokenizer, n_steps=3,
                                      exclude_special_tokens=False))


@pytest.mark.parametrize("method", METHODS)
def test_rules_and_reduce_pass_as_every_methods_options(method, llama, tokenizer):
    # every field of the scope's Options is an option of its method, read from the scope
    assert set(METHODS[method].option_names()) <= set(inseq_methods.inseq_method(METHODS[method]).options())
    options = {"rules": "lrp", "reduce": "input", **({"estimator": "eig"} if method == "fisher_scope" else {})}
    out = attribute(llama, tokenizer, method, **options)
    assert_steps_equal(out, reference(METHODS[method](llama, tokenizer), tokenizer, **options))


@pytest.mark.parametrize(
    "method, kwargs, error, message",
    [
        ("fisher_scope", {"attribution_args": {"estimator": "bogus"}}, ValueError, "unknown Fisher method 'bogus'"),
        ("fisher_scope", {"budget": 0}, ValueError, "budget must be a positive int"),
        ("fisher_scope", {"attribution_args": {"kk": 3}}, TypeError, "unknown option.*'kk'.*estimator, k, n_probes"),
        ("temperature_scope", {"attribution_args": {"n_steps": 4}}, TypeError, "unknown option.*'n_steps'"),
        ("semantic_scope", {"n_steps": 0}, ValueError, "n_steps must be a positive int"),
        ("semantic_scope", {"attributed_fn": "entropy"}, ValueError, "does not take attributed_fn.*entropy"),
    ],
)
def test_a_bad_option_is_a_clear_error(method, kwargs, error, message, llama, tokenizer):
    with pytest.raises(error, match=message):
        attribute(llama, tokenizer, method, **kwargs)


def test_the_callers_model_is_left_as_it_was(tokenizer):
    model = make_model("llama")
    wrapped = inseq.load_model(model, "fisher_scope", tokenizer=tokenizer, device="cpu")
    # state inseq.load_model itself does not reset (it calls eval() and zero_grad()):
    # set it afterwards, so only the attribution can change it
    embedding = model.get_input_embeddings()
    model.train()
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    handle = model.model.layers[1].register_forward_hook(lambda *args: None)
    before = snapshot(model)
    try:
        wrapped.attribute(PROMPT, generated_texts=PROMPT + TARGET, show_progress=False)
        assert_unchanged(model, before)
        assert model.get_input_embeddings() is embedding  # not swapped for Captum's interpretable embedding
    finally:
        handle.remove()


def test_show_and_save(llama, tokenizer, tmp_path):
    out = attribute(llama, tokenizer, "temperature_scope")
    html = out.show(display=False, return_html=True)
    assert isinstance(html, str) and "house" in html
    path = tmp_path / "temperature.json"
    out.save(path)
    loaded = inseq.FeatureAttributionOutput.load(path)
    assert loaded.info["attribution_method"] == "temperature_scope"
    torch.testing.assert_close(loaded.sequence_attributions[0].target_attributions,
                               out.sequence_attributions[0].target_attributions, equal_nan=True)


def test_the_three_methods_are_registered():
    assert set(METHODS) <= set(inseq.list_feature_attribution_methods())
    # and importable under their class names, each the method of its scope
    for cls in (SemanticScope, TemperatureScope, FisherScope):
        method = getattr(inseq_methods, f"{cls.__name__}Attribution")
        assert method is inseq_methods.inseq_method(cls) and f"{cls.__name__}Attribution" in inseq_methods.__all__


def test_the_module_was_checked_against_the_installed_inseq():
    assert importlib.metadata.version("inseq") == inseq_methods.INSEQ_VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'inseq = ["inseq=={inseq_methods.INSEQ_VERSION}"]' in pyproject


def test_import_without_inseq_says_how_to_install_it():
    # None in sys.modules makes `import inseq` fail as if it were not installed
    code = "import sys; sys.modules['inseq'] = None; import captum_jscopes.integrations.inseq"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ImportError" in done.stderr and "pip install captum_jscopes[inseq]" in done.stderr
