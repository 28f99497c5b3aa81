"""Tests of captum_jscopes.bench.methods: the one table of benchmark methods."""

from __future__ import annotations

import importlib.util
import pytest
import torch
from helpers import assert_unchanged, make_model, make_tokenizer, snapshot

from captum_jscopes.bench import methods as M
from captum_jscopes.bench.methods import DEFAULT_METHODS, METHODS, parse_methods, random_scores
from captum_jscopes.runs.prompts import prepare_prompt
from captum_jscopes.metrics import ablated_log_probs
from captum_jscopes.scopes.registry import SCOPES

PROMPT = "Tom went home to the South and he liked the red food"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer()
    return make_model("llama"), tokenizer, prepare_prompt(tokenizer, PROMPT).input_ids


def test_parse_methods():
    assert parse_methods("all") == DEFAULT_METHODS
    assert len(DEFAULT_METHODS) == 9 and "ig50_token" not in DEFAULT_METHODS
    assert parse_methods("random, semantic") == ("semantic", "random")  # table order
    with pytest.raises(ValueError, match="no method"):
        parse_methods(" , ")
    with pytest.raises(ValueError, match="unknown method.*'nope'.*choose among"):
        parse_methods("semantic,nope")


def test_every_scope_entry_names_a_registered_scope_and_its_options():
    for entry in METHODS.values():
        if entry.is_scope:
            assert entry.scope in SCOPES
        else:
            assert entry.scope is None
    assert dict(METHODS["fisher_eig4"].options) == {"estimator": "eig", "k": 4}
    assert dict(METHODS["fisher_deflated_8_16"].options) == {"estimator": "deflated", "k": 8, "n_probes": 16}
    with pytest.raises(TypeError):  # entries are read-only: nobody changes a method for everyone
        METHODS["fisher_eig4"].options["k"] = 5


def test_backward_passes():
    assert METHODS["fisher"].backward_passes(576) == 40
    assert METHODS["fisher_exact"].backward_passes(576) == 576
    assert METHODS["fisher_eig16"].backward_passes(576) == 16
    assert METHODS["fisher_deflated_8_16"].backward_passes(576) == 24
    assert METHODS["semantic"].backward_passes(576) == 1
    assert METHODS["ig50"].backward_passes(576) == 50
    assert METHODS["feature_ablation"].backward_passes(576) is None


# the table's own methods, and one variant of each kind (the variants share one code path: the scope's options)
CHECKED = [m for m in METHODS if METHODS[m].variant_of is None] + ["semantic+lrp+input", "fisher_krylov+lrp",
                                                                   "temperature+input"]


@pytest.mark.parametrize("name", CHECKED)
def test_every_method_is_finite_deterministic_and_leaves_the_model_alone(name, tiny):
    if METHODS[name].kind == "lrp" and importlib.util.find_spec("lxt") is None:
        from captum_jscopes.bench.attnlrp import INSTALL

        pytest.skip(f"AttnLRP needs LXT: {INSTALL}")
    model, tokenizer, ids = make_model("llama"), *tiny[1:]
    model.train()  # a caller's state that must come back
    before = snapshot(model)
    first = METHODS[name].scores(model, tokenizer, ids, 7, prompt_id="3")
    again = METHODS[name].scores(model, tokenizer, ids, 7, prompt_id="3")
    assert_unchanged(model, before)
    assert first.shape == (ids.shape[1],) and bool(torch.isfinite(first).all())
    assert torch.equal(first, again)
    if name != "feature_ablation":  # a leave-one-out drop can be negative
        assert bool((first >= 0).all())
    assert float(first.abs().sum()) > 0


def test_saliency_equals_semantic_scope(tiny):
    model, tokenizer, ids = tiny
    saliency = METHODS["saliency"].scores(model, tokenizer, ids, 7)
    semantic = METHODS["semantic"].scores(model, tokenizer, ids, 7)
    rankable = torch.arange(ids.shape[1]) > 0  # the scope gives BOS a 0; Captum does not
    torch.testing.assert_close(saliency[rankable], semantic[rankable], rtol=1e-4, atol=1e-7)


def test_integrated_gradients_converges_to_its_completeness_sum():
    """With more steps, IG's attributions sum to f(x) - f(baseline) (completeness): the
    50-step run is checked on the raw attribution before the L2 reduction, for both baselines."""
    from captum.attr import IntegratedGradients

    model = make_model("llama", torch.float64)
    tokenizer = make_tokenizer()
    ids = prepare_prompt(tokenizer, PROMPT).input_ids
    embeds = model.get_input_embeddings()(ids).detach()
    forward = M.target_forward(model, ids.shape[1], 5, log_prob=False)
    for name in ("zero", "token"):
        baseline = M.ig_baseline(model, tokenizer, embeds, ids, name)
        attr = IntegratedGradients(forward).attribute(embeds, baselines=baseline, n_steps=50, internal_batch_size=10)
        gap = (forward(embeds) - forward(baseline)).item()
        assert attr.sum().item() == pytest.approx(gap, rel=1e-3, abs=1e-6)
    # the token baseline is the pad token's embedding at every position
    pad = model.get_input_embeddings().weight[tokenizer.pad_token_id]
    assert torch.equal(M.ig_baseline(model, tokenizer, embeds, ids, "token")[0, 3], pad.detach())
    # the forward with logits_to_keep gives the same logit as a full forward
    full = model(inputs_embeds=embeds).logits[0, -1, 5]
    assert forward(embeds).item() == pytest.approx(full.item(), abs=1e-10)
    with pytest.raises(ValueError, match="baseline"):
        M.ig_baseline(model, tokenizer, embeds, ids, "noise")


def test_the_two_ig_baselines_differ(tiny):
    _, tokenizer, ids = tiny
    model = make_model("llama")
    pad = model.get_input_embeddings().weight[tokenizer.pad_token_id]
    # a random init zeroes the padding row (nn.Embedding's padding_idx), which
    # would make the two baselines one; a trained model's pad row is not zero
    assert not pad.any()
    with torch.no_grad():
        pad.copy_(torch.randn_like(pad))
    zero = METHODS["ig50"].scores(model, tokenizer, ids, 7)
    token = METHODS["ig50_token"].scores(model, tokenizer, ids, 7)
    assert not torch.allclose(zero, token)


def test_feature_ablation_is_the_drop_of_log_p_when_one_token_is_zeroed(tiny):
    model, tokenizer, ids = tiny
    scores = METHODS["feature_ablation"].scores(model, tokenizer, ids, 7, batch_size=4)
    n = ids.shape[1]
    # row 0 intact, row 1 + t zeroes token t (BOS included: Captum ablates every token)
    rows = torch.cat([torch.zeros(1, n, dtype=torch.bool), torch.eye(n, dtype=torch.bool)])
    log_probs = ablated_log_probs(model, ids, rows)[:, 7]
    torch.testing.assert_close(scores, (log_probs[0] - log_probs[1:]).float(), rtol=1e-4, atol=1e-5)


def test_random_scores_are_seeded_per_prompt():
    a = random_scores(10, 0, "3")
    assert torch.equal(a, random_scores(10, 0, "3"))
    assert not torch.equal(a, random_scores(10, 0, "4"))
    assert not torch.equal(a, random_scores(10, 1, "3"))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mean_baseline_is_the_mean_embedding_at_every_position(arch):
    """The mean baseline averages the embedding module's OUTPUT over the whole table
    (Gemma's sqrt(d) scaling included), in chunks that do not change the result."""
    model, tokenizer = make_model(arch), make_tokenizer()
    ids = prepare_prompt(tokenizer, PROMPT).input_ids
    embedding = model.get_input_embeddings()
    embeds = embedding(ids).detach()
    expected = embedding(torch.arange(embedding.weight.shape[0])).detach().double().mean(0).float()
    baseline = M.ig_baseline(model, tokenizer, embeds, ids, "mean")
    assert baseline.shape == embeds.shape
    torch.testing.assert_close(baseline[0], expected.expand(ids.shape[1], -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(M.mean_embedding(embedding, chunk=7), expected, rtol=1e-5, atol=1e-6)
    if arch == "gemma3":  # the scaled lookup, not the raw weight
        assert not torch.allclose(expected, embedding.weight.double().mean(0).float())


def test_mean_baseline_ig_is_complete_and_differs_from_the_others(tiny):
    from captum.attr import IntegratedGradients

    model = make_model("llama", torch.float64)
    tokenizer, ids = tiny[1], tiny[2]
    embeds = model.get_input_embeddings()(ids).detach()
    forward = M.target_forward(model, ids.shape[1], 5, log_prob=False)
    baseline = M.ig_baseline(model, tokenizer, embeds, ids, "mean")
    attr = IntegratedGradients(forward).attribute(embeds, baselines=baseline, n_steps=50, internal_batch_size=10)
    assert attr.sum().item() == pytest.approx((forward(embeds) - forward(baseline)).item(), rel=1e-3, abs=1e-6)
    model32 = make_model("llama")
    mean = METHODS["ig50_mean"].scores(model32, tokenizer, ids, 7)
    assert not torch.allclose(mean, METHODS["ig50"].scores(model32, tokenizer, ids, 7))
    assert METHODS["ig50_mean"].backward_passes(16) == 50 and "ig50_mean" not in DEFAULT_METHODS


def test_describe_ig_baselines_names_the_token_and_the_matrix():
    info = M.describe_ig_baselines(make_model("llama"), make_tokenizer())
    assert info == {"token": {"id": 0, "piece": "<pad>", "rule": "pad"}, "mean": {"vocab": 64, "dim": 16}}


def test_every_scope_method_has_its_rules_and_reduction_variants():
    from captum_jscopes.bench.methods import scope_variants

    bases = [m for m in METHODS.values() if m.is_scope and m.variant_of is None]
    assert {"semantic", "temperature", "fisher_eig1", "fisher_krylov"} <= {m.name for m in bases}
    for base in bases:
        names = [v.name for v in scope_variants(base)]
        assert names == [base.name + "+lrp", base.name + "+input", base.name + "+lrp+input"]
        for name in names:
            variant = METHODS[name]
            assert variant.variant_of == base.name and variant.scope == base.scope
            assert {k: v for k, v in variant.options.items() if k not in ("rules", "reduce")} == dict(base.options)
            assert variant.options.get("rules", "gradient") == ("lrp" if "+lrp" in name else "gradient")
            assert variant.options.get("reduce", "norm") == ("input" if "+input" in name else "norm")
    assert not scope_variants(METHODS["grad_x_input"])
    # in the table, each variant follows its scope method
    order = list(METHODS)
    assert order.index("semantic+lrp+input") == order.index("semantic") + 3
