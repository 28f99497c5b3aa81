"""The layer-map benchmark (bench/layers.py): patching effects against a direct
computation, and a resumable run with its report on a tiny model."""

from __future__ import annotations

import json

import torch
from helpers import BOS, assert_unchanged, make_model, make_tokenizer, random_ids, snapshot

from captum_jscopes.bench import layers as bench
from captum_jscopes.core.forward import decoder_layers


def test_patching_effects_match_a_hand_patched_forward():
    model = make_model("llama", dtype=torch.float64)
    ids = random_ids(1, 6, seed=1)
    ids[0, 0] = BOS
    before = snapshot(model)
    effects = bench.patching_effects(model, ids, target=9, mode="zero", batch_size=4)
    assert_unchanged(model, before)
    L = model.config.num_hidden_layers
    assert effects["kl"].shape == (L + 1, 6)
    base = torch.log_softmax(model(ids).logits[0, -1], -1)
    # by hand: zero token 2's residual stream after layer 1
    layer = decoder_layers(model)[0]

    def zero(_m, _a, out):
        hidden = (out[0] if isinstance(out, tuple) else out).clone()
        hidden[0, 2] = 0
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = layer.register_forward_hook(zero)
    try:
        patched = torch.log_softmax(model(ids).logits[0, -1], -1)
    finally:
        handle.remove()
    torch.testing.assert_close(effects["kl"][1, 2], (base.exp() * (base - patched)).sum(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(effects["dlogp"][1, 2], (patched[9] - base[9]).abs(), rtol=1e-9, atol=1e-12)
    # after the last layer only the explained position reaches the head
    assert bool((effects["kl"][L, :-1].abs() < 1e-12).all()) and float(effects["kl"][L, -1]) > 0


def test_run_resumes_and_reports(tmp_path):
    model_dir = tmp_path / "tiny"
    make_model("llama").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": "the cat sat on the mat and the dog sat on the"})
                                 for _ in range(2)) + "\n")
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--data", str(prompts), "--n", "2", "--max-tokens", "8", "--stride", "1",
            "--out", str(out)]
    assert bench.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 2 and set(summary["scopes"]) == {"semantic", "temperature", "fisher"}
    assert "patching: mean/kl" in (out / "layers.md").read_text()
    assert bench.main(argv) == 0  # resumed: nothing left to do
    assert bench.main([*argv[:-2], "--max-tokens", "9", "--out", str(out)]) == 2  # other settings: refused
