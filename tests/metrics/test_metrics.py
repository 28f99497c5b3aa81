"""Tests of captum_jscopes.metrics on tiny random HF models built from configs.

The hand computations below use plain single forwards, independent of the
module's batching, to check the metrics against the definitions in docs/method.md.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from helpers import CONFIGS, assert_unchanged, make_model, snapshot
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from captum_jscopes import metrics as F

VOCAB = 64
BOS = 1  # LlamaConfig's default bos_token_id; 2 is its eos


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    # a large init makes the tiny model's predictions depend strongly on its inputs
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.3,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def prompt(n: int = 20, seed: int = 0, bos: bool = True) -> torch.Tensor:
    """(n,) ids: BOS then ordinary tokens (ids >= 3 are never special here)."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, VOCAB, (n - int(bos),), generator=g)
    return torch.cat([torch.tensor([BOS]), body]) if bos else body


def random_scores(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def log_probs_zeroed(model, ids: torch.Tensor, zeroed: list[int], position: int = -1) -> torch.Tensor:
    """Independent single forward with the embeddings at ``zeroed`` set to 0."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids[None]).clone()
        embeds[0, zeroed] = 0.0
        logits = model(inputs_embeds=embeds).logits[0, position]
    return torch.log_softmax(logits.double(), -1)


# ------------------------------------------------------------------ ablation core
def test_empty_ablation_is_the_intact_prompt():
    model, ids = tiny_llama(), prompt()
    with torch.no_grad():
        intact = torch.log_softmax(model(ids[None]).logits[0, -1].double(), -1)
    for mode in F.ABLATION_MODES:
        out = F.ablated_log_probs(model, ids, torch.zeros(3, len(ids), dtype=torch.bool), mode=mode, replacement_id=0)
        torch.testing.assert_close(out, intact.expand(3, -1), atol=1e-5, rtol=0)
    scores = random_scores(len(ids))
    assert F.deletion_curve(model, ids, scores, fractions=(0.0, 0.5)).deltas[0] == 0.0
    assert F.insertion_curve(model, ids, scores, fractions=(0.5, 1.0)).deltas[-1] == 0.0


@pytest.mark.parametrize("mode", F.ABLATION_MODES)
def test_each_mode_changes_only_the_ablated_tokens(mode):
    model, ids = tiny_llama(), prompt(12)
    ablate = torch.zeros(3, 12, dtype=torch.bool)
    ablate[0, 4] = ablate[1, [2, 7, 11]] = ablate[2, 1:6] = True
    intact = F.ablation_inputs(model, ids, torch.zeros(1, 12, dtype=torch.bool), mode=mode, replacement_id=5)
    varied = F.ablation_inputs(model, ids, ablate, mode=mode, replacement_id=5)
    assert set(varied) == set(intact)
    assert torch.equal(varied["position_ids"], torch.arange(12).expand(3, 12))
    for name, tensor in varied.items():
        base = intact[name].expand_as(tensor)
        differs = tensor != base
        if differs.dim() == 3:
            differs = differs.any(-1)
        assert not differs[~ablate].any(), f"{mode}: {name} changed at a kept token"
    if mode == "zero":
        assert (varied["inputs_embeds"][ablate] == 0).all()
        assert (varied["inputs_embeds"][~ablate] != 0).any(-1).all()
    elif mode == "token":
        assert (varied["input_ids"][ablate] == 5).all()
        assert (varied["attention_mask"] == 1).all()
    else:
        assert (varied["attention_mask"][ablate] == 0).all() and (varied["attention_mask"][~ablate] == 1).all()
        assert torch.equal(varied["input_ids"], ids.expand(3, 12))


def test_zero_mode_embeds_with_the_models_own_lookup():
    # Gemma3 scales embeddings by sqrt(d) inside its lookup module: the inputs_embeds
    # path must reproduce the input_ids forward exactly
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    )).eval()
    ids = torch.tensor([2] + list(range(5, 20)))
    with torch.no_grad():
        direct = torch.log_softmax(model(ids[None]).logits[0, -1].double(), -1)
    out = F.ablated_log_probs(model, ids, torch.zeros(len(ids), dtype=torch.bool))
    torch.testing.assert_close(out, direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_every_architecture_runs_the_inputs_embeds_path_exactly(arch):
    # zero mode feeds inputs_embeds + explicit positions + logits_to_keep: with
    # nothing ablated it must reproduce the plain input_ids forward
    model = make_model(arch)
    ids = torch.cat([torch.tensor([1]), torch.randint(6, VOCAB, (11,), generator=torch.Generator().manual_seed(0))])
    for position in (-1, 6):
        with torch.no_grad():
            direct = torch.log_softmax(model(ids[None]).logits[0, position].double(), -1)
        out = F.ablated_log_probs(model, ids, torch.zeros(len(ids), dtype=torch.bool), position=position)
        torch.testing.assert_close(out, direct, atol=1e-5, rtol=0)
    loo = F.leave_one_out(model, ids)
    # with sliding-window attention (the tiny Gemma-3: window 4, 2 layers) tokens out of the
    # receptive field have exactly zero influence; every token in reach must have some
    window = getattr(model.config, "sliding_window", None) or len(ids)
    assert torch.isfinite(loo.kl).all() and (loo.kl >= 0).all() and (loo.kl[1:][-window:] > 0).all()
    assert math.isfinite(F.aopc(model, ids, loo.kl).aopc)


def test_special_tokens_and_replacement_come_from_the_tokenizer(tokenizer):
    model = make_model("llama")
    ids = tokenizer("<|user|> the cat sat on the mat", return_tensors="pt").input_ids[0]
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    assert ids[0] == tokenizer.bos_token_id and ids[1] == user
    assert F.replacement_token_id(tokenizer) == tokenizer.pad_token_id
    with_tokenizer = F.leave_one_out(model, ids, tokenizer=tokenizer)
    assert with_tokenizer.rankable.tolist() == [False, False] + [True] * 6
    config_only = F.leave_one_out(model, ids)  # the config knows BOS but not the chat marker
    assert config_only.rankable.tolist() == [False] + [True] * 7
    token_mode = F.ablated_log_probs(model, ids, torch.arange(8) == 3, mode="token", tokenizer=tokenizer)
    explicit = F.ablated_log_probs(model, ids, torch.arange(8) == 3, mode="token", replacement_id=0)
    assert torch.equal(token_mode, explicit)


@pytest.mark.parametrize("mode", F.ABLATION_MODES)
def test_batched_ablations_match_one_at_a_time(mode):
    model, ids = tiny_gpt2(), prompt(18, seed=3)
    g = torch.Generator().manual_seed(1)
    ablate = torch.rand(7, 18, generator=g) < 0.3
    ablate[:3, :2] = True  # leading runs, which "mask" mode leaves out
    batched = F.ablated_log_probs(model, ids, ablate, mode=mode, replacement_id=7, batch_size=16)
    single = torch.stack([
        F.ablated_log_probs(model, ids, row, mode=mode, replacement_id=7, batch_size=1) for row in ablate
    ])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    loo_batched = F.leave_one_out(model, ids, mode=mode, replacement_id=7, batch_size=16).kl
    loo_single = F.leave_one_out(model, ids, mode=mode, replacement_id=7, batch_size=1).kl
    torch.testing.assert_close(loo_batched, loo_single, atol=1e-5, rtol=0)


def _tokens_seen(model, run):
    """``run()``'s result and the positions the first decoder layer was given,
    forward by forward (a hook on a real module, removed after)."""
    layer = next(m for m in model.modules() if isinstance(m, nn.ModuleList))[0]
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        return run(), seen
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("mode", F.ABLATION_MODES)
def test_a_prepared_prompt_runs_each_batch_from_its_first_ablation_and_matches_whole_forwards(arch, mode):
    # the states before a variant's first ablated token are the intact prompt's: AblatedPrompt runs
    # from there, ablated_log_probs (the reference here) runs every variant whole; float64, so the
    # two agree to round-off
    model, n = make_model(arch, dtype=torch.float64), 16
    ids = torch.cat([torch.tensor([1]), torch.randint(6, VOCAB, (n - 1,), generator=torch.Generator().manual_seed(0))])
    ablate = torch.rand(30, n, generator=torch.Generator().manual_seed(1)) < 0.15
    ablate[:3, :2] = True  # leading runs: "mask" mode leaves them out
    ablate[3] = False  # the intact prompt
    late = torch.zeros(4, n, dtype=torch.bool)
    late[torch.arange(4), torch.arange(10, 14)] = True  # one batch, its earliest ablation at 10
    settings = F.AblationSettings(mode=mode, replacement_id=7, batch_size=4)
    # the tiny Gemma-3's sliding window (4) is shorter than the prompt: its cache keeps only the
    # window, so nothing is reused there; every other architecture keeps all states
    reused = model.config.model_type != "gemma3_text"
    for position in (n - 1, 9):
        prepared = F.AblatedPrompt.prepare(model, ids, position, settings)
        assert (prepared.intact is not None) == reused
        whole = F.ablated_log_probs(model, ids, ablate, position=position, settings=settings)
        torch.testing.assert_close(prepared.run(ablate), whole, atol=1e-12, rtol=0)
        fast, seen = _tokens_seen(model, lambda: prepared.run(late))
        whole = F.ablated_log_probs(model, ids, late, position=position, settings=settings)
        torch.testing.assert_close(fast, whole, atol=1e-12, rtol=0)
        assert seen == [n - min(10, position) if reused else n]


def test_a_gemma3_prompt_inside_its_sliding_window_reuses_the_intact_states():
    config = CONFIGS["gemma3"]()
    config.sliding_window, config._attn_implementation = 32, "eager"
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).double().eval()
    ids = prompt(16, seed=2)
    loo_fast = F.leave_one_out(model, ids)
    prepared = F.AblatedPrompt.prepare(model, ids, -1, F.AblationSettings())
    assert prepared.intact is not None
    intact = log_probs_zeroed(model, ids, [])
    for t in (1, 8, 15):
        kl = float((intact.exp() * (intact - log_probs_zeroed(model, ids, [t]))).sum())
        assert float(loo_fast.kl[t]) == pytest.approx(kl, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_mask_mode_on_the_leading_tokens_is_leaving_them_out_with_positions_kept(make):
    # a masked first token attends to nothing; run naively its NaN hidden state would reach every token
    model, ids = make(), prompt(12, seed=4, bos=False)
    for lead in (1, 3):
        row = torch.zeros(12, dtype=torch.bool)
        row[:lead] = True
        row[7] = True  # an inner token masked in the same variant
        masked = F.ablated_log_probs(model, ids, row, mode="mask")
        assert torch.isfinite(masked).all()
        attention = torch.ones(1, 12 - lead, dtype=torch.long)
        attention[0, 7 - lead] = 0
        with torch.no_grad():
            logits = model(
                input_ids=ids[None, lead:], attention_mask=attention, position_ids=torch.arange(lead, 12)[None]
            ).logits[0, -1]
        torch.testing.assert_close(masked, torch.log_softmax(logits.double(), -1), atol=1e-5, rtol=0)
    kl = F.leave_one_out(model, ids, mode="mask").kl
    assert torch.isfinite(kl).all() and kl[0] > 0


def test_modes_differ_and_actually_ablate():
    model, ids = tiny_llama(), prompt()
    row = torch.zeros(len(ids), dtype=torch.bool)
    row[5:10] = True
    intact = F.ablated_log_probs(model, ids, torch.zeros_like(row))
    outs = {mode: F.ablated_log_probs(model, ids, row, mode=mode, replacement_id=0) for mode in F.ABLATION_MODES}
    for mode, out in outs.items():
        assert (out - intact).abs().max() > 1e-3, mode
    assert (outs["zero"] - outs["token"]).abs().max() > 1e-3
    assert (outs["zero"] - outs["mask"]).abs().max() > 1e-3


# ------------------------------------------------------------------ AOPC
def test_trapezoid_reproduces_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        d5, d10, d20 = (-torch.rand(3, generator=g) * 3).tolist()
        expected = 0.025 * (d5 + d10) + 0.05 * (d10 + d20)
        assert F.trapezoid_area((0.05, 0.10, 0.20), (d5, d10, d20)) == pytest.approx(expected, abs=1e-15)
    assert F.trapezoid_area((0.0, 1.0), (1.0, 1.0)) == 1.0
    assert F.trapezoid_area((0.3,), (5.0,)) == 0.0


def test_aopc_matches_a_hand_computation():
    model, ids = tiny_llama(), prompt(41, seed=2)  # BOS + 40 rankable tokens
    scores = random_scores(41, seed=5)
    result = F.aopc(model, ids, scores)

    intact = log_probs_zeroed(model, ids, [])
    target = int(intact.argmax())
    order = sorted(range(1, 41), key=lambda t: -float(scores[t]))  # BOS is not ranked
    deltas = []
    for k in (2, 4, 8):  # floor(f * 40) for 5, 10, 20 %
        deltas.append(float(log_probs_zeroed(model, ids, order[:k])[target] - intact[target]))
    d5, d10, d20 = deltas
    assert result.target == target and result.n_rankable == 40
    assert result.n_ablated == (2, 4, 8)
    assert result.deltas == pytest.approx(deltas, abs=1e-5)
    assert result.aopc == pytest.approx(0.025 * (d5 + d10) + 0.05 * (d10 + d20), abs=1e-5)
    assert result.log_prob == pytest.approx(float(intact[target]), abs=1e-5)


def test_aopc_at_an_inner_position_ignores_special_and_later_tokens():
    model, ids = tiny_llama(), prompt(30, seed=4)
    scores = random_scores(30, seed=1)
    loud = scores.clone()
    loud[0] = 100.0  # BOS
    loud[16:] = 100.0  # after the explained position 15
    a, b = F.aopc(model, ids, scores, position=15), F.aopc(model, ids, loud, position=15)
    assert a == b
    assert a.n_rankable == 15 and a.n_ablated == (1, 1, 3)

    intact = log_probs_zeroed(model, ids, [], position=15)
    target = int(intact.argmax())
    top = sorted(range(1, 16), key=lambda t: -float(scores[t]))[:3]
    expected = float(log_probs_zeroed(model, ids, top, position=15)[target] - intact[target])
    assert a.deltas[2] == pytest.approx(expected, abs=1e-5)

    with_bos = F.aopc(model, ids, loud, position=15, include_special=True)
    assert with_bos.n_rankable == 16 and with_bos.deltas != a.deltas


def test_aopc_equals_deletion_area_and_sorts_fractions():
    model, ids = tiny_llama(), prompt()
    scores = random_scores(len(ids), seed=9)
    result = F.aopc(model, ids, scores)
    shuffled = F.aopc(model, ids, scores, fractions=(0.2, 0.05, 0.1))
    curve = F.deletion_curve(model, ids, scores, fractions=(0.05, 0.1, 0.2))
    assert shuffled == result
    assert curve.area == result.aopc and curve.deltas == result.deltas


def test_explicit_target_is_explained():
    model, ids = tiny_llama(), prompt()
    scores = random_scores(len(ids))
    intact = log_probs_zeroed(model, ids, [])
    target = int(intact.argmin())
    result = F.aopc(model, ids, scores, target=target)
    assert result.target == target
    assert result.log_prob == pytest.approx(float(intact[target]), abs=1e-5)


def test_loo_ordered_scores_beat_random_scores_on_average():
    model = tiny_llama(seed=1)
    loo_aopc, random_aopc = [], []
    for i in range(30):
        ids = prompt(21, seed=100 + i)
        loo = F.leave_one_out(model, ids)
        loo_aopc.append(F.aopc(model, ids, loo.kl).aopc)
        random_aopc.append(F.aopc(model, ids, random_scores(21, seed=i)).aopc)
    mean_loo, mean_random = sum(loo_aopc) / 30, sum(random_aopc) / 30
    assert mean_loo < mean_random - 0.05, (mean_loo, mean_random)


# ------------------------------------------------------------------ curves and ERASER
def test_deletion_and_insertion_curves():
    model, ids = tiny_llama(), prompt(21)
    loo = F.leave_one_out(model, ids)
    fractions = (0.0, 0.25, 0.5, 1.0)
    most = F.deletion_curve(model, ids, loo.kl, fractions=fractions)
    least = F.deletion_curve(model, ids, loo.kl, fractions=fractions, order="least")
    assert most.n_tokens == (0, 5, 10, 20)
    assert most.area < least.area  # removing the influential tokens first hurts more
    assert most.deltas[-1] == pytest.approx(least.deltas[-1], abs=1e-5)  # both remove everything

    insertion = F.insertion_curve(model, ids, loo.kl, fractions=fractions)
    everything_zeroed = log_probs_zeroed(model, ids, list(range(1, 21)))[most.target]
    assert insertion.log_probs[0] == pytest.approx(float(everything_zeroed), abs=1e-5)
    assert insertion.deltas[0] == pytest.approx(most.deltas[-1], abs=1e-5)
    assert insertion.deltas[-1] == 0.0
    assert insertion.prob_area == pytest.approx(F.trapezoid_area(fractions, insertion.probs))
    assert insertion.probs[1] == pytest.approx(math.exp(insertion.log_probs[1]))


def test_deletion_curves_of_several_methods_match_one_at_a_time_and_share_rows():
    model, ids = tiny_llama(), prompt(21)
    loo = F.leave_one_out(model, ids).kl
    scores = {"loo": loo, "random": random_scores(21, seed=3), "same_as_loo": loo.clone()}
    fractions = (0.0, 0.1, 0.25, 0.5)
    rows = []
    handle = model.register_forward_pre_hook(lambda _, args, kwargs: rows.append(len(kwargs["inputs_embeds"])),
                                             with_kwargs=True)
    try:
        together = F.deletion_curves(model, ids, scores, fractions=fractions, batch_size=4)
    finally:
        handle.remove()
    assert list(together) == list(scores)
    for name, s in scores.items():
        alone = F.deletion_curve(model, ids, s, fractions=fractions)
        assert together[name].n_tokens == alone.n_tokens
        assert together[name].deltas == pytest.approx(alone.deltas, abs=1e-5)
        assert together[name].area == pytest.approx(alone.area, abs=1e-5)
    # one intact forward, then each distinct non-empty ablation once: "same_as_loo" adds no row
    distinct = {tuple(F.rank_tokens(s.double(), F.rankable_mask(ids, config=model.config), "most")[:k].sort().values.tolist())
                for s in scores.values() for k in together["loo"].n_tokens if k}
    assert sum(rows) == 1 + len(distinct) and len(distinct) <= 6
    with pytest.raises(TypeError, match="mapping"):
        F.deletion_curves(model, ids, loo)
    with pytest.raises(ValueError, match="scores\\['random'\\]"):
        F.deletion_curves(model, ids, {"loo": loo, "random": torch.ones(5)})


def test_comprehensiveness_and_sufficiency_by_hand():
    model, ids = tiny_llama(), prompt(41, seed=6)
    scores = random_scores(41, seed=2)
    comp = F.comprehensiveness(model, ids, scores)
    suff = F.sufficiency(model, ids, scores, fractions=(0.1, 1.0))

    intact = log_probs_zeroed(model, ids, [])
    target = int(intact.argmax())
    p = float(intact[target].exp())
    order = sorted(range(1, 41), key=lambda t: -float(scores[t]))
    assert comp.n_tokens == (1, 2, 4, 8, 20)
    expected = [p - float(log_probs_zeroed(model, ids, order[:k])[target].exp()) for k in comp.n_tokens]
    assert comp.values == pytest.approx(expected, abs=1e-6)
    assert comp.mean == pytest.approx(sum(expected) / 5, abs=1e-6)
    assert comp.prob == pytest.approx(p, abs=1e-6)

    kept_4 = float(log_probs_zeroed(model, ids, order[4:])[target].exp())
    assert suff.values[0] == pytest.approx(p - kept_4, abs=1e-6)
    assert suff.values[1] == 0.0  # keeping everything is the intact prompt


# ------------------------------------------------------------------ leave-one-out
def test_leave_one_out_is_the_kl_of_each_single_ablation():
    model, ids = tiny_llama(), prompt(15)
    loo = F.leave_one_out(model, ids)
    assert loo.kl[0] == 0.0 and not loo.rankable[0]  # BOS is not ablated
    assert loo.rankable[1:].all() and loo.position == 14
    intact = log_probs_zeroed(model, ids, [])
    for t in (1, 7, 14):
        ablated = log_probs_zeroed(model, ids, [t])
        kl = float((intact.exp() * (intact - ablated)).sum())
        assert float(loo.kl[t]) == pytest.approx(kl, abs=1e-6)
    assert (loo.kl >= 0).all()


def test_loo_agreement_of_loo_itself_and_its_reverse():
    model, ids = tiny_llama(), prompt(31, seed=8)
    loo = F.leave_one_out(model, ids)
    same = F.loo_agreement(loo.kl, loo)
    assert same.spearman == pytest.approx(1.0) and same.kendall == pytest.approx(1.0)
    assert same.top1_percentile == 0.0 and same.top_jaccard == 1.0 and same.n_tokens == 30
    reverse = F.loo_agreement(-loo.kl, loo)
    assert reverse.spearman == pytest.approx(-1.0) and reverse.kendall == pytest.approx(-1.0)
    assert reverse.top1_percentile == pytest.approx(100 * 29 / 30)
    assert reverse.top_jaccard == 0.0


def test_loo_agreement_definitions_on_a_plain_vector():
    influence = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    scores = torch.tensor([0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    result = F.loo_agreement(scores, influence, top_fraction=0.2)
    assert result.top1_percentile == 20.0  # two tokens have more influence than token 2
    assert result.top_jaccard == pytest.approx(1 / 3)  # {2, 0} vs {0, 1}
    assert math.isnan(F.loo_agreement(torch.ones(10), influence).spearman)  # constant scores


def test_evaluate_returns_each_metric_and_reuses_loo():
    model, ids = tiny_llama(), prompt()
    scores = random_scores(len(ids))
    loo = F.leave_one_out(model, ids)
    results = F.evaluate(model, ids, scores, metrics=F.METRICS, loo=loo)
    assert set(results) == set(F.METRICS)
    assert results["aopc"] == F.aopc(model, ids, scores)
    assert results["loo"] == F.loo_agreement(scores, loo)
    assert results["deletion_least"].order == "least"
    with pytest.raises(ValueError, match="position"):
        F.evaluate(model, ids, scores, metrics=("loo",), loo=loo, position=5)


# ------------------------------------------------------------------ the caller's model
def test_the_callers_model_is_unchanged_and_dropout_is_off():
    model = tiny_gpt2(dropout=0.5)
    model.train()
    model.transformer.h[0].eval()  # a mixed train/eval state must come back as it was
    model.transformer.wte.weight.requires_grad_(False)
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    hook = model.transformer.h[1].register_forward_hook(lambda *args: None)
    ids = prompt(16, bos=False)
    scores = random_scores(16)
    before = snapshot(model)
    first = F.evaluate(model, ids, scores, metrics=F.METRICS)
    second = F.evaluate(model, ids, scores, metrics=F.METRICS)
    assert_unchanged(model, before)
    hook.remove()
    assert first == second  # dropout was off: the train-mode model is deterministic here

    # same as an eval-mode copy (up to float noise: dropout 0.5 would move everything)
    reference = F.evaluate(tiny_gpt2(dropout=0.5), ids, scores, metrics=F.METRICS)
    assert first["aopc"].deltas == pytest.approx(reference["aopc"].deltas, abs=1e-6)
    assert first["insertion"].log_probs == pytest.approx(reference["insertion"].log_probs, abs=1e-6)
    assert first["loo"].spearman == pytest.approx(reference["loo"].spearman, abs=1e-9)


def test_the_callers_model_is_unchanged_after_a_failing_call():
    model = tiny_gpt2(dropout=0.5).train()
    ids = prompt(16, bos=False)
    calls = []

    def fail_on_second_forward(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    handle = model.transformer.h[1].register_forward_hook(fail_on_second_forward)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        F.aopc(model, ids, random_scores(16))
    assert_unchanged(model, before)
    handle.remove()
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError):
        F.aopc(model, ids, random_scores(15))
    assert all(m.training for m in model.modules())


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scores=torch.zeros(19)), "one value per prompt token"),
        (dict(scores=torch.tensor([float("nan")] + [0.0] * 19)), "NaN or inf"),
        (dict(scores=torch.tensor([0.0] * 19 + [float("inf")])), "NaN or inf"),
        (dict(fractions=(0.0, 0.1)), r"\(0, 1\]"),
        (dict(fractions=(0.1, 1.5)), r"\(0, 1\]"),
        (dict(fractions=()), "empty"),
        (dict(fractions=(0.1,)), "at least two"),
        (dict(fractions=(0.1, 0.1)), "duplicates"),
        (dict(position=20), "out of range"),
        (dict(position=-21), "out of range"),
        (dict(mode="drop"), "unknown ablation mode"),
        (dict(batch_size=0), "batch_size"),
        (dict(input_ids=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0)), "empty prompt"),
        (dict(input_ids=torch.randint(3, VOCAB, (2, 20))), "one prompt"),
        (dict(input_ids=torch.tensor([BOS, 2]), scores=torch.zeros(2)), "no token to rank"),
        (dict(input_ids=torch.tensor([3, 99]), scores=torch.zeros(2)), "outside"),
        (dict(mode="token", replacement_id=VOCAB), "replacement_id"),
    ],
)
def test_bad_input_raises_a_clear_value_error(kwargs, message):
    args = dict(input_ids=prompt(20), scores=torch.zeros(20))
    args.update(kwargs)
    input_ids, scores = args.pop("input_ids"), args.pop("scores")
    with pytest.raises(ValueError, match=message):
        F.aopc(tiny_llama(), input_ids, scores, **args)


def test_other_bad_inputs():
    llama, ids = tiny_llama(), prompt(20, bos=False)
    with pytest.raises(ValueError, match="mask"):  # would leave the prediction nothing to attend to
        F.insertion_curve(llama, ids, torch.zeros(20), mode="mask")
    with pytest.raises(ValueError, match="order"):
        F.deletion_curve(llama, ids, torch.zeros(20), order="random")
    with pytest.raises(ValueError, match="unknown metrics"):
        F.evaluate(llama, ids, torch.zeros(20), metrics=("aopc", "rouge"))
    with pytest.raises(ValueError, match="one value per prompt token"):
        F.loo_agreement(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError):
        F.aopc(torch.nn.Linear(2, 2), ids, torch.zeros(20))
    with pytest.raises(ValueError, match="pad, unk or eos"):
        no_special = tiny_llama()
        no_special.config.eos_token_id = None
        F.aopc(no_special, ids, torch.zeros(20), mode="token")


# ------------------------------------------------------------------ the real default model
@pytest.mark.slow
def test_paper_protocol_on_the_default_model():
    from captum_jscopes.runs.prompts import load_prompts
    from captum_jscopes.models import load_model

    model, tokenizer = load_model(progress=False)
    passages = [prompt.text for prompt in load_prompts("lambada", n=3)]
    loo_aopc, random_aopc = [], []
    for i, text in enumerate(passages):
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        # the last 16 tokens keep LOO (one forward per token) cheap on a CPU;
        # attribute the prediction of the final sub-token, as in the paper
        ids = ids[-17:-1]
        loo = F.leave_one_out(model, ids, tokenizer=tokenizer)
        loo_aopc.append(F.aopc(model, ids, loo.kl, tokenizer=tokenizer).aopc)
        random_aopc.append(F.aopc(model, ids, random_scores(len(ids), seed=i), tokenizer=tokenizer).aopc)
    assert sum(loo_aopc) < sum(random_aopc), (loo_aopc, random_aopc)
    assert all(a < 0 for a in loo_aopc)
