"""The command's words: errors name the flag the user typed (``--fisher-tol``, not
``tol=``), one exit-status convention (2 usage, 1 failure) in ``jscopes --help``,
``--fisher-tol`` saying the error it reached and its passes (terminal and JSON), the JSON's
``fisher_estimator`` key (``fisher_method`` files still load), raw ``output_tokens``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from helpers import save_checkpoint

from captum_jscopes.cli.attribute import run_info_line
from captum_jscopes.cli.main import EXIT_STATUS, build_parser, flag_words, main
from captum_jscopes.results.result import ScopeResult

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fisher-tol", "-1"], "--fisher-tol must be a relative error in (0, 1), e.g. 0.02, got -1.0"),
        (["--fisher-estimator", "eig", "--fisher-tol", "0.1"], "--fisher-tol needs an estimator that adds probes"),
        (["--fisher-k", "4"], "fisher scope: the krylov estimator takes no option --fisher-k (its options:"),
        (["--fisher-estimator", "eig", "--fisher-n-probes", "3"], "the eig estimator takes no option --fisher-n-probes"),
        (["--fisher-budget", "0"], "fisher scope: --fisher-budget must be"),
        (["--fisher-max-passes", "10"], "--fisher-max-passes bounds --fisher-tol"),
        (["--semantic-n-steps", "-3"], "--semantic-n-steps must be a positive int, got -3"),
    ],
)
def test_a_bad_scope_option_names_its_flag_and_is_a_usage_error(flags, message, model_dir, tmp_path, capsys):
    code, _, stderr = run(["attribute", PROMPT, "--model", model_dir, "--out", tmp_path / "out", *flags], capsys)
    assert code == 2, stderr
    assert stderr.startswith("jscopes: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "tol=" not in stderr and "fisher_" not in stderr and "n_probes=" not in stderr


def test_attribute_dataset_names_the_flag_before_the_model_loads(tmp_path, capsys):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"text": PROMPT}) + "\n")
    code, _, stderr = run(["attribute-dataset", source, "--model", tmp_path / "no-such-model", "--fisher-k", "4"],
                          capsys)
    assert code == 2 and "takes no option --fisher-k" in stderr and "does not exist" not in stderr, stderr


def test_dataset_settings_refuse_bad_scope_options_before_any_model():
    from captum_jscopes.runs.dataset import DatasetSettings

    with pytest.raises(ValueError, match="fisher scope: budget 48 leaves fewer than 2 probes"):
        DatasetSettings(fisher_rounds=3)
    with pytest.raises(ValueError, match="fisher scope: tol= needs an estimator that adds probes"):
        DatasetSettings(fisher_estimator="eig", fisher_tol=0.1)
    assert DatasetSettings(fisher_tol=0.02).fisher_tol == 0.02


def test_flag_words_leave_plain_words_and_options_not_given_alone():
    parser = argparse.ArgumentParser()
    from captum_jscopes.cli.scope_flags import add_scope_flags

    add_scope_flags(parser)
    args = parser.parse_args(["--fisher-estimator", "eig", "--fisher-k", "2", "--rules", "lrp"])
    text, named = flag_words("the eig estimator takes no option k; rules='lrp' found no module", args)
    assert named and text == "the eig estimator takes no option --fisher-k; --rules 'lrp' found no module"
    assert flag_words("top-k tokens of a kind", args) == ("top-k tokens of a kind", False)
    assert flag_words("max_passes= bounds tol=: give tol too", args)[0] == \
        "--fisher-max-passes bounds --fisher-tol: give tol too"  # written name=: the flag even when not given
    assert flag_words("fisher_k=3 is out of range", args)[0] == "--fisher-k 3 is out of range"
    nothing = parser.parse_args([])
    assert flag_words("tol must be in (0, 1)", nothing) == ("tol must be in (0, 1)", False)


def test_the_exit_statuses_are_in_the_help(capsys):
    text = build_parser().format_help()
    assert "exit status:" in text
    for status, meaning in EXIT_STATUS:
        assert f"  {status:<5}{meaning.split()[0]}" in text
    assert [status for status, _ in EXIT_STATUS] == [0, 1, 2, 130]


def test_a_model_that_cannot_load_is_a_failure(model_dir, tmp_path, capsys):
    code, _, stderr = run(["attribute", PROMPT, "--model", "captum-jscopes-no-such/model-anywhere", "--out",
                           tmp_path / "out"], capsys)  # a hub name that cannot load: a failure
    assert code == 1, stderr


def test_fisher_tol_says_and_stores_the_error_it_reached(model_dir, tmp_path, capsys):
    code, stdout, stderr = run(["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "fisher",
                                "--fisher-tol", "0.05"], capsys)
    assert code == 0, stderr
    saved = ScopeResult.load_json(tmp_path / "fisher.json")
    info = saved.metadata["run_info"]
    assert saved.metadata["settings"]["fisher_estimator"] == "krylov" and saved.metadata["settings"]["tol"] == 0.05
    assert "fisher_method" not in saved.metadata["settings"]
    assert isinstance(info["passes"], int) and info["passes"] > 0
    # the tiny model's F has rank 16: every direction is computed exactly, no error left
    assert f"  estimated error 0.00% of the map (--fisher-tol 0.05), {info['passes']} passes" in stdout


def test_run_info_line_of_an_estimate():
    result = ScopeResult(input_tokens=["a"], output_tokens=["b"], seq_attr=[1.0], metadata={
        "scope": "fisher", "settings": {"tol": 0.02}, "run_info": {"passes": 96, "rel_error": 0.0183, "tol": 0.02}})
    assert run_info_line(result) == "  estimated error 1.83% of the map (--fisher-tol 0.02), 96 passes"
    plain = ScopeResult(input_tokens=["a"], output_tokens=["b"], seq_attr=[1.0], metadata={"scope": "semantic"})
    assert run_info_line(plain) is None


def test_files_with_the_former_fisher_method_key_load_under_fisher_estimator(tmp_path):
    result = ScopeResult(input_tokens=["a", "Ġb"], output_tokens=["ĠParis"], seq_attr=[1.0, 2.0],
                         metadata={"scope": "fisher", "settings": {"chat": False, "fisher_method": "eig", "k": 2}})
    data = result.to_dict()
    loaded = ScopeResult.from_dict(data)
    assert loaded.metadata["settings"] == {"chat": False, "fisher_estimator": "eig", "k": 2}  # in its place
    assert data["metadata"]["settings"]["fisher_method"] == "eig"  # the dict read is not changed
    both = {**data, "metadata": {"settings": {"fisher_method": "eig", "fisher_estimator": "exact"}}}
    assert ScopeResult.from_dict(both).metadata["settings"] == {"fisher_estimator": "exact"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = ScopeResult.load_json(path)
    assert old.metadata["settings"]["fisher_estimator"] == "eig"
    assert old.output_tokens == ["ĠParis"] and old.output_display == [" Paris"]  # raw piece, readable text
