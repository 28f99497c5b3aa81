"""Serialisation of series as text, per-value scores, and the seeded series."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from captum_jscopes.models import load_tokenizer
from captum_jscopes.analysis.timeseries import (
    Scaling,
    offsets_by_decoding,
    brownian_motion,
    deserialize,
    logistic_map,
    lorenz,
    serialize,
    token_offsets,
    value_scores,
)

GENERATORS = {
    "lorenz": lambda seed: lorenz(60, seed=seed),
    "logistic": lambda seed: logistic_map(60, seed=seed),
    "brownian": lambda seed: brownian_motion(60, seed=seed),
}


# ----------------------------------------------------------------------------- serialisation


def test_serialize_exact_format():
    text, scaling = serialize([0.0, 0.5, 1.0])
    assert text == "15,50,85,"
    assert scaling == Scaling(min=0.0, max=1.0, low=0.15, high=0.85)


@pytest.mark.parametrize("name", GENERATORS)
def test_serialize_format_on_series(name):
    values = GENERATORS[name](0)
    text, _ = serialize(values)
    assert re.fullmatch(r"([0-9]{2},)+", text), text[:40]
    ints = [int(v) for v in text.split(",")[:-1]]
    assert len(ints) == len(values)
    assert min(ints) == 15 and max(ints) == 85
    assert ints[int(np.argmin(values))] == 15 and ints[int(np.argmax(values))] == 85


@pytest.mark.parametrize("name", GENERATORS)
def test_round_trip_within_quantisation_error(name):
    values = GENERATORS[name](1)
    text, scaling = serialize(values)
    back = deserialize(text, scaling)
    step = (values.max() - values.min()) / (0.85 - 0.15) / 100  # one written unit, in series units
    assert back.shape == values.shape
    assert np.max(np.abs(back - values)) <= 0.5 * step + 1e-12
    assert np.max(np.abs(back - values)) > 0  # it is quantised, not a copy


def test_custom_range_and_constant_series():
    text, scaling = serialize([2.0, 4.0], low=0.2, high=0.6)
    assert text == "20,60,"
    np.testing.assert_allclose(deserialize(text, scaling), [2.0, 4.0])
    text, scaling = serialize([3.0, 3.0, 3.0])
    assert text == "50,50,50,"
    np.testing.assert_allclose(deserialize(text, scaling), [3.0, 3.0, 3.0])


def test_deserialize_ignores_incomplete_tail():
    np.testing.assert_array_equal(deserialize("15,42,8"), [15.0, 42.0])
    np.testing.assert_array_equal(deserialize("15,42,"), [15.0, 42.0])
    assert deserialize("").shape == (0,)
    assert deserialize("7").shape == (0,)


@pytest.mark.parametrize(
    "call",
    [
        lambda: serialize([]),
        lambda: serialize([[1.0, 2.0]]),
        lambda: serialize([1.0, float("nan")]),
        lambda: serialize([1.0, 2.0], low=0.05),
        lambda: serialize([1.0, 2.0], low=0.5, high=0.4),
        lambda: deserialize("15,x2,"),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_deserialize_rejects_non_text():
    with pytest.raises(TypeError):
        deserialize(b"15,")


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_deterministic_per_seed(name):
    make = GENERATORS[name]
    a, b, c = make(0), make(0), make(1)
    assert isinstance(a, np.ndarray) and a.shape == (60,) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_logistic_map_stays_in_unit_interval_and_is_chaotic():
    x = logistic_map(2000, seed=3)
    assert np.all((x > 0) & (x < 1))
    a = logistic_map(80, x0=0.3)
    b = logistic_map(80, x0=0.3 + 1e-10)
    assert abs(a[1] - b[1]) < 1e-9
    assert np.max(np.abs(a[40:] - b[40:])) > 0.1  # the 1e-10 gap grew to order one
    np.testing.assert_allclose(a[1], 3.8 * 0.3 * 0.7)


def test_lorenz_is_on_the_attractor_and_chaotic():
    x = lorenz(2000, seed=0)
    assert -25 < x.min() < -5 and 5 < x.max() < 25  # visits both wings
    z = lorenz(500, seed=0, component=2)
    assert 0 < z.min() and z.max() < 55
    # Halving the step gives the same trajectory (RK4 error ~dt^4) from the same seeded start.
    coarse = lorenz(100, seed=5, burn_in=0)
    fine = lorenz(200, seed=5, burn_in=0, dt=0.005)[1::2]
    assert np.max(np.abs(coarse - fine)) < 1e-4
    assert np.max(np.abs(coarse - lorenz(100, seed=6, burn_in=0))) > 1.0


def test_brownian_motion_increments():
    x = brownian_motion(20000, seed=0, sigma=2.0)
    assert x[0] == 0.0
    assert np.std(np.diff(x)) == pytest.approx(2.0, rel=0.03)
    assert abs(np.mean(np.diff(x))) < 0.1


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: lorenz(0), ValueError),
        (lambda: lorenz(10, component=3), ValueError),
        (lambda: logistic_map(2.5), TypeError),
        (lambda: logistic_map(10, x0=1.0), ValueError),
        (lambda: logistic_map(10, r=4.5), ValueError),
        (lambda: brownian_motion(True), TypeError),
        (lambda: brownian_motion(10, sigma=0), ValueError),
    ],
)
def test_generator_bad_arguments(call, error):
    with pytest.raises(error):
        call()


# ----------------------------------------------------------------------------- value_scores, hand-built


def test_value_scores_hand_built_offsets():
    text = "15,42,85,"
    # BOS | "15" | ",4" (straddles the comma) | "2" | "," | "85,"
    offsets = [(0, 0), (0, 2), (2, 4), (4, 5), (5, 6), (6, 9)]
    scores = np.array([10.0, 1.0, 2.0, 3.0, 100.0, 4.0])
    out = value_scores(text, scores, offsets=offsets)
    np.testing.assert_allclose(out, [1.0, 5.0, 4.0])
    assert out.sum() == pytest.approx(scores.sum() - 10.0 - 100.0)  # all but BOS and the comma


def test_value_scores_token_across_two_values_is_split():
    text = "15,42,"
    offsets = [(0, 1), (1, 4), (4, 6)]  # "1" | "5,4" | "2,"
    out = value_scores(text, torch.tensor([1.0, 6.0, 2.0]), offsets=offsets)
    np.testing.assert_allclose(out, [4.0, 5.0])
    assert out.sum() == pytest.approx(9.0)


def test_value_scores_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        value_scores("15,", [1.0])
    with pytest.raises(ValueError, match="1-D"):
        value_scores("15,", [[1.0]], offsets=[(0, 2)])
    with pytest.raises(ValueError, match="token scores"):
        value_scores("15,", [1.0, 2.0], offsets=[(0, 3)])


# ----------------------------------------------------------------------------- value_scores, real tokenizer


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    # An empty cache folder: the tokenizer is read straight from the packaged GGUF.
    return load_tokenizer(cache_dir=tmp_path_factory.mktemp("models"))


def _expected_by_walking_tokens(tokens, scores):
    """Independent reference: digits accumulate into the current value, a comma
    token closes it (SmolLM2 writes every digit and comma as its own token)."""
    values, current = [], 0.0
    for token, score in zip(tokens, scores):
        if token == ",":
            values.append(current)
            current = 0.0
        else:
            assert token.isdigit(), token
            current += score
    return np.array(values)


@pytest.mark.slow
def test_value_scores_with_default_tokenizer(smollm2_tokenizer):
    text, _ = serialize(lorenz(40, seed=2))
    ids = smollm2_tokenizer(text)["input_ids"]
    scores = torch.rand(len(ids), generator=torch.Generator().manual_seed(0))
    out = value_scores(text, scores, smollm2_tokenizer)
    expected = _expected_by_walking_tokens(smollm2_tokenizer.convert_ids_to_tokens(ids), scores.tolist())
    assert out.shape == (40,)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="token scores"):
        value_scores(text, scores[:-1], smollm2_tokenizer)


@pytest.mark.slow
def test_decoding_fallback_matches_offset_mapping(smollm2_tokenizer):
    text, _ = serialize(brownian_motion(25, seed=4))
    ids = smollm2_tokenizer(text)["input_ids"]
    assert offsets_by_decoding(text, ids, smollm2_tokenizer) == token_offsets(text, smollm2_tokenizer)
