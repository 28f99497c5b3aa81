"""Every scope's map at every layer (analysis/layers.py) against an independent
computation: forward hooks on the decoder layers keep each layer's output
(retain_grad), and one plain backward per logit (and one for ||y||) gives the full
Jacobian of the logits w.r.t. every layer's residual stream, in float64."""

from __future__ import annotations

import pytest
import torch
from helpers import BOS, assert_unchanged, make_model, make_tokenizer, random_ids, snapshot

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope, layer_map
from captum_jscopes.core.forward import decoder_layers

N, POSITION = 7, 5
ARCHS = ["llama", "gpt2", "gemma3"]
# GPT-2 stays in float64 end to end; Llama and Gemma run norms / rotary embeddings in
# float32 inside, where the two computations' different summation orders show at 1e-7
RTOL = {"gpt2": 1e-8}


def _prompt() -> torch.Tensor:
    ids = random_ids(1, N, seed=2)
    ids[0, 0] = BOS
    return ids


def _brute_force(model, ids, position):
    """Per layer (embeddings first), the gradients (V, n, width) of every logit at
    ``position`` and (n, width) of ||y||, from hooks and plain backward passes."""
    states = []
    hooks = [layer.register_forward_hook(lambda _m, _a, out: states.append(out[0] if isinstance(out, tuple) else out))
             for layer in decoder_layers(model)]
    captured = {}
    hooks.append(model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: captured.__setitem__("y", args[0])))
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    try:
        logits = model(inputs_embeds=x, use_cache=False).logits[0, position]
    finally:
        for h in hooks:
            h.remove()
    inputs = [x, *states]
    per_logit = [torch.autograd.grad(logits[c], inputs, retain_graph=True) for c in range(logits.shape[0])]
    jac = [torch.stack([g[i][0] for g in per_logit]) for i in range(len(inputs))]  # each (V, n, width)
    norm = captured["y"][0, position].norm()
    confidence = [g[0] for g in torch.autograd.grad(norm, inputs, retain_graph=True)]
    return jac, confidence, torch.softmax(logits.detach(), -1)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_row_equals_hooks_and_plain_backward(arch):
    model = make_model(arch, dtype=torch.float64)
    ids = _prompt()
    jac, confidence, p = _brute_force(model, ids, POSITION)
    fisher_z = torch.diag(p) - torch.outer(p, p)
    target = int(p.argmax())
    common = dict(position=POSITION, exclude_special_tokens=False)
    maps = {
        "semantic": layer_map(SemanticScope(model), ids, target=target, **common),
        "temperature": layer_map(TemperatureScope(model), ids, **common),
        "fisher": layer_map(FisherScope(model), ids, estimator="exact", **common),
    }
    expected = {
        "semantic": torch.stack([g[target].norm(dim=-1) for g in jac]),
        "temperature": torch.stack([g.norm(dim=-1) for g in confidence]),
        "fisher": torch.stack([torch.einsum("cnd,ck,knd->n", g, fisher_z, g) for g in jac]),
    }
    scored = torch.arange(N) <= POSITION
    for name, result in maps.items():
        assert result.scores.shape == (1, model.config.num_hidden_layers + 1, N)
        torch.testing.assert_close(result.scores[0], expected[name] * scored, rtol=RTOL.get(arch, 1e-6), atol=1e-12,
                                   msg=name)


@pytest.mark.parametrize("scope_cls", [SemanticScope, TemperatureScope, FisherScope])
def test_row_zero_is_the_scope_map_and_batches_match_single_prompts(scope_cls):
    model, tokenizer = make_model("llama"), make_tokenizer()
    ids = random_ids(2, N, seed=4)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    scope = scope_cls(model, tokenizer)
    batch = layer_map(scope, ids, attention_mask=mask)
    torch.testing.assert_close(batch.scores[:, 0], scope.attribute(ids, attention_mask=mask), rtol=1e-5, atol=1e-7)
    single = layer_map(scope, ids[1:, 2:])
    torch.testing.assert_close(batch.scores[1, :, 2:], single.scores[0], rtol=1e-4, atol=1e-6)
    assert bool((batch.scores[1, :, :2] == 0).all())  # padding scores 0 at every layer


def test_handoff_and_final_share():
    model = make_model("llama", dtype=torch.float64)
    result = layer_map(TemperatureScope(model), _prompt(), position=POSITION, exclude_special_tokens=False)
    L = result.n_layers
    share = result.final_share()[0]
    assert share.shape == (L + 1,) and abs(float(share[-1]) - 1.0) < 1e-12  # only y's own position at the end
    handoff = result.handoff()[0]
    scores = result.shares()[0]  # the hand-off is read off each row's shares, not its raw scale
    torch.testing.assert_close(scores.sum(-1), torch.ones(L + 1, dtype=torch.float64))
    for t in range(POSITION):  # earlier tokens: below half their peak from handoff on, not before it
        h = int(handoff[t])
        assert 1 <= h <= L
        assert bool((scores[h:, t] < 0.5 * scores[:, t].max()).all())
        assert float(scores[h - 1, t]) >= 0.5 * float(scores[:, t].max())
    assert int(handoff[POSITION]) == L + 1
    assert bool((handoff[POSITION + 1 :] == 0).all())  # after the explained token: no score, no handoff
    with pytest.raises(ValueError, match="fraction"):
        result.handoff(1.5)


def test_model_unchanged_and_clear_errors():
    model, tokenizer = make_model("llama").train(), make_tokenizer()
    model.lm_head.register_forward_hook(lambda *args: None)
    before = snapshot(model)
    layer_map(SemanticScope(model, tokenizer), _prompt())
    with pytest.raises(ValueError, match="n_steps"):
        layer_map(SemanticScope(model, tokenizer), _prompt(), n_steps=3)
    with pytest.raises(ValueError, match="out of range"):
        layer_map(SemanticScope(model, tokenizer), _prompt(), position=99)
    with pytest.raises(TypeError, match="no_such"):
        layer_map(FisherScope(model, tokenizer), _prompt(), no_such=1)
    assert_unchanged(model, before)
    model.config.num_hidden_layers = 99  # no ModuleList of that length
    with pytest.raises(ValueError, match="decoder layers.*num_hidden_layers"):
        layer_map(SemanticScope(model, tokenizer), _prompt())
