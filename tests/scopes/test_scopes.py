"""Behaviour of the standalone scopes: shapes, batching, targets, special
tokens, dtypes, determinism, bad input, and the caller's model left untouched."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import BOS, PAD, assert_unchanged, make_model, random_ids, snapshot

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope, sink_share
from captum_jscopes.fisher.algebra import fisher_matrix
from captum_jscopes.core.forward import prepare_inputs, resolve_positions, run_forward

SCOPES = [SemanticScope, TemperatureScope, FisherScope]


@pytest.mark.parametrize("scope_cls", SCOPES)
def test_shape_zero_after_position_and_bos_excluded(scope_cls, llama):
    ids = random_ids(2, 8)
    ids[:, 0] = BOS
    scores = scope_cls(llama).attribute(ids, position=4)
    assert scores.shape == (2, 8) and scores.dtype == torch.float32
    assert torch.all(scores[:, 5:] == 0) and torch.all(scores[:, 0] == 0)
    assert torch.all(scores[:, 1:5] > 0)
    kept = scope_cls(llama).attribute(ids, position=4, exclude_special_tokens=False)
    assert torch.all(kept[:, 0] > 0)
    torch.testing.assert_close(kept[:, 1:], scores[:, 1:])


@pytest.mark.parametrize("scope_cls", SCOPES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batch_equals_one_at_a_time(scope_cls, padding_side):
    model = make_model("llama")
    prompts = [random_ids(1, n, seed=n)[0] for n in (5, 9, 7)]
    for p in prompts:
        p[0] = BOS
    width = max(len(p) for p in prompts)
    ids = torch.full((3, width), PAD)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        cols = slice(0, len(p)) if padding_side == "right" else slice(width - len(p), width)
        ids[row, cols], mask[row, cols] = p, 1
    scope = scope_cls(model)
    target = 17 if scope_cls is SemanticScope else None
    batch = scope.attribute(ids, target=target, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = scope.attribute(p, target=target)[0]
        got = batch[row][mask[row] == 1]
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-6)
        assert torch.all(batch[row][mask[row] == 0] == 0)


def test_position_counts_real_tokens_of_each_row():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert resolve_positions(-1, mask).tolist() == [4, 3]
    assert resolve_positions(0, mask).tolist() == [2, 0]
    assert resolve_positions(torch.tensor([1, -2]), mask).tolist() == [3, 2]
    with pytest.raises(ValueError, match="out of range"):
        resolve_positions(3, mask)


@pytest.mark.parametrize("scope_cls", SCOPES)
def test_same_call_twice_is_identical(scope_cls, llama):
    ids = random_ids(1, 10)
    scope = scope_cls(llama)
    assert torch.equal(scope.attribute(ids), scope.attribute(ids))


def test_fisher_seed_changes_the_estimate_and_fixes_it(llama):
    ids = random_ids(1, 10)
    scope = FisherScope(llama)
    # below full rank, so that there is something random: hutchinson with 2 exact directions, krylov with 4
    for options in ({"estimator": "hutchinson", "k": 2}, {"estimator": "krylov", "budget": 12}):
        assert torch.equal(scope.attribute(ids, **options, seed=1), scope.attribute(ids, **options, seed=1))
        assert not torch.equal(scope.attribute(ids, **options, seed=1), scope.attribute(ids, **options, seed=2))


def test_semantic_targets_string_id_tensor_and_default_prediction(llama, tokenizer):
    ids = torch.tensor([tokenizer.encode("the cat sat on the")])
    scope = SemanticScope(llama, tokenizer)
    by_id = scope.attribute(ids, target=tokenizer.convert_tokens_to_ids("mat"))
    assert torch.equal(scope.attribute(ids, target="mat"), by_id)
    assert torch.equal(scope.attribute(ids, target=torch.tensor(tokenizer.convert_tokens_to_ids("mat"))), by_id)
    predicted = int(llama(ids).logits[0, -1].argmax())
    assert torch.equal(scope.attribute(ids), scope.attribute(ids, target=predicted))


def test_contrastive_scope_is_the_gradient_of_the_logit_difference(llama):
    ids = random_ids(1, 6)
    x = llama.get_input_embeddings()(ids).detach().requires_grad_()
    logits = llama(inputs_embeds=x).logits[0, -1]
    (grad,) = torch.autograd.grad(logits[20] - logits[30], x)
    got = SemanticScope(llama).attribute(ids, target=(20, 30))[0]
    torch.testing.assert_close(got, grad[0].norm(dim=-1))


def test_per_row_targets(llama):
    ids = random_ids(2, 6)
    both = SemanticScope(llama).attribute(ids, target=[20, 30])
    torch.testing.assert_close(both[0], SemanticScope(llama).attribute(ids[:1], target=20)[0])
    torch.testing.assert_close(both[1], SemanticScope(llama).attribute(ids[1:], target=30)[0])


def test_token_mask_scores_only_chosen_tokens(llama):
    ids = random_ids(1, 8)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 2:5] = True
    full = TemperatureScope(llama).attribute(ids)
    part = TemperatureScope(llama).attribute(ids, token_mask=mask)
    assert torch.all(part[~mask] == 0)
    torch.testing.assert_close(part[mask], full[mask])


def test_sink_share_reports_the_first_tokens_share(llama):
    ids = random_ids(1, 8)
    scores = TemperatureScope(llama).attribute(ids)
    share = sink_share(scores, k=2)
    torch.testing.assert_close(share.float(), scores[:, :2].sum(-1) / scores.sum(-1))


def test_path_integrated_semantic_scope(llama):
    ids = random_ids(1, 6)
    target, steps = 12, 4
    x = llama.get_input_embeddings()(ids).detach()
    total = torch.zeros_like(x)
    for k in range(1, steps + 1):
        xs = (x * k / steps).requires_grad_()
        total += torch.autograd.grad(llama(inputs_embeds=xs).logits[0, -1, target], xs)[0]
    expected = (total / steps * x)[0].norm(dim=-1)
    got = SemanticScope(llama).attribute(ids, target=target, n_steps=steps)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scope_cls", SCOPES)
def test_bfloat16_model_gives_finite_scores(scope_cls):
    model = make_model("llama", torch.bfloat16)
    scores = scope_cls(model).attribute(random_ids(1, 8))
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.sum() > 0


def test_fisher_matrix_is_float32_for_a_bfloat16_model():
    model = make_model("llama", torch.bfloat16)
    ids, mask = prepare_inputs(model, random_ids(1, 6), None)
    with torch.enable_grad():
        forward = run_forward(model, ids, mask, torch.tensor([[5]]))
    fisher = fisher_matrix(forward)
    assert forward.hidden.dtype == torch.bfloat16
    assert fisher.dtype == torch.float32
    torch.testing.assert_close(fisher, fisher.transpose(-1, -2))
    assert torch.linalg.eigvalsh(fisher).min() > -1e-4 * torch.linalg.eigvalsh(fisher).max()


@pytest.mark.parametrize("scope_cls", SCOPES)
def test_model_unchanged_after_calls_in_train_mode_with_grads_and_hooks(scope_cls):
    model = make_model("llama").train()
    model.model.layers[0].mlp.train(False)  # a mixed train/eval state must come back as it was
    model.lm_head.weight.requires_grad_(False)
    model(random_ids(1, 4)).logits.sum().backward()  # populate some .grad
    handle = model.model.norm.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    scope_cls(model).attribute(random_ids(2, 6))
    assert_unchanged(model, before)
    handle.remove()


def test_dropout_is_off_during_attribution():
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        attention_dropout=0.5,
    )
    model = transformers.LlamaForCausalLM(config).train()
    ids = random_ids(1, 8)
    first = TemperatureScope(model).attribute(ids)
    assert torch.equal(first, TemperatureScope(model).attribute(ids))
    assert model.training


def bad_calls(tokenizer):
    long_ids = random_ids(1, 300)
    return [
        ("empty prompt", lambda m: SemanticScope(m).attribute(torch.zeros(1, 0, dtype=torch.long))),
        ("out of range", lambda m: TemperatureScope(m).attribute(random_ids(1, 5), position=5)),
        ("encodes to 2 tokens", lambda m: SemanticScope(m, tokenizer).attribute(random_ids(1, 5), target="the cat")),
        ("not in the model.s vocabulary", lambda m: SemanticScope(m, tokenizer).attribute(random_ids(1, 5), target="zebra")),
        ("outside the vocabulary", lambda m: SemanticScope(m).attribute(random_ids(1, 5), target=10_000)),
        ("unknown token ids", lambda m: FisherScope(m).attribute(torch.tensor([[5, 999]]))),
        ("longer than the model's context", lambda m: TemperatureScope(m).attribute(long_ids)),
        ("takes no target", lambda m: TemperatureScope(m).attribute(random_ids(1, 5), target=3)),
        ("unknown Fisher method", lambda m: FisherScope(m).attribute(random_ids(1, 5), estimator="magic")),
        ("unexpected option", lambda m: TemperatureScope(m).attribute(random_ids(1, 5), n_step=3)),
        ("same token", lambda m: SemanticScope(m).attribute(random_ids(1, 5), target=(7, 7))),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_input_gets_a_clear_error_and_changes_nothing(case, tokenizer):
    model = make_model("llama")
    model.config.max_position_embeddings = 256
    name, call = bad_calls(tokenizer)[case]
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=name):
        call(model)
    assert_unchanged(model, before)


def test_nan_in_the_model_output_is_reported_and_model_restored():
    model = make_model("llama").train()
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        TemperatureScope(model).attribute(random_ids(1, 5))
    before["params"]["lm_head.weight"] = before["params"]["lm_head.weight"].nan_to_num(7.0)
    after = snapshot(model)
    after["params"]["lm_head.weight"] = after["params"]["lm_head.weight"].nan_to_num(7.0)
    assert torch.equal(after["params"]["lm_head.weight"], before["params"]["lm_head.weight"])
    assert after["training"] == before["training"] and after["requires_grad"] == before["requires_grad"]


def test_models_that_are_not_causal_lms_are_rejected():
    bert_config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    with pytest.raises(TypeError, match="no output embeddings"):
        SemanticScope(transformers.BertModel(bert_config))
    with pytest.raises(TypeError, match="not a causal LM"):
        SemanticScope(transformers.BertForMaskedLM(bert_config))
    with pytest.raises(TypeError, match="nn.Module"):
        SemanticScope(lambda x: x)
