"""linearity_check: the per-token validity radius of a scope's local prediction.

Real tiny models only. The recomputations in these tests are independent of the
library: plain forwards with ``inputs_embeds``, gradients by
``torch.autograd.grad`` of the model's own logits / last hidden state.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from helpers import BOS, VOCAB_SIZE, assert_unchanged, make_model, make_tokenizer, random_ids, snapshot
from matplotlib.figure import Figure
from torch import nn

import captum_jscopes
from captum_jscopes import FisherScope, JacobianScope, LinearityResult, SemanticScope, TemperatureScope, linearity_check
from captum_jscopes.analysis.linearity import DEFAULT_EPSILONS
from captum_jscopes.display.linearity import plot_linearity

N = 7


def prompt(n: int = N, seed: int = 3) -> torch.Tensor:
    ids = random_ids(1, n, seed=seed)
    ids[0, 0] = BOS
    return ids


class PassThrough(nn.Module):
    """A decoder layer that returns its input unchanged (takes the layer's keywords)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def linear_llama(dtype=torch.float64) -> nn.Module:
    """A real LlamaForCausalLM that is exactly linear in its input embeddings.

    Every decoder layer is replaced by the identity and the final RMSNorm too, so the
    hidden state reaching the head is y = x_s (the embedding of the explained token
    itself) and the logits are z = W x_s with W the (bias-free) lm_head: linear in the
    embeddings. A target logit (or a logit difference) then changes by exactly
    g . delta, the first-order prediction, for any delta.
    """
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=16, vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config)
    model.model.layers = nn.ModuleList(PassThrough() for _ in model.model.layers)
    model.model.norm = nn.Identity()
    return model.to(dtype).eval()


def check_radius_definition(result: LinearityResult) -> None:
    largest = float(result.epsilons[-1])
    for t in range(result.radius.shape[0]):
        if t not in result.tokens.tolist():
            assert math.isnan(result.radius[t]) and torch.isnan(result.relative_error[t]).all()
            continue
        passed = result.relative_error[t] <= result.tol
        radius = float(result.radius[t])
        if radius == 0:
            assert not passed[0]
        else:
            k = int((result.epsilons == radius).nonzero()[0, 0])
            assert passed[: k + 1].all()
            assert radius == largest or not passed[k + 1]


# ------------------------------------------------------------ 1. an exactly linear model
@pytest.mark.parametrize("target", [None, 11, (11, 23)])
def test_linear_model_is_valid_over_the_whole_grid(tokenizer, target):
    model = linear_llama()
    ids = prompt()
    result = linearity_check(SemanticScope(model, tokenizer), ids, target=target, position=4)
    # y = x_4: only the explained token has a gradient; it is linear over the whole grid
    assert result.tokens.tolist() == [4]
    assert torch.all(result.radius[result.tokens] == DEFAULT_EPSILONS[-1])
    assert result.relative_error[4].max() < 1e-9
    assert result.noise_floor[4].max() < 1e-9  # orthogonal moves change a linear logit by 0
    assert not result.limited_by_noise().any()
    assert torch.isnan(result.radius[[0, 1, 2, 3, 5, 6]]).all()
    check_radius_definition(result)


def test_linear_model_with_padding_and_float32(tokenizer):
    model = linear_llama(torch.float32)
    ids = torch.cat([torch.zeros(1, 2, dtype=torch.long), prompt(5)], dim=1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    result = linearity_check(SemanticScope(model, tokenizer), ids, attention_mask=mask, position=-2)
    assert result.position == 5 and result.tokens.tolist() == [5]
    assert result.radius[5] == DEFAULT_EPSILONS[-1]


# ------------------------------------------------------------ 2. a real architecture
def _embeddings(model, ids):
    return model.get_input_embeddings()(ids).detach()


def _scalar(model, kind, x, position, target):
    """The scope's scalar from one plain forward of (1, n, e) embeddings."""
    if kind == "semantic":
        return model(inputs_embeds=x, use_cache=False).logits[0, position, target]
    y = model.base_model(inputs_embeds=x, use_cache=False).last_hidden_state[0, position]
    return y.norm()


@pytest.mark.parametrize("kind", ["semantic", "temperature"])
def test_radius_is_finite_and_recomputes_independently(tokenizer, kind):
    model = make_model("llama", torch.float64)
    ids = prompt()
    position, target = N - 1, 11
    scope = SemanticScope(model, tokenizer) if kind == "semantic" else TemperatureScope(model, tokenizer)
    result = linearity_check(scope, ids, target=target if kind == "semantic" else None)
    check_radius_definition(result)
    largest = DEFAULT_EPSILONS[-1]
    checked = result.radius[result.tokens]
    assert torch.all(checked >= 0)
    assert bool((checked < largest).any()), "a real transformer should not be linear over the whole grid"

    x0 = _embeddings(model, ids)
    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_scalar(model, kind, x, position, target), x)
    recomputed = 0
    for t in result.tokens.tolist():
        radius = float(result.radius[t])
        if radius == 0:
            continue
        g = grad[0, t]
        size = radius * x0[0, t].norm()
        delta = size * g / g.norm()
        with torch.no_grad():
            moved = x0.clone()
            moved[0, t] += delta
            change = _scalar(model, kind, moved, position, target) - _scalar(model, kind, x0, position, target)
        predicted = size * g.norm()
        error = float((change - predicted).abs() / predicted.abs())
        k = int((result.epsilons == radius).nonzero()[0, 0])
        assert error <= result.tol
        assert error == pytest.approx(float(result.relative_error[t, k]), abs=2e-3)
        torch.testing.assert_close(result.scores[t], g.norm(), rtol=1e-4, atol=0)
        recomputed += 1
    assert recomputed > 0


def test_noise_floor_separates_rounding_from_non_linearity(tokenizer):
    ids = prompt()
    # float32 Llama: the Temperature scores of early tokens are tiny, so their
    # predicted change of ||y|| at small eps is below float32 resolution
    rounded = linearity_check(TemperatureScope(make_model("llama"), tokenizer), ids)
    tokens = rounded.tokens
    assert bool((rounded.noise_floor[tokens, 0] > rounded.tol).any())
    flagged = rounded.limited_by_noise()
    assert bool(flagged.any()) and "*" in rounded.summary()
    assert torch.all(rounded.radius[flagged] < DEFAULT_EPSILONS[-1])
    # the floor scales like 1 / eps: the same absolute rounding against a larger prediction
    ratio = rounded.noise_floor[tokens, 0] / rounded.noise_floor[tokens, -1]
    expected = torch.full_like(ratio, DEFAULT_EPSILONS[-1] / DEFAULT_EPSILONS[0])
    torch.testing.assert_close(ratio, expected, rtol=1e-3, atol=0)
    # GPT-2 in float64 computes everything in float64: what is left of the floor is the
    # curvature along the orthogonal moves, far below tol
    exact = linearity_check(TemperatureScope(make_model("gpt2", torch.float64), tokenizer), ids)
    assert exact.noise_floor[exact.tokens].max() < 1e-2 * exact.tol
    assert not exact.limited_by_noise().any()
    assert torch.all(exact.radius[exact.tokens] > 0)
    fisher = linearity_check(FisherScope(make_model("llama"), tokenizer), ids, epsilons=[0.01])
    assert torch.isnan(fisher.noise_floor).all()


# ------------------------------------------------------------ 3. Fisher
def _fisher(model, tokenizer, **kwargs):
    return linearity_check(FisherScope(model, tokenizer), prompt(), **kwargs)


def test_fisher_small_noise_matches_the_second_order_prediction(tokenizer):
    model = make_model("llama", torch.float64)
    result = _fisher(model, tokenizer, n_draws=32)
    tokens = result.tokens
    assert len(tokens) == N - 1  # BOS is special
    # the prediction is sigma^2 s_t / 2 with sigma = eps ||x_t|| / sqrt(e)
    x = _embeddings(model, prompt())[0]
    sigma = DEFAULT_EPSILONS[0] * x[tokens].norm(dim=-1) / math.sqrt(x.shape[-1])
    torch.testing.assert_close(result.predicted[tokens, 0], sigma**2 * result.scores[tokens] / 2)
    error = result.relative_error[tokens, 0]
    assert (error < 0.5).float().mean() >= 0.8, error  # Monte Carlo error of 32 draws only
    # ... and that error is the sampling error of the mean, not non-linearity
    assert (error <= 4 * result.sampling_error[tokens, 0]).float().mean() >= 0.8

    few = _fisher(model, tokenizer)  # 4 draws: the Monte Carlo error exceeds tol
    assert bool(few.limited_by_noise()[tokens].float().mean() >= 0.5)
    # the paired reference (the same draws' quadratic form) removes the sampling error
    paired = _fisher(model, tokenizer, n_draws=4, fisher_reference="paired")
    assert paired.fisher_reference == "paired"
    assert paired.relative_error[tokens, 0].max() < 0.02
    assert torch.all(paired.radius[tokens] > DEFAULT_EPSILONS[0])
    check_radius_definition(paired)


def test_fisher_is_deterministic_for_a_seed(tokenizer):
    model = make_model("llama")
    first = _fisher(model, tokenizer)
    again = _fisher(model, tokenizer, batch_size=5)  # batching does not change the draws
    torch.testing.assert_close(first.observed, again.observed, rtol=1e-4, atol=1e-12, equal_nan=True)
    repeat = _fisher(model, tokenizer)
    assert torch.equal(first.observed.nan_to_num(-1), repeat.observed.nan_to_num(-1))
    assert torch.equal(first.radius.nan_to_num(-1), repeat.radius.nan_to_num(-1))
    other = _fisher(model, tokenizer, seed=1)
    tokens = first.tokens
    assert not torch.allclose(first.observed[tokens], other.observed[tokens])
    assert first.n_draws == 4 and first.seed == 0 and first.scope == "fisher"


# ------------------------------------------------------------ the result's other fields
def test_result_fields_and_distances(tokenizer):
    model = make_model("llama")
    ids = prompt()
    eps = [0.3, 0.01, 0.1]
    result = linearity_check(SemanticScope(model, tokenizer), ids, epsilons=eps, tol=0.05, tokens=[2, -1])
    assert result.epsilons.tolist() == sorted(eps)
    assert result.tokens.tolist() == [2, N - 1]
    assert result.relative_error.shape == (N, 3) and result.relative_error.dtype == torch.float64
    assert result.radius.shape == result.scores.shape == result.swap_distance.shape == (N,)
    assert torch.isnan(result.relative_error[[0, 1, 3, 4, 5]]).all()
    assert torch.all(result.zero_distance == 1.0)
    assert result.tol == 0.05 and result.scope == "semantic" and result.fisher_reference is None
    assert torch.isnan(result.sampling_error).all()
    with pytest.raises(Exception):
        result.tol = 1.0  # frozen
    # swap distance: nearest other row of the embedding matrix, in units of ||x_t||
    table = model.get_input_embeddings().weight.detach().double()
    for t in range(N):
        distance = (table - table[ids[0, t]]).norm(dim=-1)
        distance[ids[0, t]] = float("inf")
        expected = distance.min() / table[ids[0, t]].norm()
        assert float(result.swap_distance[t]) == pytest.approx(float(expected), rel=1e-6)
    scores = SemanticScope(model, tokenizer).attribute(ids)[0].double()
    torch.testing.assert_close(result.scores, scores)
    text = result.summary()
    assert "semantic" in text and str(result) == text
    assert result.token_labels[0] == "<bos>"


# ------------------------------------------------------------ 4. bad input, the caller's model
@pytest.mark.parametrize(
    "epsilons, error",
    [
        ([], ValueError),
        ([-0.1, 0.1], ValueError),
        ([0.0, 0.1], ValueError),
        ([0.1, 0.1], ValueError),
        ([0.1, float("nan")], ValueError),
        ([float("inf")], ValueError),
        ("0.1", TypeError),
        ([True], TypeError),
        (torch.ones(2, 2), ValueError),
    ],
)
def test_bad_epsilons(llama, tokenizer, epsilons, error):
    with pytest.raises(error, match="epsilons"):
        linearity_check(SemanticScope(llama, tokenizer), prompt(), epsilons=epsilons)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tol=0), ValueError, "tol"),
        (dict(tol=-0.1), ValueError, "tol"),
        (dict(tol=float("nan")), ValueError, "tol"),
        (dict(tol=float("inf")), ValueError, "tol"),
        (dict(tol="0.1"), TypeError, "tol"),
        (dict(tokens=[N]), ValueError, "out of range"),
        (dict(tokens=[-N - 1]), ValueError, "out of range"),
        (dict(tokens=[]), ValueError, "tokens is empty"),
        (dict(tokens=[1.5]), TypeError, "tokens"),
        (dict(tokens=torch.tensor([True])), TypeError, "tokens"),
        (dict(tokens=[0]), ValueError, "score 0"),  # BOS: an excluded special token
        (dict(tokens=[5], position=3), ValueError, "score 0"),  # after the explained position
        (dict(n_draws=0), ValueError, "n_draws"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(fisher_reference="nope"), ValueError, "fisher_reference"),
        (dict(position=N), ValueError, "position"),
        (dict(scope_options={"n_steps": 4}), ValueError, "n_steps"),
    ],
)
def test_bad_arguments(llama, tokenizer, kwargs, error, match):
    with pytest.raises(error, match=match):
        linearity_check(SemanticScope(llama, tokenizer), prompt(), **kwargs)


def test_unsupported_scope_and_batches(llama, tokenizer):
    with pytest.raises(TypeError, match="defines no readout"):
        linearity_check(JacobianScope(llama, tokenizer), prompt())
    with pytest.raises(TypeError, match="scope must be"):
        linearity_check(llama, prompt())
    with pytest.raises(ValueError, match="one prompt"):
        linearity_check(SemanticScope(llama, tokenizer), random_ids(2, N))
    with pytest.raises(ValueError, match="takes no target"):
        linearity_check(TemperatureScope(llama, tokenizer), prompt(), target=11)


def test_the_callers_model_is_unchanged_also_in_train_mode_and_after_errors(tokenizer):
    model = make_model("llama").train()
    model.model.layers[0].mlp.up_proj.weight.grad = torch.ones_like(model.model.layers[0].mlp.up_proj.weight)
    model.model.norm.weight.requires_grad_(False)
    model.lm_head.register_forward_hook(lambda *args: None)
    before = snapshot(model)
    ids = prompt()
    for scope in (SemanticScope(model, tokenizer), TemperatureScope(model, tokenizer), FisherScope(model, tokenizer)):
        result = linearity_check(scope, ids, epsilons=[0.01, 0.1])
        assert bool((result.radius[result.tokens] >= 0).all())
        assert_unchanged(model, before)
    paired = linearity_check(FisherScope(model, tokenizer), ids, epsilons=[0.01], fisher_reference="paired")
    assert paired.tokens.numel() == N - 1
    assert_unchanged(model, before)
    for scope, kwargs in [
        (TemperatureScope(model, tokenizer), dict(target=11)),  # raised by the scope, inside the guard
        (SemanticScope(model, tokenizer), dict(tokens=[0])),  # raised after the scope ran
        (FisherScope(model, tokenizer), dict(scope_options={"estimator": "nope"})),
    ]:
        with pytest.raises(ValueError):
            linearity_check(scope, ids, **kwargs)
        assert_unchanged(model, before)
    assert model.training


def test_dropout_is_off_during_the_check(tokenizer):
    # a model in train mode with dropout would make the real changes random
    model = make_model("gpt2", seed=1).train()
    model.config.attn_pdrop = model.config.resid_pdrop = model.config.embd_pdrop = 0.5
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.5
    first = linearity_check(SemanticScope(model, tokenizer), prompt())
    second = linearity_check(SemanticScope(model, tokenizer), prompt())
    torch.testing.assert_close(first.relative_error, second.relative_error, equal_nan=True)
    assert model.training


def test_exported_from_the_package():
    assert captum_jscopes.linearity_check is linearity_check
    assert captum_jscopes.LinearityResult is LinearityResult
    assert {"linearity_check", "LinearityResult"} <= set(captum_jscopes.__all__)


# ------------------------------------------------------------ 5. the figure
def test_plot_linearity_draws_one_line_per_token(tokenizer):
    model = make_model("llama")
    result = linearity_check(SemanticScope(model, tokenizer), prompt())

    def curves(figure):
        (ax,) = figure.axes
        return [line for line in ax.get_lines() if line.get_gid() == "relative_error"]

    figure = plot_linearity(result)
    assert isinstance(figure, Figure)
    lines = curves(figure)
    assert len(lines) == len(result.tokens)
    assert [line.get_label() for line in lines][0].endswith(result.token_labels[int(result.tokens[0])])
    (ax,) = figure.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    gids = [line.get_gid() for line in ax.get_lines()]
    assert gids.count("tol") == 1
    assert gids.count("radius") == len(result.tokens) and gids.count("swap_distance") == len(result.tokens)

    figure = plot_linearity(result, tokens=[1, 2], labels=["first", "second"])
    assert [line.get_label() for line in curves(figure)] == ["first", "second"]
    figure = plot_linearity(result, labels=[f"w{i}" for i in range(N)])
    assert [line.get_label() for line in curves(figure)] == [f"w{t}" for t in result.tokens.tolist()]

    own = Figure()
    ax = own.add_subplot()
    assert plot_linearity(result, tokens=torch.tensor([N - 1]), ax=ax) is own
    assert len(curves(own)) == 1
    with pytest.raises(ValueError, match="not checked"):
        plot_linearity(result, tokens=[0])
    with pytest.raises(ValueError, match="labels"):
        plot_linearity(result, labels=["a"])
    with pytest.raises(TypeError, match="LinearityResult"):
        plot_linearity("result")
