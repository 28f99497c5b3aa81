"""The Fisher Scope's estimators, paths and spectral view on tiny models."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_unbiased, assert_unchanged, bos_prompt, forward_of, make_model, make_tokenizer, random_ids, snapshot

from captum_jscopes import FisherScope
from captum_jscopes.display.fisher_components import plot_components
from captum_jscopes.fisher.algebra import fisher_matrix, fisher_matvec, fisher_trace, top_eigenpairs
from captum_jscopes.fisher.components import describe
from captum_jscopes.fisher.estimators import (
    DeflatedEstimator,
    EigEstimator,
    ExactEstimator,
    HutchinsonEstimator,
    KrylovEstimator,
    choose_k,
    probes,
)
from captum_jscopes.core.forward import gradient_checkpointing


def prompt(n=7, seed=3):
    return bos_prompt(n, seed)


@pytest.fixture(scope="module")
def exact64(llama64):
    return FisherScope(llama64).attribute(prompt(), estimator="exact")


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_matrix_free_products_and_eigenpairs_equal_eigh(arch):
    model = make_model(arch, torch.float64)
    forward = forward_of(model, random_ids(2, 6, seed=1))
    fisher = fisher_matrix(forward)
    x = torch.randn(*fisher.shape[:-1], 3, dtype=torch.float64)
    torch.testing.assert_close(fisher_matvec(forward, x, vocab_chunk=10), fisher @ x)
    torch.testing.assert_close(fisher_trace(forward), fisher.diagonal(dim1=-2, dim2=-1).sum(-1))
    values, vectors = torch.linalg.eigh(fisher)
    values, vectors = values.flip(-1)[..., :3], vectors.flip(-1)[..., :3]
    got_values, got_vectors, info = top_eigenpairs(forward, 3, tol=1e-10, max_iters=500)
    assert info["residual"] <= 1e-10
    torch.testing.assert_close(got_values, values, rtol=1e-8, atol=1e-12)
    overlap = (got_vectors * vectors).sum(-2).abs()  # equal up to sign
    torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", ["formed", "split"])
def test_hutchinson_is_unbiased(llama64, exact64, path):
    # the mean over many seeds equals exact within its standard error
    scope = FisherScope(llama64)
    seeds = 200
    runs = torch.stack([scope.attribute(prompt(), k=3, n_probes=4, seed=s, path=path, estimator="hutchinson") for s in range(seeds)])
    assert scope.last_info["path"] == path
    assert_unbiased(runs, exact64, "the estimator should be random with k < d")


@pytest.mark.parametrize("path", ["formed", "split"])
def test_hutchinson_standard_error_matches_the_spread_over_seeds(llama64, exact64, path):
    scope = FisherScope(llama64)
    errors, estimates = [], []
    for seed in range(150):
        scores, error = scope.attribute(prompt(), k=3, n_probes=6, seed=seed, path=path, return_error=True, estimator="hutchinson")
        errors.append(scores - exact64)
        estimates.append(error)
    rms = torch.stack(errors).pow(2).mean(0).sqrt()
    typical = torch.stack(estimates).pow(2).mean(0).sqrt()
    scored = exact64 > 0
    ratio = typical[scored] / rms[scored]
    assert torch.all((ratio > 0.75) & (ratio < 1.33)), ratio
    # and the coefficient of variation is bounded: <= sqrt(2 / m) of the remainder
    assert torch.all(rms[scored] <= (2 / 6) ** 0.5 * exact64[scored] + 1e-12)


def test_hutchinson_is_exact_when_the_remainder_is_isotropic():
    # a remainder whose Jacobian is isotropic gives zero variance: here J = I on a 2-d remainder
    fisher = torch.diag(torch.tensor([5.0, 1.0, 1.0], dtype=torch.float64))[None, None]
    found = probes(fisher, "hutchinson", k=1, n_probes=2, seed=0)
    # directions' squared norms under J = I: ||z||^2 = sum of the remaining eigenvalues, for every draw
    norms = found.sampled.pow(2).sum(-1)
    torch.testing.assert_close(norms, torch.full_like(norms, 2.0))


def test_seeded_and_deterministic(llama64):
    scope = FisherScope(llama64)
    a = scope.attribute(prompt(), k=2, n_probes=6, seed=5, estimator="hutchinson")
    b = scope.attribute(prompt(), k=2, n_probes=6, seed=5, estimator="hutchinson")
    c = scope.attribute(prompt(), k=2, n_probes=6, seed=6, estimator="hutchinson")
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a batch equals its prompts one at a time
    ids = torch.cat([prompt(seed=3), prompt(seed=4)])
    both = scope.attribute(ids, k=2, n_probes=6, seed=5, path="split", estimator="hutchinson")
    for row in range(2):
        alone = scope.attribute(ids[row : row + 1], k=2, n_probes=6, seed=5, path="split", estimator="hutchinson")[0]
        torch.testing.assert_close(both[row], alone)


def test_krylov_is_the_default_and_hutchinson_and_deflated_stay_selectable(llama64, exact64):
    scope = FisherScope(llama64)
    default = scope.attribute(prompt())
    info = scope.last_info
    # d = 16: two blocks of 8 Krylov directions are all of F's directions, so no probe is drawn
    assert info["k"] == 16 and info["n_probes"] == 0 and info["passes"] == KrylovEstimator().backward_passes(16)
    torch.testing.assert_close(default, exact64, rtol=1e-7, atol=1e-10)
    assert torch.equal(default, scope.attribute(prompt(), estimator="krylov"))
    assert info["f_seconds"] >= 0  # the F side is timed for the benchmarks
    hutchinson = scope.attribute(prompt(), estimator="hutchinson", budget=8)
    assert scope.last_info["k"] + scope.last_info["n_probes"] == 8 and scope.last_info["n_probes"] >= 2
    assert not torch.equal(hutchinson, default)
    old = scope.attribute(prompt(), estimator="deflated", k=2, n_probes=8)
    assert scope.last_info["path"] == "formed" and old.shape == exact64.shape
    assert not torch.equal(old, scope.attribute(prompt(), estimator="hutchinson", k=2, n_probes=8))


def test_choose_k_keeps_a_steep_spectrum_exactly_and_samples_a_flat_one():
    steep = torch.tensor([[[100.0, 50, 20, 1, 0.5, 0.2, 0.1, 0.1, 0.1, 0.1]]])
    flat = torch.ones(1, 1, 10)
    assert choose_k(steep, torch.zeros(1, 1), budget=6) >= 3
    assert choose_k(flat, torch.zeros(1, 1), budget=6) < choose_k(steep, torch.zeros(1, 1), budget=6)
    # a large sampled tail (split path) favours probes over more exact directions
    assert choose_k(steep, torch.tensor([[1000.0]]), budget=6) <= choose_k(steep, torch.zeros(1, 1), budget=6)


def test_automatic_path_choice():
    # the estimator is asked (its paths and what each costs), never its name
    small = forward_of(make_model("llama"), prompt())
    assert HutchinsonEstimator(n_probes=40).choose_path(small) == "formed"  # V = 64, d = 16: forming F is cheap

    class Large:  # only the head's shape matters
        weight = torch.empty(262144, 640)

    assert HutchinsonEstimator(n_probes=40).choose_path(Large) == "split"
    assert KrylovEstimator().choose_path(Large) == "split"
    # the split path's cost depends on the probes: with a few hundred, forming F is cheaper
    assert HutchinsonEstimator(n_probes=400).choose_path(Large) == "formed"
    assert EigEstimator().choose_path(Large) == "matrix_free"
    assert ExactEstimator().choose_path(Large) == "formed"
    assert HutchinsonEstimator().choose_path(Large, "formed") == "formed"
    with pytest.raises(ValueError, match="does not apply"):
        DeflatedEstimator().choose_path(Large, "split")


def test_bfloat16_model_keeps_the_fisher_side_in_float32():
    model = make_model("llama", torch.bfloat16)
    forward = forward_of(model, prompt())
    for path in ("formed", "split"):
        found = probes(None, "hutchinson", k=2, n_probes=4, forward=forward, path=path)
        assert found.exact.dtype == torch.float32 and found.sampled.dtype == torch.float32
    values, vectors, _ = top_eigenpairs(forward, 2)
    assert values.dtype == torch.float32 and vectors.dtype == torch.float32
    scores = FisherScope(model).attribute(prompt(), path="split", estimator="hutchinson")
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_components_add_up_to_the_exact_score():
    model = make_model("gpt2", torch.float64)
    scope = FisherScope(model, make_tokenizer())
    ids = prompt()
    exact = scope.attribute(ids, estimator="exact", exclude_special_tokens=False)
    d = model.config.n_embd
    found = scope.components(ids, k=d, exclude_special_tokens=False)
    assert found.token_scores.shape == (1, d, ids.shape[1])
    error = (found.token_scores.sum(1) - exact).norm() / exact.norm()
    assert error <= 1e-8
    assert torch.all(found.values[:, :-1] >= found.values[:, 1:])  # descending
    torch.testing.assert_close(found.share.sum(-1), torch.ones(1, dtype=torch.float64))
    # the sign is fixed so that the top-ranked token rises
    assert torch.all(found.raised_weight[..., 0] >= found.lowered_weight[..., 0].abs())


def test_components_matrix_free_equal_formed_and_describe(tmp_path):
    model = make_model("llama", torch.float64)
    tokenizer = make_tokenizer()
    scope = FisherScope(model, tokenizer)
    ids = prompt()
    formed = scope.components(ids, k=2, path="formed")
    free = scope.components(ids, k=2, path="matrix_free")
    assert formed.path == "formed" and free.path == "matrix_free"
    torch.testing.assert_close(free.values, formed.values, rtol=1e-3, atol=0)
    torch.testing.assert_close(free.token_scores, formed.token_scores, rtol=1e-2, atol=1e-6 * formed.token_scores.max())
    lines = describe(formed, tokenizer, ids)
    assert len(lines) == 2 and lines[0].startswith("direction 1, ") and "up," in lines[0] and "driven by" in lines[0]
    plot_components(formed, tokenizer, ids, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_gradient_checkpointing_gives_the_same_scores_and_leaves_the_model_unchanged():
    model = make_model("llama")
    before = snapshot(model)
    scope = FisherScope(model)
    plain = scope.attribute(prompt(), estimator="exact")
    checkpointed = scope.attribute(prompt(), estimator="exact", gradient_checkpointing=True)
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="unknown Fisher method"):
        scope.attribute(prompt(), estimator="magic", gradient_checkpointing=True)
    assert_unchanged(model, before)
    with pytest.raises(RuntimeError, match="boom"):
        with gradient_checkpointing(model):
            raise RuntimeError("boom")
    assert_unchanged(model, before)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_out_of_memory_halves_the_batch_of_backward_passes(monkeypatch, llama64):
    forward = forward_of(llama64, prompt())
    directions = torch.randn(8, 1, 1, 16, dtype=torch.float64)
    expected = forward.squared_norms(directions, chunk_size=1)
    real = torch.autograd.grad
    sizes = []

    def grad(outputs, inputs, grad_outputs=None, **kwargs):
        if kwargs.get("is_grads_batched"):
            sizes.append(grad_outputs.shape[0])
            if grad_outputs.shape[0] > 2:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(outputs, inputs, grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    got = forward.squared_norms(directions, chunk_size=8)
    torch.testing.assert_close(got, expected)
    assert sizes[:3] == [8, 4, 2] and forward._batch_limit == 2
    assert sizes[3:] == [2, 2, 2]  # the size that fitted is kept


def test_progress_bar_option(llama64, capsys):
    scope = FisherScope(llama64)
    quiet = scope.attribute(prompt(), budget=6, estimator="hutchinson")
    loud = scope.attribute(prompt(), budget=6, progress=True, estimator="hutchinson")
    torch.testing.assert_close(quiet, loud)
    assert "Fisher backward passes" in capsys.readouterr().err


def test_every_entry_point_defaults_to_the_same_fisher_estimator():
    import inspect

    from captum_jscopes.cli import main as cli
    from captum_jscopes.runs.dataset import DatasetSettings
    from captum_jscopes.runs.explain import explain
    from captum_jscopes.fisher.estimators import DEFAULT_ESTIMATOR, DEFAULT_PROBE_ESTIMATOR, probes

    def default(fn, *names):
        # the entry points' keyword is fisher_estimator (fisher_method: its deprecated name, default None)
        parameters = inspect.signature(fn).parameters
        return next(parameters[n].default for n in names if n in parameters and parameters[n].default is not None)

    def attribute(obj, *names):
        return next(getattr(obj, n) for n in names if getattr(obj, n, None) is not None)

    assert DEFAULT_ESTIMATOR == "krylov"
    assert FisherScope.Options().estimator == FisherScope.make_options().estimator == DEFAULT_ESTIMATOR
    assert not {"fisher_estimator", "estimator"} & set(inspect.signature(explain).parameters)  # the scope's default
    # probes() turns a formed F into directions: krylov has no F-only form, so its default is hutchinson
    assert default(probes, "name") == DEFAULT_PROBE_ESTIMATOR == "hutchinson"
    assert attribute(DatasetSettings(), "fisher_estimator", "fisher_method") == DEFAULT_ESTIMATOR
    parsed = cli.build_parser().parse_args(["attribute", "x"])
    assert attribute(parsed, "fisher_estimator", "fisher_method") == DEFAULT_ESTIMATOR
