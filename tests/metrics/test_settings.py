"""AblationSettings: the one object the metrics carry, and its keyword overrides."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import assert_unchanged, snapshot
from test_metrics import prompt, random_scores, tiny_llama

from captum_jscopes import metrics
from captum_jscopes.metrics import AblationSettings


def test_defaults_are_the_papers_protocol():
    settings = AblationSettings()
    assert (settings.mode, settings.include_special, settings.replacement_id, settings.batch_size) == (
        "zero", False, None, 16)


def test_of_applies_overrides_and_keeps_the_rest():
    base = AblationSettings(mode="token", batch_size=4)
    merged = AblationSettings.of(base, batch_size=2)
    assert (merged.mode, merged.batch_size) == ("token", 2)
    assert base.batch_size == 4  # frozen: the original is untouched
    assert AblationSettings.of(base) is base
    assert AblationSettings.of() == AblationSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.mode = "zero"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mode": "blur"}, ValueError, "unknown ablation mode"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"batch_size": True}, ValueError, "batch_size must be a positive int"),
        ({"include_special": "yes"}, TypeError, "include_special must be a bool"),
        ({"modes": "zero"}, TypeError, "unknown setting\\(s\\) \\[.modes.\\]"),
    ],
)
def test_bad_settings_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        AblationSettings.of(**kwargs)


def test_settings_must_be_an_ablation_settings():
    with pytest.raises(TypeError, match="settings must be of type AblationSettings"):
        AblationSettings.of({"mode": "zero"})


@pytest.mark.parametrize("mode", metrics.ABLATION_MODES)
def test_settings_object_and_keywords_give_the_same_metrics(mode):
    model, ids, scores = tiny_llama(), prompt(), random_scores(20)
    settings = AblationSettings(mode=mode, batch_size=3)
    by_object = metrics.evaluate(model, ids, scores, metrics=metrics.METRICS, settings=settings)
    by_keyword = metrics.evaluate(model, ids, scores, metrics=metrics.METRICS, mode=mode, batch_size=3)
    assert by_object.keys() == by_keyword.keys()
    for name in by_object:
        assert by_object[name] == by_keyword[name], name
    # a keyword overrides the object's field
    zero = metrics.aopc(model, ids, scores, settings=settings, mode="zero").aopc
    assert zero == pytest.approx(metrics.aopc(model, ids, scores).aopc, abs=1e-12)


def test_a_bad_setting_fails_before_the_model_runs_and_changes_nothing():
    model = tiny_llama().train()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"unknown setting\(s\)"):
        metrics.leave_one_out(model, prompt(), batchsize=2)
    assert_unchanged(model, before)
    assert model.training
