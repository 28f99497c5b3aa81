"""The Captum wrapper: multi-token targets from one forward, Captum's own
methods through it, skip_tokens, chat prompts, Captum's plots, and models
dispatched with accelerate."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json

import pytest
import numpy as np
import torch
from captum.attr import (
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LLMAttributionResult,
    LLMGradientAttribution,
    TextTokenInput,
)
from helpers import assert_unchanged, make_model, snapshot

from captum_jscopes import (
    FisherScope,
    LLMScopeAttribution,
    ScopeResult,
    SemanticScope,
    TemperatureScope,
    chat_input,
    chat_prompt,
)

PROMPT = "Tom liked the food . he went to the"


@pytest.mark.parametrize("scope_cls", [SemanticScope, TemperatureScope, FisherScope])
def test_multi_token_target_equals_one_call_per_token(scope_cls, llama, tokenizer):
    attr = LLMScopeAttribution(scope_cls(llama, tokenizer), tokenizer)
    inp = TextTokenInput(PROMPT, tokenizer)
    result = attr.attribute(inp, target="big red house")
    assert isinstance(result, LLMAttributionResult) and isinstance(result, ScopeResult)
    prompt_ids = inp.to_model_input()
    target_ids = tokenizer.encode("big red house", add_special_tokens=False)
    assert result.token_attr.shape == (3, prompt_ids.shape[1])
    scope = scope_cls(llama, tokenizer)
    for k, token in enumerate(target_ids):
        ids = torch.cat([prompt_ids, torch.tensor([target_ids[:k]], dtype=torch.long)], dim=1)
        kwargs = {"target": token} if scope_cls is SemanticScope else {}
        alone = scope.attribute(ids, **kwargs)[0, : prompt_ids.shape[1]]
        torch.testing.assert_close(result.token_attr[k], alone, rtol=1e-5, atol=1e-7)
        logits = llama(ids).logits[0, -1]
        torch.testing.assert_close(result.output_probs[k], torch.softmax(logits, -1)[token], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.seq_attr, result.token_attr.sum(0))
    assert result.output_tokens == ["big", "red", "house"]


def test_one_forward_pass_for_all_target_tokens(llama, tokenizer):
    calls = []
    handle = llama.register_forward_hook(lambda *a: calls.append(1))
    try:
        LLMScopeAttribution(SemanticScope(llama, tokenizer), tokenizer).attribute(
            TextTokenInput(PROMPT, tokenizer), target="big red house on the mat"
        )
    finally:
        handle.remove()
    assert len(calls) == 1


def test_swap_in_is_one_line_and_captum_methods_still_run(llama, tokenizer):
    inp = TextTokenInput(PROMPT, tokenizer, skip_tokens=["<bos>"])
    emb = llama.get_input_embeddings()
    baseline = LLMScopeAttribution(LayerIntegratedGradients(llama, emb), tokenizer).attribute(
        inp, target="big red", n_steps=5
    )
    reference = LLMGradientAttribution(LayerIntegratedGradients(llama, emb), tokenizer).attribute(
        inp, target="big red", n_steps=5
    )
    torch.testing.assert_close(baseline.token_attr, reference.token_attr)
    gxa = LLMScopeAttribution(LayerGradientXActivation(llama, emb), tokenizer).attribute(inp, target="big red")
    assert gxa.token_attr.shape == baseline.token_attr.shape
    # the swap: same wrapper call, a scope instead of the Captum method
    scoped = LLMScopeAttribution(SemanticScope(llama, tokenizer), tokenizer).attribute(inp, target="big red")
    assert scoped.token_attr.shape == baseline.token_attr.shape
    assert scoped.input_tokens == baseline.input_tokens
    assert torch.all(scoped.token_attr >= 0) and scoped.token_attr.sum() > 0


def test_skip_tokens_are_left_out(llama, tokenizer):
    attr = LLMScopeAttribution(TemperatureScope(llama, tokenizer), tokenizer)
    full = attr.attribute(TextTokenInput(PROMPT, tokenizer), target="big")
    skipped = attr.attribute(TextTokenInput(PROMPT, tokenizer, skip_tokens=["the", "."]), target="big")
    keep = [tok not in ("the", ".") for tok in full.input_tokens]
    assert skipped.input_tokens == [t for t, k in zip(full.input_tokens, keep) if k]
    torch.testing.assert_close(skipped.token_attr, full.token_attr[:, torch.tensor(keep)])


def test_generated_target_when_none(llama, tokenizer):
    attr = LLMScopeAttribution(FisherScope(llama, tokenizer), tokenizer)
    result = attr.attribute(TextTokenInput(PROMPT, tokenizer), gen_args={"max_new_tokens": 3, "do_sample": False})
    assert result.token_attr.shape[0] == 3 and len(result.output_tokens) == 3
    assert torch.isfinite(result.token_attr).all()


def test_captum_plots_work_on_our_result(llama, tokenizer):
    result = LLMScopeAttribution(SemanticScope(llama, tokenizer), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer), target="big red"
    )
    # Captum's own plots draw our scores: the heatmap holds token_attr, one row per target token,
    # labelled with the input tokens; the bar chart's bars are seq_attr
    _, ax = result.plot_token_attr()
    (image,) = ax.get_images()
    np.testing.assert_allclose(np.asarray(image.get_array()), result.token_attr.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(result.input_tokens)
    assert len(ax.get_yticklabels()) == len(result.output_tokens) == 2
    _, ax = result.plot_seq_attr()
    # Captum draws the positive and the negative parts as two bar series; the scores are non-negative
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(2, -1)
    np.testing.assert_allclose(heights[0], result.seq_attr.numpy(), rtol=1e-6)
    assert not heights[1].any()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(result.input_tokens)


def test_chat_prompt_scores_only_the_users_message(llama, tokenizer):
    message = "the cat sat on the mat"
    ids, user = chat_prompt(tokenizer, message, system="she liked food")
    words = tokenizer.convert_ids_to_tokens(ids[0][user[0]].tolist())
    assert words == message.split()
    scores = TemperatureScope(llama, tokenizer).attribute(ids, token_mask=user)
    assert torch.all(scores[~user] == 0) and torch.all(scores[user] > 0)
    result = LLMScopeAttribution(TemperatureScope(llama, tokenizer), tokenizer).attribute(
        chat_input(tokenizer, message, system="she liked food"), target="big"
    )
    assert result.input_tokens == message.split()
    torch.testing.assert_close(result.token_attr[0], scores[0][user[0]])


def test_chat_prompt_bad_input(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        chat_prompt(tokenizer, "  ")


def test_wrapper_leaves_the_model_unchanged(tokenizer):
    model = make_model("llama").train()
    before = snapshot(model)
    LLMScopeAttribution(FisherScope(model, tokenizer), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer), target="big red"
    )
    with pytest.raises(ValueError):
        LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer).attribute(
            TextTokenInput(PROMPT, tokenizer), target=""
        )
    assert_unchanged(model, before)


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_model_dispatched_by_accelerate_gives_the_same_scores(offload, tmp_path):
    from accelerate import cpu_offload, dispatch_model

    plain = make_model("llama")
    dispatched = make_model("llama")  # same seed: same weights
    if offload == "cpu":
        # weights held in a CPU map, parameters on the meta device, loaded at each forward
        dispatched = cpu_offload(dispatched, execution_device=torch.device("cpu"))
    else:
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
        dispatched = dispatch_model(dispatched, device_map=device_map, offload_dir=str(tmp_path), main_device="cpu")
    assert dispatched.lm_head.weight.device.type == "meta"
    ids = torch.tensor([[5, 9, 12, 30, 41, 7]])
    for scope_cls in (SemanticScope, TemperatureScope, FisherScope):
        torch.testing.assert_close(scope_cls(dispatched).attribute(ids), scope_cls(plain).attribute(ids))


# ----------------------------------------------------------------------------- progress bars


@pytest.mark.parametrize("scope_cls", [SemanticScope, TemperatureScope, FisherScope])
def test_progress_bar_changes_nothing_but_stderr(scope_cls, llama, tokenizer, capsys):
    attr = LLMScopeAttribution(scope_cls(llama, tokenizer), tokenizer)
    inp = TextTokenInput(PROMPT, tokenizer)
    quiet = attr.attribute(inp, target="big red house")
    assert capsys.readouterr().err == ""  # off by default
    before = snapshot(llama)
    calls = []
    handle = llama.register_forward_hook(lambda *a: calls.append(1))
    try:
        shown = attr.attribute(inp, target="big red house", progress=True)
    finally:
        handle.remove()
    assert_unchanged(llama, before)
    err = capsys.readouterr().err
    # Semantic and Temperature tick once per target token; Fisher shows its own bar over its backward passes
    assert ("target tokens" in err and "/3" in err) if scope_cls is not FisherScope else err != ""
    assert len(calls) == 1  # still one forward pass for all three target tokens
    torch.testing.assert_close(shown.token_attr, quiet.token_attr, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(shown.output_probs, quiet.output_probs)
    assert shown.metadata == quiet.metadata


def test_progress_bar_of_the_path_integrated_scope_counts_its_steps(llama, tokenizer, capsys):
    attr = LLMScopeAttribution(SemanticScope(llama, tokenizer), tokenizer)
    inp = TextTokenInput(PROMPT, tokenizer)
    quiet = attr.attribute(inp, target="big red", n_steps=4)
    shown = attr.attribute(inp, target="big red", n_steps=4, progress=True)
    assert torch.equal(shown.token_attr, quiet.token_attr)
    err = capsys.readouterr().err
    assert "semantic: path steps" in err and "/4" in err
    # the standalone scope takes the same option
    ids = inp.to_model_input()
    torch.testing.assert_close(
        SemanticScope(llama, tokenizer).attribute(ids, target="big", n_steps=3, progress=True),
        SemanticScope(llama, tokenizer).attribute(ids, target="big", n_steps=3),
    )
    assert "/3" in capsys.readouterr().err


# ----------------------------------------------------------------------------- what save_json records


def test_json_from_the_python_api_records_model_prompt_settings_versions(tokenizer, tmp_path):
    model = make_model("llama")
    model.name_or_path = "org/tiny-llama"  # as from_pretrained("org/tiny-llama") records it
    result = LLMScopeAttribution(FisherScope(model, tokenizer), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer), target="big red", estimator="eig"
    )
    meta = ScopeResult.load_json(result.save_json(tmp_path / "fisher.json")).metadata
    assert meta["model"] == "org/tiny-llama"  # the Hub name, whole
    assert meta["prompt"] == PROMPT and meta["target"] == "big red" and meta["scope"] == "fisher"
    assert meta["settings"] == {
        "chat": False, "keep_special": False, "fisher_estimator": "eig", "dtype": "float32", "device": "cpu"
    }
    assert meta["run_info"]["passes"] == 1 and meta["run_info"]["k"] == 1  # what the call ran
    assert set(meta["versions"]) == {"captum_jscopes", "torch", "transformers", "captum"}
    assert all(isinstance(v, str) and v for v in meta["versions"].values())


def test_json_never_records_an_absolute_path_and_says_chat_and_options(tokenizer, tmp_path):
    model = make_model("llama")
    model.name_or_path = str(tmp_path / "cache" / "smollm2-135m-instruct")  # the embedded model's cache
    message = "the cat sat on the mat"
    result = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer).attribute(
        chat_input(tokenizer, message, keep_special=True), target="big", n_steps=2, exclude_special_tokens=False
    )
    meta = result.metadata
    assert meta["model"] == "smollm2-135m-instruct" and str(tmp_path) not in json.dumps(meta)
    assert meta["prompt"] == message
    assert meta["settings"]["chat"] is True and meta["settings"]["keep_special"] is True
    assert meta["settings"]["n_steps"] == 2
    # Captum's own methods through the wrapper record the model and versions too
    emb = model.get_input_embeddings()
    captum_meta = LLMScopeAttribution(LayerGradientXActivation(model, emb), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer), target="big"
    ).metadata
    assert captum_meta["model"] == "smollm2-135m-instruct" and "torch" in captum_meta["versions"]


# ----------------------------------------------------------------------------- a (target, foil) pair, next=


def test_a_target_foil_pair_is_the_contrastive_scope(llama, tokenizer):
    inp = TextTokenInput(PROMPT, tokenizer)
    attr = LLMScopeAttribution(SemanticScope(llama, tokenizer), tokenizer)
    result = attr.attribute(inp, target=("liberal", "conservative"))
    liberal, conservative = tokenizer.convert_tokens_to_ids(["liberal", "conservative"])
    alone = SemanticScope(llama, tokenizer).attribute(inp.to_model_input(), target=(liberal, conservative))
    torch.testing.assert_close(result.token_attr[0], alone[0], rtol=1e-5, atol=1e-7)
    assert result.output_tokens == ["liberal"] and result.metadata["target"] == "liberal"
    contrast = result.metadata["contrast"]
    assert contrast["foil"] == contrast["foil_token"] == "conservative" and contrast["after"] == ""
    with torch.no_grad():
        probs = torch.softmax(llama(inp.to_model_input()).logits[0, -1], -1)
    assert contrast["foil_prob"] == pytest.approx(float(probs[conservative]), rel=1e-5)
    torch.testing.assert_close(result.output_probs[0], probs[liberal], rtol=1e-5, atol=1e-8)
    # ids work as well as strings
    same = attr.attribute(inp, target=(torch.tensor([liberal]), [conservative]))
    torch.testing.assert_close(same.token_attr, result.token_attr)


def test_a_pair_is_explained_where_target_and_foil_first_differ(llama, tokenizer):
    inp = TextTokenInput(PROMPT, tokenizer)
    result = LLMScopeAttribution(SemanticScope(llama, tokenizer), tokenizer).attribute(
        inp, target=("big red house", "big blue house"))
    red, blue = tokenizer.convert_tokens_to_ids(["red", "blue"])
    ids = torch.cat([inp.to_model_input(), torch.tensor([tokenizer.convert_tokens_to_ids(["big"])])], dim=1)
    alone = SemanticScope(llama, tokenizer).attribute(ids, target=(red, blue))[0, :-1]
    assert result.token_attr.shape == (1, inp.to_model_input().shape[1])
    torch.testing.assert_close(result.token_attr[0], alone, rtol=1e-5, atol=1e-7)
    assert result.output_tokens == ["red"] and result.metadata["contrast"]["after"] == "big"


@pytest.mark.parametrize("scope_cls, pair, message", [
    (SemanticScope, ("big", "big"), "are the same"),
    (SemanticScope, ("big", "big red"), "starts with the whole target"),
    (SemanticScope, ("big", "red", "mat"), "pair, got 3 items"),
    (SemanticScope, ("big", 1.5), "string or token ids"),
    (FisherScope, ("big", "red"), "takes no target"),
])
def test_bad_pairs_are_one_line_errors(scope_cls, pair, message, llama, tokenizer):
    attr = LLMScopeAttribution(scope_cls(llama, tokenizer), tokenizer)
    with pytest.raises((ValueError, TypeError), match=message):
        attr.attribute(TextTokenInput(PROMPT, tokenizer), target=pair)
    emb = llama.get_input_embeddings()
    with pytest.raises(ValueError, match="takes no .target, foil. pair"):
        LLMScopeAttribution(LayerGradientXActivation(llama, emb), tokenizer).attribute(
            TextTokenInput(PROMPT, tokenizer), target=("big", "red"))


def test_next_runs_the_greedy_continuation_for_captum_methods_too(llama, tokenizer):
    inp = TextTokenInput(PROMPT, tokenizer)
    emb = llama.get_input_embeddings()
    attr = LLMScopeAttribution(LayerGradientXActivation(llama, emb), tokenizer)
    with torch.no_grad():
        top = int(llama(inp.to_model_input()).logits[0, -1].argmax())
    result = attr.attribute(inp, next="token")
    reference = attr.attribute(inp, target=torch.tensor([top]))
    torch.testing.assert_close(result.token_attr, reference.token_attr)
    with pytest.raises(ValueError, match="next must be one of"):
        attr.attribute(inp, next="line")
