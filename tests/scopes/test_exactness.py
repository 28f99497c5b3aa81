"""Every scope against a brute-force computation from the full Jacobian
(torch.autograd.functional.jacobian, float64) and against finite differences.

The brute force is independent of the library's engine: it differentiates the
model's own logits (the logit-space form of PAPER.md) and the base model's
last hidden state, with no hooks."""

from __future__ import annotations

import pytest
import torch
from helpers import BOS, CONFIGS, brute_force_scores, make_model, random_ids

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope

# GPT-2 stays in float64 end to end; the others run norms / rotary embeddings in float32 inside.
TOLERANCE = {"gpt2": 1e-8}
DEFAULT_TOLERANCE = 1e-4
N = 7
POSITION = 5  # not the last token: tokens after it must score 0


def prompt():
    ids = random_ids(1, N, seed=3)
    ids[0, 0] = BOS
    return ids


def brute_force(model, ids, position, target, foil):
    """Reference scores (n,) for every scope, from full Jacobians (helpers.brute_force_scores)."""
    return brute_force_scores(model, ids, position, target, foil)


def library(model, ids, position, target, foil):
    kwargs = dict(position=position, exclude_special_tokens=False)
    return {
        "semantic": SemanticScope(model).attribute(ids, target=target, **kwargs)[0],
        "contrastive": SemanticScope(model).attribute(ids, target=(target, foil), **kwargs)[0],
        "temperature": TemperatureScope(model).attribute(ids, **kwargs)[0],
        "fisher": FisherScope(model).attribute(ids, estimator="exact", **kwargs)[0],
    }


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_every_scope_equals_brute_force(arch):
    model = make_model(arch, torch.float64)
    ids = prompt()
    expected = brute_force(model, ids, POSITION, target=11, foil=23)
    got = library(model, ids, POSITION, target=11, foil=23)
    tolerance = TOLERANCE.get(arch, DEFAULT_TOLERANCE)
    for scope, reference in expected.items():
        reference = reference.clone()
        reference[POSITION + 1 :] = 0  # the library zeroes tokens after the position
        assert got[scope].dtype == torch.float64
        assert reference[: POSITION + 1].abs().min() > 0, f"{arch} {scope}: degenerate reference"
        error = (got[scope] - reference).norm() / reference.norm()
        assert error <= tolerance, f"{arch} {scope}: relative error {error:.2e}"
        assert torch.all(got[scope][POSITION + 1 :] == 0)


def test_brute_force_tokens_after_position_have_zero_jacobian():
    # causality: the property that justifies zeroing them in the library
    model = make_model("gpt2", torch.float64)
    ids = prompt()
    expected = brute_force(model, ids, POSITION, 11, 23)
    for scope in expected.values():
        assert torch.all(scope[POSITION + 1 :].abs() < 1e-12)


# Llama computes rotary embeddings in float32 inside: a larger step keeps its rounding out of the quotient
@pytest.mark.parametrize("arch, h, rtol", [("gpt2", 1e-6, 1e-6), ("llama", 1e-3, 1e-3)])
def test_semantic_scope_matches_finite_differences(arch, h, rtol):
    model = make_model(arch, torch.float64)
    ids = prompt()
    x0 = model.get_input_embeddings()(ids).detach()
    target = 11

    def logit(x):
        with torch.no_grad():
            return model(inputs_embeds=x, use_cache=False).logits[0, -1, target]

    grad = torch.zeros_like(x0)
    for t in range(N):
        for j in range(x0.shape[-1]):
            step = torch.zeros_like(x0)
            step[0, t, j] = h
            grad[0, t, j] = (logit(x0 + step) - logit(x0 - step)) / (2 * h)
    expected = grad[0].norm(dim=-1)
    got = SemanticScope(model).attribute(ids, target=target, exclude_special_tokens=False)[0]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=1e-9)


def test_fisher_eig_with_every_direction_is_exact_and_truncation_is_biased_low():
    model = make_model("gpt2", torch.float64)
    ids = prompt()
    scope = FisherScope(model)
    exact = scope.attribute(ids, estimator="exact")
    d = model.config.n_embd
    torch.testing.assert_close(scope.attribute(ids, estimator="eig", k=d), exact, rtol=1e-10, atol=0)
    top1 = scope.attribute(ids, estimator="eig", k=1)
    assert torch.all(top1 <= exact * (1 + 1e-12))
    assert top1.sum() < exact.sum()


def test_fisher_deflated_estimator_is_unbiased():
    # averaging the deflated estimator over many seeds converges to the exact value
    model = make_model("llama", torch.float64)
    ids = prompt()
    scope = FisherScope(model)
    exact = scope.attribute(ids, estimator="exact")
    runs = torch.stack([scope.attribute(ids, estimator="deflated", k=2, n_probes=8, seed=s) for s in range(60)])
    mean, spread = runs.mean(0), runs.std(0) / 60**0.5
    single_error = (runs - exact).norm(dim=-1).mean()  # typical error of one run
    assert single_error > 0, "the estimator should be random with k < d"
    # an unbiased estimator's average over 60 runs is ~sqrt(60) ~ 8x closer
    assert (mean - exact).norm() < single_error / 3
    assert torch.all((mean - exact).abs() <= 4 * spread + 1e-12)


def test_fisher_deflated_error_estimate_is_conservative_but_informative():
    model = make_model("llama", torch.float64)
    ids = prompt()
    scope = FisherScope(model)
    exact = scope.attribute(ids, estimator="exact")
    errors, estimates = [], []
    for seed in range(40):
        scores, error = scope.attribute(ids, estimator="deflated", k=2, n_probes=8, seed=seed, return_error=True)
        errors.append(scores - exact)
        estimates.append(error)
    rms_error = torch.stack(errors).pow(2).mean(0).sqrt()
    mean_estimate = torch.stack(estimates).mean(0)
    scored = exact > 0
    ratio = mean_estimate[scored] / rms_error[scored]
    # collapsed strata over-estimate (neighbouring strata differ in mean), never badly under
    assert torch.all((ratio > 0.8) & (ratio < 5.0)), ratio
    covered = (torch.stack(errors).abs() <= 2 * torch.stack(estimates))[:, scored]
    assert covered.float().mean() > 0.95
