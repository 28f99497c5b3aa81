"""The "when to trust a map" benchmark end to end on a tiny model, and its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import BOS, make_model, make_tokenizer

from captum_jscopes.bench import trust, trust_report


@pytest.fixture
def tiny_model_dir(tmp_path):
    folder = tmp_path / "tiny"
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def prompts_file(tmp_path):
    texts = [
        "the cat sat on the mat and the dog ran to the red house",
        "Tom liked the food . he went home to Paris",
        "she was in the big city of Paris and the capital of France is Paris",
        "one two three four five six seven eight nine ten one two",
    ]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"text": t} for t in texts]))
    return path


def test_flip_bos_removes_or_prepends_it():
    with_bos = torch.tensor([[BOS, 7, 8, 9]])
    assert trust.flip_bos(with_bos, BOS).tolist() == [[7, 8, 9]]
    assert trust.flip_bos(torch.tensor([[7, 8]]), BOS).tolist() == [[BOS, 7, 8]]
    assert trust.flip_bos(torch.tensor([[7, 8]]), None) is None


def test_shuffled_copy_keeps_the_tokens_the_specials_and_the_explained_token():
    ids = torch.tensor([[BOS] + list(range(10, 30))])
    special = ids == BOS
    copy = trust.shuffled_copy(ids, special, seed=3)
    assert copy[0, 0] == BOS and copy[0, -1] == ids[0, -1]
    assert sorted(copy[0].tolist()) == sorted(ids[0].tolist()) and not torch.equal(copy, ids)
    assert torch.equal(copy, trust.shuffled_copy(ids, special, seed=3))  # seeded


def test_position_profile_recovers_a_planted_position_effect_and_divides_it_out():
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(40):
        scores = rng.uniform(0.5, 1.5, size=30)
        scores[0] *= 6.0  # what position 0 earns by itself
        scores[1] *= 2.0
        maps.append(scores)
    profile = trust_report.position_profile(maps)
    assert profile[0] == pytest.approx(6.0, rel=0.25) and profile[1] == pytest.approx(2.0, rel=0.25)
    assert all(abs(p - 1.0) < 0.25 for p in profile[2:])
    fixed = trust_report.corrected(maps[0], profile)
    assert fixed[0] == pytest.approx(maps[0][0] / profile[0]) and np.array_equal(fixed[8:], maps[0][8:])


@pytest.mark.slow  # the whole trust benchmark end to end
def test_benchmark_writes_records_and_a_report_with_every_part(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "4", "--radius-tokens", "3",
            "--fisher-radius-n", "1", "--out", str(out)]
    assert trust.main(argv) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4
    first = records[0]["variants"]
    assert set(first) == {"as_tokenised", "bos_flipped"}
    assert first["as_tokenised"]["has_bos"] and not first["bos_flipped"]["has_bos"]  # the tiny tokenizer adds a BOS
    plain = first["as_tokenised"]
    n = plain["n_tokens"]
    for scope in trust.SCOPE_CLASSES:
        assert len(plain["maps"][scope]) == n and plain["maps"][scope][0] > 0  # the BOS is scored
    assert set(plain["radii"]) == {"semantic", "temperature", "fisher"}  # Fisher on the first prompt only
    assert "fisher" not in records[1]["variants"]["as_tokenised"]["radii"]
    assert len(plain["radii"]["semantic"]["tokens"]) == 3
    assert all(kl >= 0 for kl in plain["loo_kl"]["mask"]) and plain["loo_kl"]["zero"][0] > 0
    report = (out / "trust.md").read_text()
    for heading in ("### Sinks", "### Position-profile correction", "### Validity radii", "bos flipped"):
        assert heading in report
    summary = json.loads((out / "trust.json").read_text())
    sinks = summary["variants"]["as_tokenised"]["sinks"]["semantic"]
    assert set(sinks) == {"special", "first_1", "first_3"}
    assert 0 < sinks["special"]["map"] < 1
    assert (out / "sinks.png").stat().st_size > 0
    # the report rebuilds from the records alone
    (out / "trust.md").unlink()
    assert trust.main(["--report-only", "--out", str(out)]) == 0
    assert (out / "trust.md").read_text() == report


def test_radii_on_the_tokenised_variant_only_leave_the_flipped_one_without(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "1", "--radius-tokens", "2",
            "--fisher-radius-n", "0", "--radii-variants", "as_tokenised", "--out", str(out)]
    assert trust.main(argv) == 0
    variants = json.loads((out / "records.jsonl").read_text().splitlines()[0])["variants"]
    assert set(variants["as_tokenised"]["radii"]) == {"semantic", "temperature"}
    assert variants["bos_flipped"]["radii"] == {}
    assert json.loads((out / "run.json").read_text())["radii_variants"] == "as_tokenised"
    summary = json.loads((out / "trust.json").read_text())["variants"]
    assert summary["as_tokenised"]["radii"] and not summary["bos_flipped"]["radii"]


def test_bad_arguments_are_one_line_errors(capsys):
    assert trust.main(["--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert trust.main(["--tol", "1.5"]) == 2
    assert "--tol must be in (0, 1)" in capsys.readouterr().err
