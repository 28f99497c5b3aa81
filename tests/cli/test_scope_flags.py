"""Every scope option reaches every surface with no code naming it
(captum_jscopes/cli/scope_flags.py, runs/explain.py's settings, runs/dataset.py's
DatasetSettings, integrations/inseq.py): the flags made from each scope's
Options, the shared --rules / --reduce, the deprecated aliases, a scope
registered from outside the package, and one forward per rules value."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import make_model, make_tokenizer

from captum_jscopes import ScopeOptions, ScopeResult, SemanticScope, TemperatureScope, load_model
from captum_jscopes.cli.main import build_parser, main
from captum_jscopes.cli.scope_flags import add_scope_flags, scope_settings_from_args
from captum_jscopes.core import forward as forward_module
from captum_jscopes.runs.dataset import DatasetSettings
from captum_jscopes.runs.explain import explain, explain_scopes, resolve_scope_settings
from captum_jscopes.scopes.registry import SCOPES, register_scope

PROMPT = "the cat sat on the"
NAME = "alphatest"


@dataclass(frozen=True)
class AlphaOptions(ScopeOptions):
    alpha: float = field(default=1.0, metadata={"help": "multiplies the Temperature map. Default: 1.0"})


class AlphaScope(TemperatureScope):
    """The Temperature Scope times ``alpha``: a scope defined outside the package."""

    name = NAME
    Options = AlphaOptions

    def _scores(self, run, targets, options, *, progress=False):
        scores, error = super()._scores(run, targets, options, progress=progress)
        return scores * options.alpha, error


@pytest.fixture
def alpha_scope():
    """AlphaScope registered for one test, and unregistered after it."""
    register_scope(AlphaScope)
    try:
        yield AlphaScope
    finally:
        SCOPES.pop(NAME, None)
        try:
            from captum_jscopes.integrations import inseq as inseq_methods
        except ImportError:
            return
        inseq_methods._METHODS.pop(AlphaScope, None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny Llama and the word-level test tokenizer, saved as a checkpoint folder (``--model``)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    for part in (make_model("llama"), make_tokenizer()):
        part.save_pretrained(folder)
    return folder


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["attribute", PROMPT, *argv])


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- the flags


def test_every_option_of_every_scope_has_a_flag_with_its_type_choices_and_default():
    args = parse()
    assert scope_settings_from_args(args) == {}  # nothing given: every scope's defaults
    assert args.fisher_estimator == "krylov" and args.fisher_tol is None and args.semantic_rules == "gradient"
    values = scope_settings_from_args(parse("--fisher-k", "auto", "--fisher-tol", "0.02", "--fisher-seed", "3",
                                            "--fisher-gradient-checkpointing", "--semantic-n-steps", "4",
                                            "--fisher-reduce", "input"))
    assert values == {"fisher_k": "auto", "fisher_tol": 0.02, "fisher_seed": 3, "fisher_gradient_checkpointing": True,
                      "semantic_n_steps": 4, "fisher_reduce": "input"}
    assert scope_settings_from_args(parse("--fisher-k", "4"))["fisher_k"] == 4  # Union[int, str, None]: int first
    for bad in (["--fisher-tol", "x"], ["--fisher-estimator", "fast"], ["--semantic-rules", "lrp2"],
                ["--fisher-seed", "1.5"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_shared_rules_and_reduce_set_every_scope_and_a_scope_flag_wins():
    values = scope_settings_from_args(parse("--rules", "lrp", "--reduce", "input", "--fisher-rules", "gradient"))
    assert {key: values[key] for key in values if key.endswith("_rules")} == {
        "semantic_rules": "lrp", "temperature_rules": "lrp", "fisher_rules": "gradient"}
    assert all(values[f"{name}_reduce"] == "input" for name in SCOPES)
    # the scope flag wins whatever the order
    values = scope_settings_from_args(parse("--semantic-rules", "gradient", "--rules", "lrp"))
    assert values["semantic_rules"] == "gradient" and values["temperature_rules"] == "lrp"
    # a value equal to the default is no setting once resolved
    assert resolve_scope_settings(values) == {"temperature_rules": "lrp", "fisher_rules": "lrp"}


def test_a_deprecated_option_name_is_a_hidden_alias_with_a_note(capsys):
    notes = []
    values = scope_settings_from_args(parse("--fisher-method", "eig"), note=notes.append)
    assert values == {"fisher_estimator": "eig"}
    assert notes == ["--fisher-method is deprecated; use --fisher-estimator"]
    with pytest.raises(SystemExit):
        parse("--fisher-method", "fast")  # the choices of the option it stands for
    assert main(["attribute", "--help"]) == 0
    usage = capsys.readouterr().out
    assert "--fisher-estimator" in usage and "--fisher-method" not in usage
    assert "--rules" in usage and "--reduce" in usage and "--temperature-reduce" in usage


def test_flags_of_a_parser_of_ones_own():
    parser = argparse.ArgumentParser()
    add_scope_flags(parser)
    args = parser.parse_args(["--reduce", "input", "--no-fisher-gradient-checkpointing"])
    assert scope_settings_from_args(args) == {
        "semantic_reduce": "input", "temperature_reduce": "input", "fisher_reduce": "input",
        "fisher_gradient_checkpointing": False}


# ----------------------------------------------------------------------------- a scope registered from outside


def test_a_registered_scope_gets_a_flag_a_dataset_setting_and_an_inseq_argument(alpha_scope, capsys):
    # the command line
    assert scope_settings_from_args(parse("--alphatest-alpha", "2.5")) == {"alphatest_alpha": 2.5}
    assert scope_settings_from_args(parse("--rules", "lrp"))["alphatest_rules"] == "lrp"
    assert main(["attribute", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "--alphatest-alpha ALPHA multiplies the Temperature map" in usage
    assert main(["attribute-dataset", "--help"]) == 0
    assert "--alphatest-alpha" in capsys.readouterr().out
    # the dataset settings and run.json
    settings = DatasetSettings(scopes=(NAME,), alphatest_alpha=2.0)
    assert settings.alphatest_alpha == 2.0 and DatasetSettings().alphatest_alpha == 1.0
    assert settings.to_dict()["alphatest_alpha"] == 2.0
    assert DatasetSettings.of(settings, alphatest_alpha=1.0).to_dict() == DatasetSettings(scopes=(NAME,)).to_dict()
    with pytest.raises(TypeError, match="alphatest_alpha must be float"):
        DatasetSettings(alphatest_alpha="big")
    # Inseq
    inseq_methods = pytest.importorskip("captum_jscopes.integrations.inseq")
    method = inseq_methods.inseq_method(alpha_scope)
    assert method.method_name == "alphatest_scope"
    assert {"alpha", "rules", "reduce"} <= set(method.options())


def test_a_registered_scopes_option_reaches_its_scores(alpha_scope, model_dir, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", model_dir, "--scope", NAME]
    code, _, stderr = run([*argv, "--out", tmp_path / "one"], capsys)
    assert code == 0, stderr
    code, _, stderr = run([*argv, "--out", tmp_path / "three", "--alphatest-alpha", "3"], capsys)
    assert code == 0, stderr
    one = ScopeResult.load_json(tmp_path / "one" / f"{NAME}.json")
    three = ScopeResult.load_json(tmp_path / "three" / f"{NAME}.json")
    torch.testing.assert_close(three.token_attr, 3 * one.token_attr)
    assert three.metadata["settings"]["alpha"] == 3.0


def test_a_registered_scopes_option_through_inseq(alpha_scope):
    inseq = pytest.importorskip("inseq")
    pytest.importorskip("captum_jscopes.integrations.inseq")
    model, tokenizer = make_model("llama"), make_tokenizer()
    wrapped = inseq.load_model(model, "alphatest_scope", tokenizer=tokenizer, device="cpu")
    out = wrapped.attribute(PROMPT, generated_texts=PROMPT + " mat", show_progress=False, alpha=2.0,
                            attribution_args={"reduce": "input"})
    scores = out.sequence_attributions[0].target_attributions[:, 0]
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    alone = TemperatureScope(model, tokenizer).attribute(ids, reduce="input")[0]
    torch.testing.assert_close(scores[: alone.numel()], 2 * alone.float(), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- rules and reduce end to end


def test_rules_and_reduce_flags_give_the_scopes_lrp_input_scores(model_dir, tmp_path, capsys):
    code, _, stderr = run(["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic",
                           "--rules", "lrp", "--reduce", "input"], capsys)
    assert code == 0, stderr
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    model, tokenizer = load_model(str(model_dir))
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    predicted = int(saved.metadata["prediction"]["id"])
    alone = SemanticScope(model, tokenizer).attribute(ids, target=predicted, rules="lrp", reduce="input")[0, 1:]
    torch.testing.assert_close(saved.token_attr[0], alone, rtol=1e-5, atol=1e-7)
    plain = SemanticScope(model, tokenizer).attribute(ids, target=predicted)[0, 1:]
    assert not torch.allclose(alone, plain)
    assert saved.metadata["settings"]["rules"] == "lrp" and saved.metadata["settings"]["reduce"] == "input"


def test_one_forward_per_rules_value(monkeypatch):
    model, tokenizer = make_model("llama"), make_tokenizer()
    scopes = ("semantic", "temperature", "fisher")
    settings = {"temperature_rules": "lrp", "fisher_estimator": "exact"}
    singles = [explain(model, tokenizer, PROMPT, name, " mat", settings=settings) for name in scopes]
    calls = []
    real = forward_module.run_forward

    def counted(*args, **kwargs):
        calls.append(kwargs.get("rules", "gradient"))
        return real(*args, **kwargs)

    monkeypatch.setattr("captum_jscopes.runs.explain.run_forward", counted)
    monkeypatch.setattr("captum_jscopes.scopes.base.run_forward", counted)
    together = list(explain_scopes(model, tokenizer, PROMPT, scopes, " mat", settings=settings))
    assert calls == ["gradient", "lrp"]  # semantic and fisher share the gradient forward
    for single, result in zip(singles, together):
        torch.testing.assert_close(result.token_attr, single.token_attr, rtol=1e-6, atol=1e-9)
        assert result.metadata["prediction"] == pytest.approx(single.metadata["prediction"])
    assert together[1].metadata["settings"]["rules"] == "lrp"
    assert together[0].metadata["settings"]["rules"] == "gradient"


def test_explain_takes_any_scopes_settings_by_keyword():
    model, tokenizer = make_model("llama"), make_tokenizer()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    result = explain(model, tokenizer, PROMPT, "temperature", temperature_reduce="input")
    alone = TemperatureScope(model, tokenizer).attribute(ids, reduce="input")[0, 1:]
    torch.testing.assert_close(result.token_attr[0], alone, rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="unknown setting 'temperature_alpha'"):
        explain(model, tokenizer, PROMPT, "temperature", temperature_alpha=2.0)
    with pytest.raises(ValueError, match="temperature_rules must be one of gradient, lrp"):
        explain(model, tokenizer, PROMPT, "temperature", temperature_rules="integrated")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation for today's names
        explain(model, tokenizer, PROMPT, "fisher", fisher_estimator="eig")
