"""``rules="lrp"``: AttnLRP's rules as the engine's modified backward pass
(captum_jscopes/core/lrp.py), against a reference derived from the rules' definition.

Each rule replaces one operation's Jacobian by a linear map fixed at the input
point: a norm's normaliser held constant, an activation's ``f(x) / x``, a product's
relevance halved, q and k's quartered and v's halved. The reference builds that
*surrogate function* on a copy of a one-layer model (the constants frozen from one
forward, plain tensor functions, no hooks, no detach) and takes its full Jacobian in
float64; the library's VJPs must equal it.
Then LXT (the authors' implementation), where installed, must give the same
relevance as ``SemanticScope(rules="lrp", reduce="input")``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from helpers import CONFIGS, assert_unchanged, make_model, make_tokenizer, random_ids, snapshot
from torch import nn

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope
from captum_jscopes.core.lrp import IDENTITY_EPS, SUPPORTED_MODEL_TYPES, lrp_rules

N = 5
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt2")


def one_layer(arch: str) -> nn.Module:
    """A float64 one-layer model of ``arch`` (qwen3 is built here: not in helpers.CONFIGS)."""
    if arch == "qwen3":
        config = transformers.Qwen3Config(hidden_size=16, num_key_value_heads=2, num_attention_heads=4, head_dim=4,
                                          intermediate_size=32, num_hidden_layers=1, vocab_size=64, bos_token_id=1,
                                          eos_token_id=2, pad_token_id=0)
    else:
        config = CONFIGS[arch]()
        for name in ("num_hidden_layers", "n_layer"):
            if hasattr(config, name):
                setattr(config, name, 1)
        if hasattr(config, "layer_types") and config.layer_types is not None:
            config.layer_types = config.layer_types[:1]
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).double().eval()
    with torch.no_grad():  # random init is near-degenerate (weights ~0.02): widen it so every rule matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


# ---------------------------------------------------------------------- the reference
def _surrogate(model: nn.Module, x0: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose rule sites compute the rules' linear maps, frozen at
    the forward from embeddings ``x0``: a function of the embeddings whose plain
    Jacobian at ``x0`` is the LRP-modified one."""
    ref = copy.deepcopy(model)
    seen: dict[nn.Module, tuple] = {}
    def record(module, args, out):
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            seen[module] = (args[0].detach(), out.detach())

    handles = [m.register_forward_hook(record) for m in ref.modules()]
    with torch.no_grad():
        ref(inputs_embeds=x0, use_cache=False)
    for h in handles:
        h.remove()

    def set_forward(module, fn):
        module.forward = fn  # an instance attribute: nn.Module.__call__ finds it first

    for module in list(ref.modules()):
        x_in, out = seen.get(module, (None, None))  # attention blocks return tuples: not recorded
        if type(module).__name__.endswith("RMSNorm"):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            s0 = torch.rsqrt(x_in.pow(2).mean(-1, keepdim=True) + eps)
            w_eff = out / (x_in * s0)  # whatever weight form the norm has (Gemma: 1 + w)
            set_forward(module, lambda x, s0=s0, w=w_eff: x * s0 * w)
        elif isinstance(module, nn.LayerNorm):
            std0 = (x_in.var(-1, unbiased=False, keepdim=True) + module.eps).sqrt()
            set_forward(module, lambda x, m=module, std0=std0: (x - x.mean(-1, keepdim=True)) / std0 * m.weight + m.bias)
        if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            act_in, act_out = seen[module.act_fn]
            ratio = act_out / (act_in + IDENTITY_EPS)
            set_forward(module.act_fn, lambda x, r=ratio: x * r)
            p0 = seen[module.down_proj][0]
            linear = module.down_proj
            set_forward(linear, lambda p, p0=p0, lin=linear: nn.functional.linear(p0 + (p - p0) / 2, lin.weight,
                                                                                   lin.bias))
        if all(hasattr(module, a) for a in ("c_fc", "c_proj", "act")):
            act_in, act_out = seen[module.act]
            set_forward(module.act, lambda x, r=act_out / (act_in + IDENTITY_EPS): x * r)
        for name, factor in (("q_proj", 0.25), ("k_proj", 0.25), ("v_proj", 0.5)):
            if hasattr(module, name) and hasattr(module, "o_proj"):
                proj = getattr(module, name)
                o0 = seen[proj][1]
                set_forward(proj, lambda h, o0=o0, lin=proj, c=factor: o0 + (nn.functional.linear(h, lin.weight, lin.bias)
                                                                            - o0) * c)
        if hasattr(module, "c_attn") and hasattr(module, "split_size"):
            conv, o0 = module.c_attn, seen[module.c_attn][1]
            third = o0.shape[-1] // 3
            c = torch.tensor([0.25] * third + [0.25] * third + [0.5] * third, dtype=o0.dtype)
            plain = type(conv).forward
            set_forward(conv, lambda h, o0=o0, conv=conv, c=c, plain=plain: o0 + (plain(conv, h) - o0) * c)
    return ref


def reference_jacobian(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(d, n, e) Jacobian of the final hidden state at the last token under the rules:
    the plain Jacobian of the surrogate (torch.autograd.functional.jacobian, no hooks;
    finite differences would drown in the float32 softmax of eager attention)."""
    x0 = model.get_input_embeddings()(ids).detach()
    ref = _surrogate(model, x0)

    def hidden(x):
        return ref.base_model(inputs_embeds=x, use_cache=False).last_hidden_state[0, -1]

    return torch.autograd.functional.jacobian(hidden, x0)[:, 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_scope_under_lrp_equals_the_rules_reference(arch):
    model = one_layer(arch)
    ids = random_ids(1, N, seed=1)
    before = snapshot(model)
    jac = reference_jacobian(model, ids)  # (d, n, e)
    x = model.get_input_embeddings()(ids)[0].detach()
    with torch.no_grad():  # (output_hidden_states would leave transformers' own recording hooks on the model)
        out = model(ids)
        y = model.base_model(ids).last_hidden_state[0, -1]
    target = int(out.logits[0, -1].argmax())
    w = model.get_output_embeddings().weight.detach()[target]
    p = torch.softmax(out.logits[0, -1], -1)
    W = model.get_output_embeddings().weight.detach()
    fisher = W.T @ (torch.diag(p) - torch.outer(p, p)) @ W
    g_sem = torch.einsum("d,dte->te", w, jac)
    g_tmp = torch.einsum("d,dte->te", y / y.norm(), jac)
    expected = {
        ("semantic", "norm"): g_sem.norm(dim=-1),
        ("semantic", "input"): (g_sem * x).sum(-1).abs(),
        ("temperature", "norm"): g_tmp.norm(dim=-1),
        ("temperature", "input"): (g_tmp * x).sum(-1).abs(),
        ("fisher", "norm"): torch.einsum("dte,dc,cte->t", jac, fisher, jac),
        ("fisher", "input"): torch.einsum("dt,dc,ct->t", (jac * x).sum(-1), fisher, (jac * x).sum(-1)),
    }
    scopes = {"semantic": (SemanticScope, {"target": target}), "temperature": (TemperatureScope, {}),
              "fisher": (FisherScope, {"estimator": "exact"})}
    for (name, reduce), want in expected.items():
        cls, kwargs = scopes[name]
        got = cls(model, exclude_special_tokens=False).attribute(ids, rules="lrp", reduce=reduce, **kwargs)[0]
        scale = want.abs().max()
        assert scale > 0
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(scale)), (name, reduce, got, want)
    # and the rules change the map: the plain gradient is another one
    plain = SemanticScope(model, exclude_special_tokens=False).attribute(ids, target=target)[0]
    assert not torch.allclose(plain, expected[("semantic", "norm")], rtol=1e-2)
    assert_unchanged(model, before)


@pytest.mark.parametrize("arch", ("llama", "gemma3", "gpt2"))
def test_lrp_rules_keep_the_forward_values_and_remove_their_hooks(arch):
    model = make_model(arch, torch.float64)
    ids = random_ids(2, 6, seed=2)
    before = snapshot(model)
    with torch.no_grad():
        plain = model(ids).logits
        with lrp_rules(model):
            ruled = model(ids).logits
    assert torch.equal(plain, ruled)
    assert_unchanged(model, before)


def test_unsupported_architecture_is_a_one_line_error_naming_the_supported_ones():
    model = make_model("gpt_neox")
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        SemanticScope(model).attribute(random_ids(1, 5), rules="lrp")
    message = str(error.value)
    assert "\n" not in message and "gpt_neox" in message
    assert all(name in message for name in SUPPORTED_MODEL_TYPES)
    assert_unchanged(model, before)


def test_bad_rules_or_reduce_are_one_line_errors(llama):
    with pytest.raises(ValueError, match="rules must be one of"):
        SemanticScope(llama).attribute(random_ids(1, 5), rules="LRP")
    with pytest.raises(ValueError, match="reduce must be one of"):
        FisherScope(llama).attribute(random_ids(1, 5), reduce="l1")


def test_model_unchanged_after_an_error_inside_the_ruled_forward():
    model = make_model("llama")

    def fail(*_):
        raise RuntimeError("boom")

    handle = model.model.layers[1].mlp.register_forward_hook(fail)  # the caller's own hook, kept
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        FisherScope(model).attribute(random_ids(1, 5), rules="lrp", estimator="eig")
    assert_unchanged(model, before)
    handle.remove()


def test_shared_forward_with_other_rules_is_refused(llama):
    from captum_jscopes.core.forward import prepare_inputs, run_forward

    ids, mask = prepare_inputs(llama, random_ids(1, 5), None)
    forward = run_forward(llama, ids, mask, torch.tensor([[4]]), rules="lrp")
    with pytest.raises(ValueError, match="rules="):
        TemperatureScope(llama).scope_output(ids, torch.tensor([[4]]), forward=forward)
    shared = TemperatureScope(llama).scope_output(ids, torch.tensor([[4]]), forward=forward, rules="lrp").scores
    alone = TemperatureScope(llama).attribute(ids, rules="lrp")
    assert torch.allclose(shared[:, 0], alone)


# ---------------------------------------------------------------------- LXT, the authors' implementation
@pytest.fixture(scope="module")
def lxt():
    from captum_jscopes.bench import attnlrp

    try:
        attnlrp._lxt()
    except ImportError:
        pytest.skip(f"needs LXT's main branch: {attnlrp.INSTALL}")
    return attnlrp


@pytest.mark.parametrize("arch", ("llama", "qwen2", "gemma3", "gpt2"))
def test_semantic_lrp_input_equals_lxt_on_tiny_models(lxt, arch):
    model = make_model(arch)
    ids = random_ids(1, 9, seed=4)
    with torch.no_grad():
        target = int(model(ids).logits[0, -1].argmax())
    ours = SemanticScope(model, make_tokenizer(), exclude_special_tokens=False).attribute(
        ids, target=target, rules="lrp", reduce="input")[0]
    reference = lxt.attnlrp_scores(model, None, ids, target)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("name", (None, "gemma3-270m"))
def test_semantic_lrp_input_equals_lxt_on_the_pretrained_models(lxt, name):
    from captum_jscopes import load_model

    model, tokenizer = load_model() if name is None else load_model(name)
    ids = tokenizer("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        target = int(model(ids).logits[0, -1].argmax())
    ours = SemanticScope(model, tokenizer, exclude_special_tokens=False).attribute(
        ids, target=target, rules="lrp", reduce="input")[0]
    reference = lxt.attnlrp_scores(model, tokenizer, ids, target)
    # 1e-4 relative per token, relative to the largest score
    assert float(((ours - reference).abs() / reference.abs().max()).max()) < 1e-4
