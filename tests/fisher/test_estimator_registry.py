"""Fisher estimators registered like scopes: an estimator defined outside the package
with an option of its own (``alpha``) is a choice of the Fisher Scope, of the command
line and of the datasets' settings, its option reaching all of them with no other
change; the built-in estimators' own options (krylov's sketch, block, rounds, ...)
reach them the same way; the path choice asks the estimator; and docs/extending.md's
estimator block runs as written."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch
from helpers import bos_prompt, forward_of, make_model

from captum_jscopes import FisherScope
from captum_jscopes.cli.main import build_parser
from captum_jscopes.cli.scope_flags import scope_settings_from_args
from captum_jscopes.fisher.algebra import eigen, fisher_matrix
from captum_jscopes.fisher.estimators import (
    ESTIMATORS,
    FisherEstimator,
    FisherProbes,
    KrylovEstimator,
    ProbeEstimator,
    estimator,
    register_estimator,
)
from captum_jscopes.runs.dataset import DatasetSettings
from captum_jscopes.scopes.fisher import FisherOptions


@dataclass(frozen=True)
class ShareEstimator(ProbeEstimator):
    """The fewest top eigen-directions of F holding a share alpha of tr F, exactly."""

    name: ClassVar[str] = "mine"
    biased: ClassVar[bool] = True

    alpha: float = field(default=0.9, metadata={"help": "share of tr F kept exactly (0.9)"})

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        return hidden_size

    def _probes(self, forward, fisher, seed, path, vocab_chunk) -> FisherProbes:
        values, vectors = eigen(fisher_matrix(forward, vocab_chunk) if fisher is None else fisher)
        held = values.cumsum(-1) / values.sum(-1, keepdim=True)
        k = int((held < self.alpha).sum(-1).max()) + 1
        directions = (vectors[..., :k] * values[..., None, :k].sqrt()).movedim(-1, 0)
        return FisherProbes(exact=directions, info={"path": "formed", "k": k, "n_probes": 0})


@pytest.fixture
def mine():
    register_estimator(ShareEstimator)
    yield ShareEstimator
    ESTIMATORS.pop(ShareEstimator.name, None)


@pytest.fixture(scope="module")
def llama64():
    return make_model("llama", torch.float64)


# -- the scope -------------------------------------------------------------------------
def test_an_estimator_from_outside_is_a_choice_of_the_scope_with_its_option(mine, llama64):
    assert list(ESTIMATORS)[-1] == "mine"
    assert "alpha" in FisherScope.option_names() and issubclass(FisherScope.Options, FisherOptions)
    scope = FisherScope(llama64)
    ids = bos_prompt()
    half = scope.attribute(ids, estimator="mine", alpha=0.5)
    k = scope.last_info["k"]
    assert 1 <= k < 16 and scope.last_info["passes"] == k
    # the same directions as the top-k truncation: the same scores
    torch.testing.assert_close(half, scope.attribute(ids, estimator="eig", k=k, path="formed"), rtol=1e-12, atol=0)
    # alpha = 1 keeps every direction with mass: the exact scores
    torch.testing.assert_close(scope.attribute(ids, estimator="mine", alpha=1.0), scope.attribute(ids, estimator="exact"),
                               rtol=1e-9, atol=1e-12)
    _, error = scope.attribute(ids, estimator="mine", alpha=0.5, return_error=True)
    assert torch.isnan(error[ids != ids[0, 0]]).all()  # biased: no error estimate
    assert FisherScope.backward_passes(FisherScope.make_options(estimator="mine"), 16) == 16
    settings = FisherScope.settings(FisherScope.make_options(estimator="mine", alpha=0.5))
    assert settings["alpha"] == 0.5 and list(settings.values()) == ["mine", 0.5]  # the estimator's name, its option
    with pytest.raises(TypeError, match="the eig estimator takes no option alpha"):
        scope.attribute(ids, estimator="eig", alpha=0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        scope.attribute(ids, estimator="mine", alpha=2.0)


def test_the_options_class_follows_the_table(mine):
    option = next(f for f in dataclasses.fields(FisherScope.Options) if f.name == "alpha")
    assert option.default is None and option.metadata["help"].startswith("mine: share of tr F kept exactly")
    assert "mine" in next(f for f in dataclasses.fields(FisherScope.Options) if f.name == "estimator").metadata["choices"]
    assert FisherScope.make_options(alpha=0.3).alpha == 0.3
    assert FisherScope.local_options(FisherScope.make_options(estimator="mine", alpha=0.3)).alpha == 0.3
    assert FisherScope.local_options(FisherScope.make_options(alpha=0.3)).alpha is None  # the default: exact
    ESTIMATORS.pop("mine")
    assert FisherScope.Options is FisherOptions  # gone with the estimator
    with pytest.raises(TypeError, match="alpha"):
        FisherScope.make_options(alpha=0.3)
    register_estimator(ShareEstimator)
    assert FisherScope.Options is FisherScope.Options  # made once per state of the table


# -- the command line, the datasets, Inseq ---------------------------------------------------
def test_the_command_line_has_the_estimator_and_its_option(mine):
    parser = build_parser()
    args = parser.parse_args(["attribute", "x", "--fisher-estimator", "mine", "--fisher-alpha", "0.5"])
    assert scope_settings_from_args(args) == {"fisher_estimator": "mine", "fisher_alpha": 0.5}
    with pytest.raises(SystemExit):
        parser.parse_args(["attribute", "x", "--fisher-alpha", "half"])


def test_dataset_settings_take_the_option(mine):
    settings = DatasetSettings(scopes="fisher", fisher_estimator="mine", fisher_alpha=0.5)
    assert settings.fisher_alpha == 0.5 and settings.fisher_estimator == "mine"
    assert settings.scope_settings == {"fisher_estimator": "mine", "fisher_alpha": 0.5}
    assert DatasetSettings().fisher_alpha is None  # the estimator's default
    with pytest.raises(TypeError, match="fisher_alpha"):
        DatasetSettings(fisher_alpha="half")


def test_inseq_takes_the_option(mine):
    pytest.importorskip("inseq")
    from captum_jscopes.integrations.inseq import inseq_method

    assert "alpha" in inseq_method(FisherScope).options()


# -- the built-in estimators' own options ---------------------------------------------------
def test_krylov_options_reach_the_scope_the_command_line_and_the_datasets(llama64):
    make = FisherScope.make_options
    assert FisherScope.estimator_of(make(sketch=3, block=2, rounds=3, head_mass=0.99, max_head=8)) == KrylovEstimator(
        sketch=3, block=2, rounds=3, head_mass=0.99, max_head=8)
    assert FisherScope.estimator_of(make(estimator="hutchinson", max_head=8)) == estimator("hutchinson", max_head=8)
    assert FisherScope.estimator_of(make()) == KrylovEstimator()  # None: the estimator's defaults
    with pytest.raises(TypeError, match="the deflated estimator takes no option sketch"):
        FisherScope.estimator_of(make(estimator="deflated", sketch=3))
    assert FisherScope.backward_passes(make(sketch=4, block=2, n_probes=4), 576) == 4 + (2 + 2 + 2) + 4  # sketch, VJPs and JVPs of 2 rounds, probes
    scope = FisherScope(llama64)
    scope.attribute(bos_prompt(), sketch=3, block=2, n_probes=4, path="formed")
    assert (scope.last_info["sketch"], scope.last_info["block"], scope.last_info["passes"]) == (3, 2, 3 + (2 + 2 + 2) + 4)
    args = build_parser().parse_args(["attribute", "x", "--fisher-sketch", "3", "--fisher-head-mass", "0.99"])
    assert scope_settings_from_args(args) == {"fisher_sketch": 3, "fisher_head_mass": 0.99}
    assert DatasetSettings(fisher_rounds=1).fisher_rounds == 1  # (rounds=3 leaves the default budget no probe: refused)


# -- registration -------------------------------------------------------------------------
def test_registration_refuses_what_would_not_work():
    before = dict(ESTIMATORS)

    @dataclass(frozen=True)
    class Seeded(ShareEstimator):
        name: ClassVar[str] = "seeded"
        seed: int = 0

    @dataclass(frozen=True)
    class Pathless(ShareEstimator):
        name: ClassVar[str] = "pathless"
        gradient_checkpointing: bool = False

    class Undecorated(ShareEstimator):
        name: ClassVar[str] = "undecorated"

    @dataclass(frozen=True)
    class NoProbes(ProbeEstimator):
        name: ClassVar[str] = "noprobes"

        def backward_passes(self, hidden_size, path="auto"):
            return 1

    @dataclass(frozen=True)
    class Nameless(ShareEstimator):
        name: ClassVar[str] = ""

    for cls, error, message in [
        (Seeded, ValueError, "may not be named seed \\(an argument of scores\\)"),
        (Pathless, ValueError, "may not be named gradient_checkpointing \\(an option of the Fisher Scope"),
        (Undecorated, TypeError, "@dataclass\\(frozen=True\\)"),
        (NoProbes, TypeError, "defines no _probes"),
        (Nameless, ValueError, "needs a name of its own"),
        (KrylovEstimator, ValueError, None),  # a name taken by another class is refused; the same class is not
        (int, TypeError, "FisherEstimator subclass"),
    ]:
        if message is None:
            register_estimator(KrylovEstimator)  # again: nothing changes

            @dataclass(frozen=True)
            class Other(ShareEstimator):
                name: ClassVar[str] = "krylov"

            with pytest.raises(error, match="registered already"):
                register_estimator(Other)
            continue
        with pytest.raises(error, match=message):
            register_estimator(cls)
    assert ESTIMATORS == before


# -- the path choice asks the estimator -------------------------------------------------------
def test_the_path_choice_asks_the_estimator():
    @dataclass(frozen=True)
    class Cheap(FisherEstimator):
        name: ClassVar[str] = "cheap"
        paths: ClassVar[tuple[str, ...]] = ("formed", "matrix_free")
        price: float = 1.0

        def backward_passes(self, hidden_size, path="auto"):
            return 1

        def path_cost(self, path, vocab, hidden_size):
            return self.price if path == "matrix_free" else super().path_cost(path, vocab, hidden_size)

        def scores(self, forward, **options):
            raise NotImplementedError

    small = forward_of(make_model("llama"), bos_prompt())  # V = 64, d = 16: forming F costs 106,496
    assert Cheap(price=1.0).choose_path(small) == "matrix_free"
    assert Cheap(price=math.inf).choose_path(small) == "formed"
    assert Cheap().choose_path(small, "formed") == "formed"
    with pytest.raises(ValueError, match="path 'split' does not apply to method 'cheap'"):
        Cheap().choose_path(small, "split")


# -- what linearity_check asks a scope, declared on the base class ----------------------------
def test_exact_directions_are_declared_on_every_scope(llama64):
    from captum_jscopes import SemanticScope
    from captum_jscopes.scopes.base import JacobianScope

    assert "exact_directions" in vars(JacobianScope)
    forward = forward_of(llama64, bos_prompt())
    with pytest.raises(NotImplementedError, match="SemanticScope defines no exact_directions") as raised:
        SemanticScope.exact_directions(forward)
    assert "\n" not in str(raised.value)
    directions = FisherScope.exact_directions(forward)
    torch.testing.assert_close(torch.einsum("ibpd,ibpe->bpde", directions, directions), fisher_matrix(forward),
                               rtol=1e-9, atol=1e-12)
