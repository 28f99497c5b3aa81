"""The krylov Fisher estimator (deflate the tokens' Fisher mass, then sample the
rest), the engine's JVPs it stands on, and the ``tol`` option, on tiny float64
models against the exact estimator (itself checked against the brute-force
Jacobian in test_fisher_estimators.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_unbiased, assert_unchanged, bos_prompt, forward_of, make_model, snapshot

from captum_jscopes import FisherScope, layer_map
from captum_jscopes.fisher.algebra import fisher_matrix
from captum_jscopes.fisher.estimators import ExactEstimator, KrylovEstimator, estimator, fisher_factor

#: a basis of 4 of the tiny model's 16 directions (2 + 2), so that the probes have a remainder to sample
SMALL = {"sketch": 3, "block": 2, "rounds": 2, "n_probes": 4}


prompt = bos_prompt


@pytest.fixture(scope="module")
def exact64(llama64):
    # every token scored, the BOS too: the estimators' raw scores (the scope leaves special tokens out)
    return ExactEstimator().scores(forward_of(llama64, prompt()))[0][0, 0]


def counted(forward):
    """``forward`` whose VJP directions and JVP tangents are counted (one pass each)."""
    calls = {"vjp": 0, "jvp": 0}
    vjp, jvp = forward.vjp, forward.jvp

    def counting_vjp(directions):
        calls["vjp"] += directions.shape[0] * directions.shape[2]
        return vjp(directions)

    def counting_jvp(tangents, *args, **kwargs):
        calls["jvp"] += tangents.shape[0]
        return jvp(tangents, *args, **kwargs)

    forward.vjp, forward.jvp = counting_vjp, counting_jvp
    return forward, calls


@pytest.mark.parametrize("arch, step, rtol", [
    ("gpt2", 1e-6, 1e-4),  # float64 throughout: the difference is as exact as the step
    ("llama", 1e-3, 2e-2),  # Llama's RMSNorm runs in float32 inside: the default step, ~1e-3 accurate
])
def test_jvp_agrees_with_the_vjp_by_duality(arch, step, rtol):
    # <v, J xi> = <J^T v, xi> for every tangent xi and direction v: the forward difference is a JVP
    forward = forward_of(make_model(arch, torch.float64), prompt())
    generator = torch.Generator().manual_seed(0)
    tangents = torch.randn(3, *forward.embeddings.shape, generator=generator, dtype=torch.float64)
    directions = torch.randn(2, 1, 1, forward.hidden.shape[-1], generator=generator, dtype=torch.float64)
    jvps = forward.jvp(tangents, step=step)  # (3, 1, 1, d)
    vjps = forward.vjp(directions)  # (2, 1, 1, n, e)
    left = torch.einsum("id,jd->ij", directions[:, 0, 0], jvps[:, 0, 0])
    right = torch.einsum("ine,jne->ij", vjps[:, 0, 0], tangents[:, 0])
    torch.testing.assert_close(left, right, rtol=rtol, atol=rtol * right.abs().max())


def test_jvp_reruns_stop_before_the_head_and_leave_no_hook():
    # the reruns need only the final hidden state: the output head must not run, and its hooks are as before
    model = make_model("llama", torch.float64)
    forward = forward_of(model, prompt())
    head = model.get_output_embeddings()
    calls = []
    handle = head.register_forward_hook(lambda *_: calls.append(1))
    try:
        before = (dict(head._forward_pre_hooks), dict(head._forward_hooks))
        forward.jvp(torch.randn(2, *forward.embeddings.shape, dtype=torch.float64))
        assert calls == []
        assert (dict(head._forward_pre_hooks), dict(head._forward_hooks)) == before
    finally:
        handle.remove()


def test_every_direction_deflated_equals_exact():
    # the basis reaches F's rank (16 = 8 + 8 on the formed path): no probes, the exact score
    # (GPT-2: float64 throughout, where Llama's norms round to float32 inside)
    forward = forward_of(make_model("gpt2", torch.float64), prompt())
    scores, error, info = KrylovEstimator(block=8, rounds=2).scores(forward, path="formed")
    assert error is None and info["k"] == 16 and info["n_probes"] == 0
    torch.testing.assert_close(scores, ExactEstimator().scores(forward)[0], rtol=1e-8, atol=1e-12)
    assert KrylovEstimator(block=8, rounds=2).backward_passes(16) == info["passes"]


@pytest.mark.parametrize("path", ["formed", "split"])
def test_krylov_is_unbiased(llama64, exact64, path):
    # the mean over many seeds equals exact within its standard error
    seeds = 200
    runs = []
    for seed in range(seeds):
        scores, _, info = estimator("krylov", **SMALL).scores(forward_of(llama64, prompt()), seed=seed, path=path)
        runs.append(scores[0, 0])
    assert info["path"] == path and info["k"] == 4
    assert_unbiased(torch.stack(runs), exact64, "the estimator should be random below full rank")


def test_standard_error_bounds_the_spread_and_covers_the_exact_score(llama64, exact64):
    # the pairwise estimate of ||R_t||_F^2 bounds a random-sign probe's variance, widened by Student's t:
    # never far below the real spread, and the 95% intervals cover the exact score at least 95% of the time
    errors, estimates = [], []
    for seed in range(150):
        scores, error, _ = estimator("krylov", **{**SMALL, "n_probes": 6}).scores(
            forward_of(llama64, prompt()), seed=seed, path="formed")
        errors.append(scores[0, 0] - exact64)
        estimates.append(error[0, 0])
    errors, estimates = torch.stack(errors), torch.stack(estimates)
    scored = exact64 > 0
    ratio = estimates.pow(2).mean(0).sqrt()[scored] / errors.pow(2).mean(0).sqrt()[scored]
    assert torch.all((ratio > 0.9) & (ratio < 3.0)), ratio
    covered = (errors.abs() <= 1.96 * estimates)[:, scored].double().mean()
    assert covered >= 0.95, covered


def test_passes_counted_equal_the_passes_run(llama64):
    for options, path in [(SMALL, "formed"), (SMALL, "split"), ({}, "formed"), ({"block": 3, "rounds": 3}, "split")]:
        chosen = estimator("krylov", **options)
        forward, calls = counted(forward_of(llama64, prompt()))
        _, _, info = chosen.scores(forward, path=path)
        assert info["passes"] == calls["vjp"] + calls["jvp"] == chosen.backward_passes(16, path), (options, path)


def test_several_positions_and_a_batch(llama64):
    # each explained position gets its own basis (its own VJPs and JVPs); at full rank every one is exact
    ids = torch.cat([prompt(7, 3), prompt(7, 4)])
    position = torch.tensor([[4, 6], [5, 6]])
    scope = FisherScope(llama64)
    scores = scope.attribute_positions(ids, position, estimator="krylov", path="formed")
    # passes are counted per explained position, as backward_passes counts them
    assert scope.last_info["k"] == 16 and scope.last_info["passes"] == KrylovEstimator().backward_passes(16)
    # Llama's float32 norms inside: the rotated basis agrees to float32 rounding
    torch.testing.assert_close(scores, scope.attribute_positions(ids, position, estimator="exact"),
                               rtol=1e-6, atol=1e-12)


def test_tol_adds_probes_until_the_estimated_error_is_below_it(llama64, exact64):
    scope = FisherScope(llama64)
    base = {**SMALL, "n_probes": 4}
    forward = forward_of(llama64, prompt())
    _, _, plain = estimator("krylov", **base).scores(forward, seed=3, path="formed")
    assert plain["rel_error"] > 0.01, "the test needs an estimate coarser than the tolerance"
    scores, error, info = estimator("krylov", **base).scores(forward_of(llama64, prompt()), seed=3, path="formed",
                                                              tol=0.01, max_passes=5000)
    assert info["rel_error"] <= 0.01 and info["tol"] == 0.01
    assert info["n_probes"] > 4 and info["passes"] == plain["passes"] + info["n_probes"] - 4
    # tol bounds the spread; the returned errors are that, widened for the intervals where a token's remainder
    # lies in few directions: never narrower, and of the same size
    estimated = float(error[0, 0].norm() / scores[0, 0].norm())
    assert info["rel_error"] * (1 - 1e-9) <= estimated < 2 * info["rel_error"]
    # the real error is of the size the estimate says (a 95% bound would be 1.96x; allow 3x)
    assert float((scores[0, 0] - exact64).norm() / exact64.norm()) < 3 * 0.01
    # through the scope (its options reach the estimator), with the passes in last_info
    scope.attribute(prompt(), estimator="krylov", tol=0.01, max_passes=5000, seed=3, path="split")
    assert scope.last_info["rel_error"] <= 0.01 and scope.last_info["passes"] >= KrylovEstimator().backward_passes(16)


def test_max_passes_stops_with_a_warning(llama64):
    forward = forward_of(llama64, prompt())
    with pytest.warns(RuntimeWarning, match="max_passes=20"):
        _, _, info = estimator("krylov", **SMALL).scores(forward, seed=0, path="formed", tol=1e-6, max_passes=20)
    assert info["passes"] == 20


def test_bad_options_are_clear_errors_and_leave_the_model_unchanged(llama64):
    scope = FisherScope(llama64)
    before = snapshot(llama64)
    with pytest.raises(ValueError, match="tol= needs an estimator that adds probes \\(krylov\\)"):
        scope.attribute(prompt(), estimator="hutchinson", tol=0.02)
    with pytest.raises(ValueError, match="tol must be a relative error"):
        scope.attribute(prompt(), estimator="krylov", tol=2.0)
    with pytest.raises(ValueError, match="max_passes= bounds tol="):
        scope.attribute(prompt(), estimator="krylov", max_passes=10)
    with pytest.raises(ValueError, match="budget 5 leaves fewer than 2 probes"):
        scope.attribute(prompt(), estimator="krylov", budget=5)
    with pytest.raises(TypeError, match="takes no option k"):
        scope.attribute(prompt(), estimator="krylov", k=3)
    with pytest.raises(ValueError, match="sketch must be a positive int"):
        KrylovEstimator(sketch=0)
    with pytest.raises(ValueError, match="does not apply"):
        scope.attribute(prompt(), estimator="krylov", path="matrix_free")
    assert_unchanged(llama64, before)
    scope.attribute(prompt(), estimator="krylov", tol=0.02)
    assert_unchanged(llama64, before)


def test_layer_maps_with_the_krylov_estimator(llama64):
    # the same directions at every layer: row 0 is the map attribute() gives, with a standard error everywhere
    scope = FisherScope(llama64)
    options = {"estimator": "krylov", "n_probes": 4, "budget": None, "seed": 2, "path": "formed"}
    layers = layer_map(scope, prompt(), **options)
    single = scope.attribute(prompt(), **options)
    torch.testing.assert_close(layers.scores[:, 0], single, rtol=1e-8, atol=1e-12)
    assert layers.scores.shape[1] == len(llama64.model.layers) + 1
    assert torch.isfinite(layers.error).all()


@pytest.mark.parametrize("rank", [1, 3])
def test_intervals_hold_when_a_token_remainder_lies_in_few_directions(rank):
    # a token whose remainder R_t has rank 1-3: each random-sign probe is ~ a chi-square with that many
    # degrees of freedom, so the mean of 16 is right-skewed and a low draw comes with a low variance
    # estimate. The symmetric pairwise interval then misses the score above it; the widened one does not
    from captum_jscopes.fisher.estimators import probe_standard_error

    generator = torch.Generator().manual_seed(rank)
    m, trials, width = 16, 3000, 40
    factor = torch.randn(width, rank, generator=generator, dtype=torch.float64)  # R_t^T
    truth = factor.pow(2).sum()
    signs = torch.randint(0, 2, (trials, m, width), generator=generator).double() * 2 - 1
    vjps = signs @ factor  # (trials, m, rank): each probe's vector
    norms, mean = vjps.pow(2).sum(-1), vjps.pow(2).sum(-1).mean(1)
    gram = torch.einsum("tjr,tkr->tjk", vjps, vjps).pow(2)
    pairwise = (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (m * (m - 1))  # mean over j != k
    symmetric, widened = (probe_standard_error(mean, pairwise, m, skew) for skew in (False, True))
    covered = ((mean - truth).abs() <= 1.959963984540054 * widened).double().mean()
    assert covered >= 0.95, covered
    if rank == 1:
        assert ((mean - truth).abs() <= 1.959963984540054 * symmetric).double().mean() < 0.93
    # wider where it must be, not everywhere: at most about twice the real spread of the estimate
    assert (widened.median() / (norms.var(1).mean() / m).sqrt()) < 2.0
    assert torch.all(widened >= symmetric)


def test_a_split_head_past_d_tokens_is_formed_and_equals_f():
    # head_mass 1: the whole vocabulary (64 tokens) in the head, more than d = 16, so the head's F is
    # formed d x d from the centred rows: it is F itself
    forward = forward_of(make_model("gpt2", torch.float64), prompt())
    _, factor, rest_mass, tail, info = fisher_factor(forward, None, "split", 4, head_mass=1.0, max_head=64)
    assert info["path"] == "split" and info["head_tokens"] > 16 and factor.shape[-2] == 16
    torch.testing.assert_close(factor.transpose(-1, -2) @ factor, fisher_matrix(forward, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)
    assert float(rest_mass.abs().max()) < 1e-9


def test_the_krylov_head_holds_the_head_mass_where_hutchinson_stops_at_d(llama64):
    # a near-uniform tiny model needs most of its 64 tokens for 99.9% of tr F: krylov takes them
    # (a tail it cannot deflate is what made its worst errors on LAMBADA), hutchinson keeps d
    _, _, info = KrylovEstimator().scores(forward_of(llama64, prompt()), path="split")
    assert info["head_tokens"] > 16 and info["head_share"] >= 0.999
    _, _, info = estimator("hutchinson").scores(forward_of(llama64, prompt()), path="split")
    assert info["head_tokens"] == 16 and info["head_share"] < 0.999


def test_each_position_forms_its_own_head_and_the_tail_is_the_rest():
    # four positions whose heads need different counts: each F_head sums its own tokens only, and
    # F_head + the tail that tail_probes samples (every token not among its ids) is F at every position
    from captum_jscopes.core.forward import prepare_inputs, run_forward

    model = make_model("gpt2", torch.float64)
    ids, mask = prepare_inputs(model, prompt(), None)
    forward = run_forward(model, ids, mask, torch.tensor([[1, 3, 4, 6]]))
    _, factor, _, (mean, head_ids), _ = fisher_factor(forward, None, "split", 4, head_mass=0.95, max_head=64)
    sizes = [len(set(position.tolist())) for position in head_ids[0]]
    assert len(set(sizes)) > 1 and max(sizes) > 16, sizes
    full = fisher_matrix(forward, dtype=torch.float64)
    probs, weight = forward.probs(), forward.weight.double()
    for p in range(4):
        tail = torch.ones(weight.shape[0], dtype=torch.bool)
        tail[head_ids[0, p]] = False
        rows = probs[0, p, tail].sqrt()[:, None] * (weight[tail] - mean[0, p])
        torch.testing.assert_close(factor[0, p].T @ factor[0, p] + rows.T @ rows, full[0, p], rtol=1e-9, atol=1e-12)
