"""sink_report: a map's share of the early positions against their leave-one-out share."""

from __future__ import annotations

import pytest
import torch
from helpers import BOS, assert_unchanged, make_model, make_tokenizer, random_ids, snapshot

from captum_jscopes import SemanticScope
from captum_jscopes.metrics import ablated_log_probs, leave_one_out, sink_report


@pytest.fixture(scope="module")
def model():
    return make_model("llama", dtype=torch.float64)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def ids():
    return torch.cat([torch.tensor([BOS]), random_ids(1, 11, seed=3)[0]])


def test_excess_is_zero_when_the_scores_are_the_leave_one_out_kl(model, tokenizer, ids):
    for mode in ("zero", "mask"):
        kl = leave_one_out(model, ids, mode=mode, include_special=True, tokenizer=tokenizer).kl
        report = sink_report(model, ids, kl, k=2, modes=(mode,), tokenizer=tokenizer)
        for row in report.rows:
            assert row.excess == pytest.approx(0.0, abs=1e-12)
            assert row.loo_share > 0


def test_shares_are_computed_over_the_groups_by_hand(model, tokenizer, ids):
    scores = SemanticScope(model, tokenizer, exclude_special_tokens=False).attribute(ids)[0]
    report = sink_report(model, ids, scores, k=3, tokenizer=tokenizer)
    special, first = report.row("special", "zero"), report.row("first_k", "zero")
    assert special.positions == (0,) and first.positions == (1, 2, 3)
    assert special.score_share == pytest.approx(float(scores[0] / scores.sum()))
    assert first.score_share == pytest.approx(float(scores[1:4].sum() / scores.sum()))
    kl = report.loo_kl["zero"]
    assert first.loo_share == pytest.approx(float(kl[1:4].sum() / kl.sum()))
    assert special.uniform_share == pytest.approx(1 / 12) and first.uniform_share == pytest.approx(3 / 12)
    # the joint ablation is the group ablated at once, under its mode
    for row in (special, first, report.row("first_k", "mask")):
        ablate = torch.zeros(ids.shape[0], dtype=torch.bool)
        ablate[list(row.positions)] = True
        intact = ablated_log_probs(model, ids, torch.zeros_like(ablate), mode=row.mode, include_special=True)
        joint = ablated_log_probs(model, ids, ablate, mode=row.mode, include_special=True)
        assert row.joint_kl == pytest.approx(float((intact.exp() * (intact - joint)).sum()), rel=1e-9, abs=1e-15)
        assert row.prediction_changed == bool(joint.argmax() != intact.argmax())
    assert [r.group for r in report.rows] == ["special", "special", "first_k", "first_k"]
    assert "| special | zero | 0 |" in report.table()


def test_a_map_with_bos_excluded_over_credits_nothing_there(model, tokenizer, ids):
    scores = SemanticScope(model, tokenizer).attribute(ids)[0]  # BOS scored 0
    row = sink_report(model, ids, scores, tokenizer=tokenizer).row("special", "zero")
    assert row.score_share == 0.0 and row.excess < 0  # the BOS does carry some of the prediction


def test_a_prompt_without_special_tokens_has_an_empty_group(model, tokenizer):
    ids = random_ids(1, 8, seed=1)[0]
    scores = torch.rand(8, dtype=torch.float64)
    report = sink_report(model, ids, scores, tokenizer=tokenizer, modes=("zero",))
    row = report.row("special", "zero")
    assert row.positions == () and row.score_share == 0.0 and row.joint_kl == 0.0 and not row.prediction_changed
    assert report.n_tokens == 8


def test_an_inner_position_counts_only_tokens_up_to_it(model, tokenizer, ids):
    scores = torch.ones(ids.shape[0], dtype=torch.float64)
    row = sink_report(model, ids, scores, position=5, k=1, tokenizer=tokenizer, modes=("zero",)).row("first_k", "zero")
    assert row.score_share == pytest.approx(1 / 6) and row.uniform_share == pytest.approx(1 / 6)


def test_bad_input_is_refused_and_the_model_is_unchanged(model, tokenizer, ids):
    model.train()
    before = snapshot(model)
    scores = torch.ones(ids.shape[0])
    with pytest.raises(ValueError, match="non-negative"):
        sink_report(model, ids, -scores, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="modes"):
        sink_report(model, ids, scores, modes=("zero", "nope"))
    with pytest.raises(ValueError, match="modes"):
        sink_report(model, ids, scores, modes=())
    with pytest.raises(ValueError, match="k must"):
        sink_report(model, ids, scores, k=0)
    with pytest.raises(TypeError, match="sets mode"):
        sink_report(model, ids, scores, mode="zero")
    with pytest.raises(ValueError):
        sink_report(model, ids, scores[:-1])
    sink_report(model, ids, scores, tokenizer=tokenizer)
    assert_unchanged(model, before)
    model.eval()
