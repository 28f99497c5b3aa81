"""Tests of captum_jscopes.bench.attnlrp: AttnLRP (LXT efficient mode) as a benchmark method.

Everything but the last two tests needs LXT's main branch and is skipped without it,
with the install command as the reason.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import assert_unchanged, make_model, make_tokenizer, random_ids, snapshot

from captum_jscopes.bench import attnlrp as A
from captum_jscopes.bench.methods import METHODS

ARCHS = ("llama", "gemma3")
TARGET = 7


@pytest.fixture(scope="module")
def lxt_map():
    """LXT's ``get_default_map``; skips the test (reason: the install command) without LXT."""
    try:
        return A._lxt()[1]
    except ImportError as error:
        pytest.skip(str(error))


def _namespaces(model, get_default_map) -> dict:
    """Every object LXT's monkey_patch may replace for ``model``'s modelling module:
    the own attributes of each patch target (classes, torch's Dropout, the module)
    and the attention registry's local and class-wide mappings."""
    module = A.modeling_module(model)
    state = {repr(t): dict(vars(t)) for t in [*get_default_map(module), module]}
    registry = module.ALL_ATTENTION_FUNCTIONS
    state["ALL_ATTENTION_FUNCTIONS._local_mapping"] = dict(registry._local_mapping)
    state["ALL_ATTENTION_FUNCTIONS._global_mapping"] = dict(type(registry)._global_mapping)
    return state


def _assert_identical(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for where, attrs in before.items():
        assert attrs.keys() == after[where].keys(), f"attributes added to / removed from {where}"
        changed = [name for name, value in attrs.items() if after[where][name] is not value]
        assert not changed, f"{where}: {changed} not restored"


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_shape_finite_non_negative_and_reductions(arch, lxt_map):
    model, ids = make_model(arch), random_ids(1, 12)
    relevance, logit = A.attnlrp_relevance(model, ids, TARGET)
    assert relevance.shape == (12, model.config.hidden_size) and relevance.dtype == torch.float32
    total = relevance.sum(-1)
    for reduction, expected in (("abs", total.abs()), ("positive", total.clamp(min=0)),
                                ("l2", relevance.norm(dim=-1))):
        scores = A.attnlrp_scores(model, None, ids, TARGET, reduction=reduction)
        assert scores.shape == (12,) and scores.device.type == "cpu" and scores.dtype == torch.float32
        assert torch.isfinite(scores).all() and (scores >= 0).all()
        torch.testing.assert_close(scores, expected)
    assert A.attnlrp_scores(model, None, ids, TARGET).equal(total.abs())  # the default: abs of the sum
    entry = METHODS["attnlrp"]
    assert entry.kind == "lrp" and not entry.in_default and entry.backward_passes(16) == 1
    assert entry.scores(model, make_tokenizer(), ids, TARGET).equal(total.abs())
    with pytest.raises(ValueError, match="unknown reduction"):
        A.attnlrp_scores(model, None, ids, TARGET, reduction="mean")


@pytest.mark.parametrize("arch", ARCHS)
def test_the_patch_is_active_inside_and_changes_the_gradient(arch, lxt_map):
    """AttnLRP is not plain gradient x input (else the patch did not take), and the
    explained logit is the model's own."""
    model, ids = make_model(arch), random_ids(1, 12)
    relevance, logit = A.attnlrp_relevance(model, ids, TARGET)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    plain_logit = model(inputs_embeds=embeds).logits[0, -1, TARGET]
    (grad,) = torch.autograd.grad(plain_logit, embeds)
    assert logit == pytest.approx(float(plain_logit.detach()), rel=1e-5)
    assert not torch.allclose(relevance, (embeds * grad)[0].detach(), rtol=1e-3, atol=1e-6)
    module = A.modeling_module(model)
    mlp = next(cls for cls in lxt_map(module) if isinstance(cls, type) and cls.__name__.endswith("MLP"))
    original = mlp.forward
    with A.lxt_patched(module):
        assert mlp.forward is not original and mlp.forward.__module__.startswith("lxt.")
    assert mlp.forward is original


@pytest.mark.parametrize("arch", ARCHS)
def test_conservation_up_to_the_softmax_bias(arch, lxt_map, monkeypatch):
    """LXT's AttnLRP conserves relevance (sum of input relevance = the explained
    logit) except where its softmax rule (a Taylor expansion WITH bias, LXT docs:
    "Deep Taylor Decomposition with bias for Softmax, Proposition 3.1") lets some
    escape; every other rule (identity rule on norms and activations, uniform rule
    on the gate and attention products) is exactly conservative. On these random
    models the escape is large (Gemma: ~half the logit), so "sum ~= logit" alone is
    no test. What holds exactly: per softmax, gradient x input is (a) sum(A gA) at
    its output A = the relevance the uniform rule hands to A (A's half of A @ V,
    whose other half LXT hands to v via its gradient / 2) and (b) sum(S gS) at its
    input S = what flows on to q and k, which LXT's q/4, k/4 halve again; so the
    relevance lost in one softmax is (sum(A gA) - sum(S gS)) / 2, and
    sum(input relevance) = logit - that, summed over layers."""
    model, ids = make_model(arch), random_ids(1, 12)  # make_model: eager attention (softmax visible)
    records = []
    softmax = torch.nn.functional.softmax

    def recording_softmax(scores, *args, **kwargs):
        weights = softmax(scores, *args, **kwargs)
        entry = {}
        records.append(entry)
        if scores.requires_grad:  # tensor hooks fire in autograd.grad too, unlike .retain_grad()
            scores.register_hook(lambda g: entry.__setitem__("S", (scores.detach() * g).sum()))
            weights.register_hook(lambda g: entry.__setitem__("A", (weights.detach() * g).sum()))
        return weights

    monkeypatch.setattr(torch.nn.functional, "softmax", recording_softmax)
    relevance, logit = A.attnlrp_relevance(model, ids, TARGET)
    assert len(records) == model.config.num_hidden_layers and all(e.keys() == {"S", "A"} for e in records)
    lost = sum(float(e["A"] - e["S"]) / 2 for e in records)
    # float32 rounding of sums of O(10^2) products of size O(|logit|): 1e-4 relative to the
    # largest quantity involved; what is tested is far bigger (lost ~ 0.1 to 1 x logit)
    scale = max(abs(logit), abs(lost), float(relevance.abs().sum()))
    print(f"{arch}: sum of relevance {float(relevance.sum()):.6f}, logit {logit:.6f}, lost in softmax {lost:.6f}")
    assert float(relevance.sum()) == pytest.approx(logit - lost, abs=1e-4 * scale)
    assert abs(lost) > 1e-3 * scale  # the softmax really absorbs something: the test is not vacuous


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_conservation_without_the_softmax_path(arch, lxt_map):
    """LXT's CP-LRP map (no relevance through the softmax, else the same rules):
    exactly conservative, so the only leak of AttnLRP is its softmax rule."""
    import importlib

    model, ids = make_model(arch), random_ids(1, 12)
    cp_map = importlib.import_module(f"lxt.efficient.models.{arch}").cp_LRP
    original = A.lxt_patched
    try:
        A.lxt_patched = lambda module, patch_map=None: original(module, cp_map)
        relevance, logit = A.attnlrp_relevance(model, ids, TARGET)
    finally:
        A.lxt_patched = original
    assert float(relevance.sum()) == pytest.approx(logit, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_everything_is_restored_after_a_call_and_after_an_exception(arch, lxt_map):
    model, ids = make_model(arch), random_ids(1, 12)
    model.train()  # a caller's state that must come back
    for p in list(model.parameters())[:3]:
        p.grad = torch.ones_like(p)
    list(model.parameters())[-1].requires_grad_(False)
    before_model, before_modules = snapshot(model), _namespaces(model, lxt_map)
    A.attnlrp_scores(model, None, ids, TARGET)
    assert_unchanged(model, before_model)
    _assert_identical(before_modules, _namespaces(model, lxt_map))

    # an exception after the forward, inside the patched body: a target outside the vocabulary
    with pytest.raises(IndexError):
        A.attnlrp_scores(model, None, ids, model.config.vocab_size + 5)
    assert_unchanged(model, before_model)
    _assert_identical(before_modules, _namespaces(model, lxt_map))

    # an exception in the middle of the forward
    def fail(*_):
        raise RuntimeError("boom")

    handle = model.model.layers[-1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            A.attnlrp_scores(model, None, ids, TARGET)
    finally:
        handle.remove()
    assert_unchanged(model, before_model)
    _assert_identical(before_modules, _namespaces(model, lxt_map))
    assert model.training


def test_unsupported_architecture(lxt_map):
    with pytest.raises(ValueError, match="not yet supported"):
        A.attnlrp_scores(make_model("phi"), None, random_ids(1, 6), TARGET)


def test_without_lxt_the_error_gives_the_install_command(monkeypatch):
    for name in [n for n in sys.modules if n == "lxt" or n.startswith("lxt.")] + ["lxt"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails
    model, ids = make_model("llama"), random_ids(1, 6)
    before = snapshot(model)
    for call in (lambda: A.attnlrp_scores(model, None, ids, TARGET),
                 lambda: METHODS["attnlrp"].scores(model, None, ids, TARGET)):
        with pytest.raises(ImportError) as info:
            call()
        message = str(info.value)
        assert A.INSTALL in message and "\n" not in message and "PyPI lxt 2.1" in message
        assert 'pip install "lxt @ git+https://github.com/rachtibat/LRP-eXplains-Transformers@f043441"' in message
    assert_unchanged(model, before)


def test_the_method_table_imports_without_lxt():
    code = ("import sys; sys.modules['lxt'] = None; import captum_jscopes.bench.methods as m; "
            "e = m.METHODS['attnlrp']; print(e.kind, e.backward_passes(8), 'lxt.efficient' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["lrp", "1", "False"]
