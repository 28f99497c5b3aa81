"""``reduce="input"`` on every scope and every Fisher estimator, against a float64
brute force from the full Jacobian (torch.autograd.functional.jacobian of the
model's own logits and hidden state, no hooks), and the surfaces that read it:
spans, layer maps, linearity_check, the Captum baseline it equals."""

from __future__ import annotations

import pytest
import torch
from helpers import (BOS, CONFIGS, assert_unchanged, brute_force_scores, make_model, make_tokenizer, random_ids,
                     snapshot)

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope
from captum_jscopes.fisher.estimators import ESTIMATORS

N = 7
POSITION = 5  # not the last token: tokens after it must score 0
TOLERANCE = {"gpt2": 1e-8}  # GPT-2 stays float64 end to end; the others run parts in float32


def prompt():
    ids = random_ids(1, N, seed=3)
    ids[0, 0] = BOS
    return ids


def brute_force(model, ids, position, target, foil):
    """(n,) reference scores under reduce="input": each token's VJP dotted with its embedding."""
    return brute_force_scores(model, ids, position, target, foil, reduce="input")


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_every_scope_with_input_reduction_equals_brute_force(arch):
    model = make_model(arch, torch.float64)
    ids = prompt()
    before = snapshot(model)
    expected = brute_force(model, ids, POSITION, 9, 11)
    kwargs = dict(position=POSITION, exclude_special_tokens=False, reduce="input")
    got = {
        "semantic": SemanticScope(model).attribute(ids, target=9, **kwargs)[0],
        "contrastive": SemanticScope(model).attribute(ids, target=(9, 11), **kwargs)[0],
        "temperature": TemperatureScope(model).attribute(ids, **kwargs)[0],
        "fisher": FisherScope(model).attribute(ids, estimator="exact", **kwargs)[0],
    }
    rtol = TOLERANCE.get(arch, 1e-4)
    for name, want in expected.items():
        assert torch.allclose(got[name][: POSITION + 1], want[: POSITION + 1], rtol=rtol,
                              atol=rtol * float(want.abs().max())), (arch, name)
        assert torch.all(got[name][POSITION + 1:] == 0)
    assert_unchanged(model, before)


def test_every_fisher_estimator_with_input_reduction_holds_the_brute_force(llama64):
    """exact and eig with every direction equal it; the randomised estimators are
    unbiased (their mean over 16 seeds within 4 standard errors of it, every token),
    and krylov's 95% intervals cover it."""
    ids = prompt()
    truth = brute_force(llama64, ids, POSITION, 9, 11)["fisher"][: POSITION + 1]
    d = llama64.config.hidden_size
    scope = FisherScope(llama64, exclude_special_tokens=False)
    for name in ESTIMATORS:
        options = ({"k": d} if name == "eig" else {"budget": 12} if name in ("hutchinson", "krylov")
                   else {"k": 4, "n_probes": 8} if name == "deflated" else {})
        if not ESTIMATORS[name].randomised:
            scores = scope.attribute(ids, position=POSITION, reduce="input", estimator=name, **options)[0]
            assert torch.allclose(scores[: POSITION + 1], truth, rtol=1e-6, atol=1e-9 * float(truth.max())), name
            continue
        runs = [scope.attribute(ids, position=POSITION, reduce="input", estimator=name, seed=seed, return_error=True,
                                **options) for seed in range(16)]
        scores = torch.stack([s[0, : POSITION + 1] for s, _ in runs])
        mean, spread = scores.mean(0), scores.std(0) / 4
        assert bool(((mean - truth).abs() <= 4 * spread + 1e-7 * truth.max()).all()), (name, mean, truth)
        if name == "krylov":
            errors = torch.stack([e[0, : POSITION + 1] for _, e in runs])
            covered = ((scores - truth).abs() <= 1.96 * errors + 1e-12).double().mean()
            assert float(covered) >= 0.85, covered


def test_krylov_tol_reaches_its_error_under_input_reduction(llama64):
    ids = random_ids(1, 12, seed=5)
    scope = FisherScope(llama64, exclude_special_tokens=False)
    exact = scope.attribute(ids, reduce="input", estimator="exact")[0]
    scores = scope.attribute(ids, reduce="input", tol=0.02, budget=6)[0]
    assert scope.last_info["rel_error"] <= 0.02
    assert float((scores - exact).norm() / exact.norm()) < 0.06


def test_semantic_input_equals_captum_gradient_times_input_of_the_target_logit(llama):
    from captum.attr import InputXGradient

    ids = random_ids(1, 8, seed=7)
    target = 12
    ours = SemanticScope(llama, exclude_special_tokens=False).attribute(ids, target=target, reduce="input")[0]
    embeds = llama.get_input_embeddings()(ids).detach().requires_grad_()
    relevance = InputXGradient(lambda x: llama(inputs_embeds=x).logits[:, -1, target]).attribute(embeds)
    assert torch.allclose(ours, relevance[0].sum(-1).abs().detach(), rtol=1e-4, atol=1e-7)


def test_input_reduction_is_not_the_norm_and_defaults_are_unchanged(llama64):
    ids = prompt()
    default = SemanticScope(llama64).attribute(ids, target=9)
    explicit = SemanticScope(llama64).attribute(ids, target=9, rules="gradient", reduce="norm")
    assert torch.equal(default, explicit)  # the defaults keep today's scores bit for bit
    assert not torch.allclose(default, SemanticScope(llama64).attribute(ids, target=9, reduce="input"))


def test_words_of_an_input_reduced_map_add_up(llama64, tokenizer):
    from captum.attr import TextTokenInput

    from captum_jscopes import LLMScopeAttribution

    inp = TextTokenInput("the cat sat on the mat", tokenizer)
    for scope, options in ((SemanticScope, {}), (SemanticScope, {"reduce": "input"}),
                           (FisherScope, {"reduce": "input", "estimator": "exact"})):
        result = LLMScopeAttribution(scope(llama64, tokenizer), tokenizer).attribute(inp, target=" dog", **options)
        words = result.spans([[0, 1, 2]])
        part = result.seq_attr[:3]
        if options.get("reduce") == "input":
            assert result.metadata["settings"]["reduce"] == "input"
            assert torch.allclose(words.seq_attr[0], part.sum().to(words.seq_attr.dtype))
        else:
            assert torch.allclose(words.seq_attr[0], part.pow(2).sum().sqrt().to(words.seq_attr.dtype))


def test_layer_map_row_zero_is_the_input_reduced_map(llama64):
    from captum_jscopes.analysis.layers import layer_map

    ids = prompt()
    for scope, options in ((SemanticScope(llama64), {"target": 9}), (FisherScope(llama64), {"estimator": "exact"})):
        plain = scope.attribute(ids, reduce="input", **options)
        layered = layer_map(scope, ids, reduce="input", **options)
        assert torch.allclose(layered.scores[:, 0], plain, rtol=1e-6, atol=1e-12)
        assert layered.scores.shape[1] == llama64.config.num_hidden_layers + 1


@pytest.mark.parametrize("scope_class", (SemanticScope, FisherScope))
def test_linearity_check_moves_tokens_toward_deletion_under_input_reduction(llama64, scope_class):
    from captum_jscopes.analysis.linearity import linearity_check

    ids = prompt()
    result = linearity_check(scope_class(llama64), ids, scope_options={"reduce": "input"},
                             epsilons=[1e-3, 1e-2, 1e-1])
    assert result.perturbation == "deletion" and result.rules == "gradient"
    # a first-order (Semantic) / second-order (Fisher) prediction of the deletion's effect: exact as eps -> 0
    small = result.relative_error[result.tokens, 0]
    assert float(small.median()) < 0.05
    lrp = linearity_check(scope_class(llama64), ids, scope_options={"reduce": "input", "rules": "lrp"},
                          epsilons=[1e-3, 1e-2])
    # LRP's map is not the gradient: its prediction stays off however small the move
    assert lrp.rules == "lrp" and float(lrp.relative_error[lrp.tokens, 0].median()) > 0.05


def test_registered_scope_gets_rules_and_reduce():
    from dataclasses import dataclass

    from captum_jscopes.scopes.base import JacobianScope, ScopeOptions

    @dataclass(frozen=True)
    class LastOptions(ScopeOptions):
        pass

    class Last(JacobianScope):
        name = "last_dim_test"
        Options = LastOptions

        def directions(self, forward, targets):
            d = forward.hidden.shape[-1]
            v = torch.zeros_like(forward.hidden.detach())
            v[..., d - 1] = 1
            return v[None]

    model = make_model("llama", torch.float64)
    ids = prompt()
    assert Last.option_names()[:2] == ("rules", "reduce")
    plain = Last(model, exclude_special_tokens=False).attribute(ids, position=POSITION, reduce="input")[0]

    def hidden(x):
        return model.base_model(inputs_embeds=x, use_cache=False).last_hidden_state[0, POSITION, -1]

    x0 = model.get_input_embeddings()(ids).detach()
    grad = torch.autograd.functional.jacobian(hidden, x0)[0]
    assert torch.allclose(plain, (grad * x0[0]).sum(-1).abs(), rtol=1e-4, atol=1e-9)
    assert Last(model).attribute(ids, rules="lrp").shape == (1, N)
