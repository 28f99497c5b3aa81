"""The Fisher estimators as objects (captum_jscopes.fisher.estimators), the F
algebra they stand on, the Fisher Scope's protocol and the spectral view's
result class."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from helpers import bos_prompt, forward_of, make_model, make_tokenizer

from captum_jscopes import FisherScope
from captum_jscopes.fisher import algebra
from captum_jscopes.fisher.estimators import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    DeflatedEstimator,
    EigEstimator,
    ExactEstimator,
    HutchinsonEstimator,
    KrylovEstimator,
    estimator,
    fisher_scores,
    probes,
)
from captum_jscopes.scopes.fisher import FisherOptions

#: Scores and standard errors of the pre-refactor code (0.2.0's fisher.py) on float64 GPT-2,
#: prompt() at its last position, every token scored. The random draws (signs, strata, the
#: subspace iteration's start) are pinned by these: a changed draw moves them by far more than 1e-9.
GOLDEN = {
    "hutchinson_default": ([0.002597022347205871, 0.002399316375285668, 0.0016717779767587574, 0.0022255275303974613, 0.002482136529998269, 0.0036567088722786797, 5.117819028659271],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    "hutchinson_k3_m4_seed7": ([0.0023429452554440725, 0.0022224595183605775, 0.001503231343959756, 0.0019879184168951633, 0.002243997813462117, 0.003421070355562074, 5.1061420074407255],
        [0.00032371707716594985, 0.0002896816758272293, 0.00018131203705061173, 0.00024553257940487035, 0.0002765986632700523, 0.000469213579256398, 0.17908056273243925]),
    "hutchinson_split_b10_seed2": ([0.002821797457022412, 0.0024527066624407774, 0.0015884745055895946, 0.0023759775813225505, 0.0025246715891881796, 0.003798527436366165, 5.07981691306585],
        [0.0006877443713060766, 0.0005951414299143043, 0.0003612792459156171, 0.0005815913339346151, 0.0006328582563637486, 0.0008752667235667565, 0.6757667496829223]),
    "deflated_k3_m6_seed1": ([0.002701854691149983, 0.0023093696369113747, 0.0016837914306688886, 0.002212174983998149, 0.0024872413600070887, 0.0034933576916013846, 5.172912013817131],
        [0.00028999723685122294, 0.0001226980476221691, 9.206296066047738e-05, 0.00021917224265230597, 0.0001329026060919817, 0.0003048824835106798, 0.28734550661983216]),
    "eig_k2": ([0.000377289529756026, 0.00036772921255227473, 0.0002451809726286939, 0.0003257732063726259, 0.00034050161182102375, 0.0005283446792349942, 0.9958654666764988],
        None),
    "eig_matrix_free_k2": ([0.0003772816333852687, 0.00036771992596021266, 0.00024517320666360323, 0.00032576499875995775, 0.00034049029553435343, 0.0005283201492159533, 0.9958595154434178],
        None),
    "exact": ([0.002597022347205871, 0.0023993163752856683, 0.0016717779767587574, 0.0022255275303974613, 0.0024821365299982695, 0.00365670887227868, 5.117819028659271],
        None),
}
GOLDEN_OPTIONS = {
    "hutchinson_default": ("hutchinson", {}, {}),
    "hutchinson_k3_m4_seed7": ("hutchinson", {"k": 3, "n_probes": 4}, {"seed": 7}),
    "hutchinson_split_b10_seed2": ("hutchinson", {"budget": 10}, {"path": "split", "seed": 2}),
    "deflated_k3_m6_seed1": ("deflated", {"k": 3, "n_probes": 6}, {"seed": 1}),
    "eig_k2": ("eig", {"k": 2}, {}),
    "eig_matrix_free_k2": ("eig", {"k": 2}, {"path": "matrix_free"}),
    "exact": ("exact", {}, {}),
}


def prompt(n=7, seed=3):
    return bos_prompt(n, seed)


@pytest.fixture(scope="module")
def gpt2():
    return make_model("gpt2", torch.float64)  # float64 end to end


@pytest.fixture(scope="module")
def gpt2_forward(gpt2):
    return forward_of(gpt2, prompt())


def brute_force_fisher(model, ids, position=-1):
    """(n,) sum_c p_c ((e_c - p)^T dz/dx_t)^2 from the full float64 Jacobian of the
    model's logits: independent of the library's engine and of its F algebra."""
    x0 = model.get_input_embeddings()(ids).detach()

    def logits(x):
        return model(inputs_embeds=x, use_cache=False).logits[0, position]

    dz = torch.autograd.functional.jacobian(logits, x0)[:, 0]  # (V, n, e)
    p = torch.softmax(logits(x0).detach(), -1)
    centred = dz - torch.einsum("c,cte->te", p, dz)[None]
    return torch.einsum("c,cte->t", p, centred**2)


# -- the table and its defaults -------------------------------------------------------
def test_the_table_in_order_with_the_defaults_held_once():
    assert list(ESTIMATORS) == ["krylov", "hutchinson", "deflated", "exact", "eig"]
    assert DEFAULT_ESTIMATOR == "krylov"
    assert [cls.name for cls in ESTIMATORS.values()] == list(ESTIMATORS)
    assert HutchinsonEstimator() == HutchinsonEstimator(k="auto", n_probes=None, budget=40)
    assert DeflatedEstimator() == DeflatedEstimator(k=16, n_probes=24)
    assert KrylovEstimator() == KrylovEstimator(sketch=None, block=None, rounds=2, n_probes=None, budget=48)
    # sketch and block are a sixth of the budget each unless given: a third is left to the probes
    assert (KrylovEstimator().sketch_size, KrylovEstimator().block_size, KrylovEstimator().probe_count()) == (8, 8, 16)
    assert (KrylovEstimator(budget=12).sketch_size, KrylovEstimator(budget=12).probe_count()) == (2, 4)
    assert KrylovEstimator(budget=60).probe_count() == 20 and KrylovEstimator(block=8, budget=60).probe_count() == 26
    assert EigEstimator() == EigEstimator(k=1)
    assert ExactEstimator().options() == {}
    assert {name: cls.randomised for name, cls in ESTIMATORS.items()} == {
        "krylov": True, "hutchinson": True, "deflated": True, "exact": False, "eig": False}
    assert [name for name, cls in ESTIMATORS.items() if cls.adaptive] == ["krylov"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        EigEstimator().k = 2  # type: ignore[misc]
    from captum_jscopes.fisher.estimators import DEFAULT_BUDGET

    assert DEFAULT_BUDGET == 48


@pytest.mark.parametrize("d", [16, 576])
def test_backward_passes_per_estimator(d):
    assert ExactEstimator().backward_passes(d) == d
    assert EigEstimator().backward_passes(d) == 1
    assert EigEstimator(k=64).backward_passes(d) == min(64, d)
    assert DeflatedEstimator().backward_passes(d) == (16 if d <= 16 else 40)  # k >= d: exact, d passes
    assert DeflatedEstimator(k=8, n_probes=16).backward_passes(d) == 24
    # the budget is spent whole, also on a model narrower than it (k = d - 1 plus probes)
    assert HutchinsonEstimator().backward_passes(d) == 40
    assert HutchinsonEstimator(budget=8).backward_passes(d) == 8
    assert HutchinsonEstimator(k=3, n_probes=4).backward_passes(d) == 7
    assert HutchinsonEstimator(k=d).backward_passes(d) == d  # every direction exact: no probes
    assert HutchinsonEstimator(k=d).backward_passes(d, "split") == d + max(2, 40 - d)  # the tail is always sampled
    # krylov: sketch + 2 blocks of VJPs + 1 block of JVPs + probes; at full rank no probes
    assert KrylovEstimator().backward_passes(d) == (8 + 16 + 8 if d <= 16 else 48)
    assert KrylovEstimator().backward_passes(d, "split") == (8 + 16 + 8 + 16 if d <= 16 else 48)
    assert KrylovEstimator(n_probes=4, block=3, rounds=3).backward_passes(d) == 8 + 9 + 6 + 4


@pytest.mark.parametrize("name, options, path", [
    ("exact", {}, "auto"),
    ("eig", {}, "auto"),
    ("eig", {"k": 40}, "auto"),
    ("eig", {"k": 3}, "matrix_free"),
    ("deflated", {}, "auto"),
    ("deflated", {"k": 4}, "auto"),
    ("deflated", {"k": 4, "n_probes": 2}, "auto"),
    ("hutchinson", {}, "auto"),
    ("hutchinson", {"budget": 10}, "auto"),
    ("hutchinson", {"k": 2}, "auto"),
    ("hutchinson", {"k": 16}, "auto"),
    ("hutchinson", {"k": 20, "n_probes": 4}, "auto"),
    ("hutchinson", {"n_probes": 6}, "auto"),
    ("hutchinson", {"n_probes": 2, "budget": 30}, "auto"),
    ("hutchinson", {"budget": 10}, "split"),
    ("hutchinson", {"k": 2, "n_probes": 4}, "split"),
])
def test_backward_passes_count_the_directions_the_estimator_builds(gpt2_forward, name, options, path):
    chosen = estimator(name, **options)
    found = chosen.probes(gpt2_forward, path=path)
    built = found.exact.shape[0] + (0 if found.sampled is None else found.sampled.shape[0])
    assert chosen.backward_passes(16, path) == built, found.info


def test_estimator_errors():
    with pytest.raises(ValueError, match="unknown Fisher method 'magic'; the estimators are krylov, hutchinson, "
                                         "deflated, exact, eig") as raised:
        estimator("magic")
    assert "\n" not in str(raised.value)
    with pytest.raises(TypeError, match="the eig estimator takes no option n_probes \\(its options: k\\)"):
        estimator("eig", n_probes=4)
    with pytest.raises(TypeError, match="the exact estimator takes no option k"):
        estimator("exact", k=3)
    assert estimator("exact", k=None) == ExactEstimator()  # None: the default
    assert estimator("deflated", k=None, n_probes=8) == DeflatedEstimator(k=16, n_probes=8)
    for name, options, message in [
        ("eig", {"k": 0}, "k must be a positive int"),
        ("eig", {"k": True}, "k must be a positive int"),
        ("deflated", {"n_probes": 3}, "even int"),
        ("hutchinson", {"budget": 2}, "budget must be an int >= 3"),
        ("hutchinson", {"n_probes": 1}, "n_probes must be an int >= 2"),
        ("hutchinson", {"k": "many"}, "k must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=message):
            estimator(name, **options)


def test_paths_an_estimator_does_not_take_are_refused(gpt2_forward):
    with pytest.raises(ValueError, match="path 'split' does not apply to method 'deflated'"):
        DeflatedEstimator().probes(gpt2_forward, path="split")
    with pytest.raises(ValueError, match="path 'matrix_free' does not apply to method 'hutchinson'"):
        HutchinsonEstimator().probes(gpt2_forward, path="matrix_free")
    with pytest.raises(ValueError, match="unknown Fisher path 'fast'"):
        ExactEstimator().probes(gpt2_forward, path="fast")
    with pytest.raises(ValueError, match="the Fisher matrix or the forward pass"):
        ExactEstimator().probes()


# -- scores -------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_scores_equal_the_pre_refactor_code(gpt2_forward, case):
    name, options, call = GOLDEN_OPTIONS[case]
    scores, error = fisher_scores(gpt2_forward, estimator(name, **options).probes(gpt2_forward, **call), 32)
    expected_scores, expected_error = GOLDEN[case]
    torch.testing.assert_close(scores[0, 0], torch.tensor(expected_scores, dtype=torch.float64), rtol=1e-9, atol=0)
    if expected_error is None:
        assert error is None
    else:
        torch.testing.assert_close(error[0, 0], torch.tensor(expected_error, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-15)


def test_exact_equals_brute_force_and_every_estimator_at_full_rank_equals_exact(gpt2, gpt2_forward):
    reference = brute_force_fisher(gpt2, prompt())
    exact, _ = fisher_scores(gpt2_forward, ExactEstimator().probes(gpt2_forward), 32)
    assert (exact[0, 0] - reference).norm() / reference.norm() <= 1e-8
    # all d directions kept exactly: the same directions, hence the same scores
    for chosen in (EigEstimator(k=16), DeflatedEstimator(k=16), HutchinsonEstimator(k=16)):
        found = chosen.probes(gpt2_forward)
        assert found.sampled is None and found.info["k"] == 16
        assert torch.equal(fisher_scores(gpt2_forward, found, 32)[0], exact), chosen.name
    # a budget above d leaves one eigen-direction to the probes: every probe is +-it, so exact
    budget, error = fisher_scores(gpt2_forward, HutchinsonEstimator(budget=40).probes(gpt2_forward), 32)
    torch.testing.assert_close(budget, exact, rtol=1e-12, atol=0)
    assert error.abs().max() <= 1e-12 * exact.max()


def test_a_formed_fisher_matrix_and_the_forward_give_the_same_probes(gpt2_forward):
    fisher = algebra.fisher_matrix(gpt2_forward)
    with pytest.raises(TypeError, match="call scores\\(forward\\)"):
        KrylovEstimator().probes(gpt2_forward)
    for name in [name for name, cls in ESTIMATORS.items() if cls.probes_from_f]:
        from_matrix = estimator(name).probes(fisher=fisher, seed=3)
        from_forward = estimator(name).probes(gpt2_forward, seed=3, path="formed")
        assert torch.equal(from_matrix.exact, from_forward.exact), name
        assert (from_matrix.sampled is None) == (from_forward.sampled is None), name
        if from_matrix.sampled is not None:
            assert torch.equal(from_matrix.sampled, from_forward.sampled), name
    # the shorthand of 0.2.0
    assert torch.equal(probes(fisher, "deflated", k=4, seed=2).sampled,
                       DeflatedEstimator(k=4).probes(fisher=fisher, seed=2).sampled)


def test_seeded_estimators_depend_on_the_seed_and_the_others_do_not(gpt2_forward):
    for name, cls in ESTIMATORS.items():
        options = {"k": 3} if name in ("hutchinson", "deflated", "eig") else {"block": 2} if name == "krylov" else {}
        first = cls(**options).scores(gpt2_forward, seed=0)[0]
        again = cls(**options).scores(gpt2_forward, seed=0)[0]
        other = cls(**options).scores(gpt2_forward, seed=1)[0]
        assert torch.equal(first, again)
        assert torch.equal(first, other) != cls.randomised, name


# -- the scope's protocol ---------------------------------------------------------------
def test_scope_class_attributes_and_options():
    assert FisherScope.name == "fisher" and FisherScope.takes_target is False
    assert FisherScope.span_rule == "sum" and FisherScope.perturbation == "isotropic"
    assert FisherScope.Options is FisherOptions
    # the scope's own options, then the estimators' options it does not declare itself (their dataclass fields)
    assert FisherScope.option_names() == ("rules", "reduce", "estimator", "k", "n_probes", "budget", "seed", "tol",
                                          "max_passes", "path", "vocab_chunk", "gradient_checkpointing", "sketch",
                                          "block", "rounds", "head_mass", "max_head")
    options = FisherScope.make_options()
    assert options == FisherOptions(estimator="krylov", k=None, n_probes=None, budget=None, seed=0,
                                    path="auto", vocab_chunk=8192, gradient_checkpointing=False)
    assert all(f.metadata.get("help") for f in dataclasses.fields(FisherOptions))
    with pytest.raises(TypeError, match="bogus"):
        FisherScope.make_options(bogus=1)


def test_scope_asks_the_estimator_for_passes_and_randomness():
    make = FisherScope.make_options
    assert FisherScope.backward_passes(make(), 576) == 48
    assert FisherScope.backward_passes(make(estimator="exact"), 576) == 576
    assert FisherScope.backward_passes(make(estimator="eig", k=16), 576) == 16
    assert FisherScope.backward_passes(make(estimator="deflated", k=8, n_probes=16), 576) == 24
    assert FisherScope.backward_passes(make(budget=12), 576) == 12
    assert FisherScope.randomised(make()) and FisherScope.randomised(make(estimator="deflated"))
    assert not FisherScope.randomised(make(estimator="exact")) and not FisherScope.randomised(make(estimator="eig"))
    with pytest.raises(TypeError, match="eig estimator takes no option n_probes"):
        FisherScope.backward_passes(make(estimator="eig", n_probes=4), 576)


def test_method_is_a_deprecated_alias_of_estimator():
    model = make_model("llama")
    scope = FisherScope(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = scope.attribute(prompt(), estimator="deflated", k=3, n_probes=4, seed=2)
    with pytest.warns(DeprecationWarning, match="method= is deprecated; use estimator=") as caught:
        old = scope.attribute(prompt(), method="deflated", k=3, n_probes=4, seed=2)
    assert torch.equal(old, new)
    assert caught[0].filename == __file__  # it points at the caller's line
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        FisherScope.make_options(method="eig", estimator="exact")


def test_local_options_are_exact_unless_an_estimator_was_chosen():
    local = FisherScope.local_options
    make = FisherScope.make_options
    assert local(make()).estimator == "exact"
    assert local(make(k=3, seed=4)) == make(estimator="exact", seed=4)  # the estimator's options go with it
    assert local(FisherOptions()).estimator == "exact"
    assert local(make(estimator="hutchinson", k=3)) == make(estimator="hutchinson", k=3)
    assert local(make(estimator="eig")).estimator == "eig"
    with pytest.warns(DeprecationWarning):
        assert local(make(method="hutchinson")).estimator == "hutchinson"


def test_settings_write_the_json_key_fisher_estimator():
    make = FisherScope.make_options
    assert FisherScope.settings(make()) == {"fisher_estimator": "krylov"}
    assert FisherScope.settings(make(estimator="eig")) == {"fisher_estimator": "eig"}
    assert FisherScope.settings(make(estimator="eig", k=4, seed=3)) == {"fisher_estimator": "eig", "k": 4, "seed": 3}
    assert type(FisherScope.settings(make())["fisher_estimator"]) is str  # plain JSON


def test_readout_exact_directions_and_own_progress(gpt2, gpt2_forward):
    scope = FisherScope(gpt2)
    logits = torch.randn(2, 64, dtype=torch.float64)
    torch.testing.assert_close(scope.readout(torch.zeros(2, 16), logits, None), torch.log_softmax(logits, -1))
    directions = FisherScope.exact_directions(gpt2_forward)
    assert directions.shape == (16, 1, 1, 16)
    fisher = algebra.fisher_matrix(gpt2_forward)
    torch.testing.assert_close(torch.einsum("ibpd,ibpe->bpde", directions, directions), fisher,
                               rtol=1e-9, atol=1e-12 * fisher.abs().max())
    assert scope.shows_own_progress(scope.make_options()) is True


def test_scope_scores_errors_and_last_info(gpt2):
    scope = FisherScope(gpt2)
    ids = prompt()
    for case in ("hutchinson_k3_m4_seed7", "deflated_k3_m6_seed1", "eig_k2"):
        name, options, call = GOLDEN_OPTIONS[case]
        scores, error = scope.attribute(ids, estimator=name, **options, **call, return_error=True,
                                        exclude_special_tokens=False)
        torch.testing.assert_close(scores[0], torch.tensor(GOLDEN[case][0], dtype=torch.float64), rtol=1e-9, atol=0)
        if name == "eig":
            assert torch.isnan(error).all()  # the truncation's bias is not estimated
        else:
            torch.testing.assert_close(error[0], torch.tensor(GOLDEN[case][1], dtype=torch.float64),
                                       rtol=1e-9, atol=1e-15)
        assert scope.last_info["k"] == options["k"] and scope.last_info["f_seconds"] >= 0
    with pytest.raises(TypeError, match="exact estimator takes no option k"):
        scope.attribute(ids, estimator="exact", k=2)


# -- the spectral view's result --------------------------------------------------------
def test_fisher_components_repr_describe_and_plot(tmp_path):
    from captum_jscopes.display.fisher_components import plot_components
    from captum_jscopes.fisher.components import describe

    tokenizer = make_tokenizer()
    scope = FisherScope(make_model("llama", torch.float64), tokenizer)
    ids = prompt()
    found = scope.components(ids, k=2)
    text = repr(found)
    assert text.startswith("FisherComponents(1 prompt, top 2 directions of F, path='formed', 7 tokens)")
    assert "prompt 0 at position 6: tr F = " in text and "eigenvalues (share of tr F)" in text and "%)" in text
    assert "tensor(" not in text and len(text.splitlines()) == 2
    assert found.describe(tokenizer, ids) == describe(found, tokenizer, ids)
    figure = found.plot(tokenizer, ids, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0 and len(figure.axes) == 2
    assert len(plot_components(found, tokenizer, ids).axes) == 2
