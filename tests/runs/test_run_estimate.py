"""The estimate of a dataset run (captum_jscopes.runs.estimate): each prompt priced by its
own length and each scope's passes, the prompts that dominate named, the price revised
from the prompts done of about the same length, and the runner saying it before the first
prompt and when it moves. Arithmetic only: no assertion on how long anything takes."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import WORDS, assert_unchanged, make_model, make_tokenizer, snapshot

from captum_jscopes.runs.dataset import DatasetSettings
from captum_jscopes.runs.estimate import LengthTimings, RunEstimate, measure_run
from captum_jscopes.runs.explain import PassTiming
from captum_jscopes.runs.prompts import Prompt
from captum_jscopes.runs.runner import run_sharded

PLAIN = [w for w in WORDS if w.isalpha()]

# a pass that costs 10 ms at 10 tokens, 40 ms at 100 and 1 s at 1,000: faster than linear at the end
TIMINGS = LengthTimings(lengths=(10, 100, 1000), forward=(0.01, 0.04, 1.0), backward=(0.01, 0.04, 1.0), hidden_size=16)


def words(n: int, start: int = 0) -> str:
    return " ".join(PLAIN[(start + k) % len(PLAIN)] for k in range(n))


def test_passes_are_read_off_at_the_prompts_own_length():
    assert TIMINGS.at(10).backward_seconds == pytest.approx(0.01)
    assert TIMINGS.at(1000).forward_seconds == pytest.approx(1.0)
    # between two measured lengths on the power law through them: 100 -> 1,000 is 25x for 10x the tokens
    assert TIMINGS.at(500).backward_seconds == pytest.approx(0.04 * 5 ** math.log10(25))
    assert TIMINGS.at(3).backward_seconds == pytest.approx(0.01)  # below the shortest: its fixed cost
    assert TIMINGS.at(2000).backward_seconds >= 2.0  # beyond the longest: at least proportional
    assert TIMINGS.at(20, n_targets=3).n_targets == 3
    with pytest.raises(ValueError):
        LengthTimings((100, 10), (1.0, 1.0), (1.0, 1.0), 16)


def test_each_prompt_is_priced_by_its_length_and_each_scopes_passes():
    sizes = {"short": (10, 1), "long": (1000, 1), "target": (100, 3), "bad": None}
    estimate = RunEstimate(TIMINGS, {"semantic": 1, "fisher": 48}, {"fisher": 0.5}, sizes)
    short = estimate.price("short")
    assert short["semantic"] == pytest.approx(0.01 + 0.01)  # one forward, one backward pass
    assert short["fisher"] == pytest.approx(0.01 + 48 * 0.01 + 0.5)  # 48 passes, and F outside them
    long = estimate.price("long")
    assert long["semantic"] == pytest.approx(1.0 + 1.0)  # the passes at 1,000 tokens, not 100x those at 10
    # 48 passes in batches of 32 on a long prompt on a CPU cost more than 48 lone ones (PassTiming.seconds)
    assert long["fisher"] == pytest.approx(PassTiming(1000, 1, 16, 1.0, 1.0).seconds(48) + 0.5)
    assert long["fisher"] > 1.0 + 48 * 1.0
    # a target of 3 tokens: 3 explained positions, each with its passes and its F
    assert estimate.price("target")["fisher"] == pytest.approx(PassTiming(100, 3, 16, 0.04, 0.04).seconds(48) + 1.5)
    assert estimate.price("bad") == {"semantic": 0.0, "fisher": 0.0}  # fails at once
    assert estimate.total(["short", "long"]) == pytest.approx(sum(short.values()) + sum(long.values()))


def test_the_long_prompt_is_named_as_dominating():
    sizes = {str(i): (10, 1) for i in range(4)} | {"4": (1000, 1)}
    estimate = RunEstimate(TIMINGS, {"semantic": 1, "fisher": 48}, {}, sizes)
    ids = list(sizes)
    assert [prompt_id for prompt_id, _ in estimate.dominant(ids)] == ["4"]
    text = estimate.announce(ids)
    assert text.startswith("attribute-dataset: 5 prompts, about ")
    assert "(semantic " in text and "fisher " in text
    share = estimate.seconds("4") / estimate.total(ids)
    assert f"prompt '4' (1,000 tokens) takes " in text and f"{share:.0%} of it" in text
    assert "passes measured at 10 to 1,000 tokens" in text
    even = RunEstimate(TIMINGS, {"semantic": 1}, {}, {str(i): (100, 1) for i in range(4)})
    assert even.dominant(list("0123")) == []  # none stands out: none named
    assert "takes" not in even.announce(list("0123"))
    resumed = even.announce(["2", "3"], done_before=2)
    assert "4 prompts (2 done before)" in resumed and " more on this machine" in resumed


def test_the_price_is_revised_by_the_prompts_done_of_about_its_length():
    sizes = {"a": (10, 1), "b": (12, 1), "c": (1000, 1)}
    estimate = RunEstimate(TIMINGS, {"semantic": 1}, {}, sizes)
    before = {i: estimate.seconds(i) for i in sizes}
    estimate.update("a", {"seconds": {"semantic": 3 * before["a"]}})  # took three times its price
    weight = math.exp(-0.5 * (math.log(12 / 10) / math.log(2)) ** 2)
    assert estimate.seconds("b") == pytest.approx(before["b"] * (0.5 + 3 * weight) / (0.5 + weight))
    assert estimate.seconds("c") == pytest.approx(before["c"], rel=1e-6)  # 100x longer: not re-priced from it
    estimate.update("b", {"error": "ValueError: no"})  # an error teaches nothing
    assert len(estimate.done) == 1
    estimate.update("c", {"seconds": {"semantic": 1000.0}})  # a ratio is bounded
    assert max(estimate.done[-1][1].values()) == 20.0


class FakePricing:
    """Prices every prompt 1 s, a prompt done makes the rest cost what it took."""

    def __init__(self):
        self.each, self.updates = 1.0, []

    def announce(self, prompt_ids, processes=1, label="prompts", done_before=0):
        return f"{label}: priced {len(prompt_ids)} prompts at {self.total(prompt_ids):.0f} s"

    def seconds(self, prompt_id):
        return self.each

    def total(self, prompt_ids):
        return self.each * len(list(prompt_ids))

    def update(self, prompt_id, record):
        self.updates.append((prompt_id, record))
        self.each = record["took"]


class Clock:
    def __init__(self, took):
        self.now, self.took = 0.0, took

    def __call__(self):
        return self.now

    def fn(self, prompt):
        self.now += self.took[prompt.id]
        return {"took": self.took[prompt.id]}


def test_the_runner_says_the_price_first_and_a_revision_when_it_moves(tmp_path, capsys, monkeypatch):
    from captum_jscopes.runs import progress

    clock = Clock({"0": 1.0, "1": 30.0, "2": 30.0, "3": 30.0})
    monkeypatch.setattr(progress.time, "perf_counter", clock)  # the progress report's clock
    monkeypatch.setenv("JSCOPES_PROGRESS_SECONDS", "0")
    pricing = FakePricing()
    prompts = [Prompt(str(i), f"text {i}") for i in range(4)]
    run_sharded(prompts, clock.fn, tmp_path, desc="run", pricing=pricing)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "run: priced 4 prompts at 4 s"  # before the first prompt
    assert [prompt_id for prompt_id, _ in pricing.updates] == ["0", "1", "2", "3"]
    assert lines[1] == "run: 1/4 prompts, 1.0 s per prompt, about 3.0 s left"  # the price of the 3 left
    # prompt 1 took 30 s against 1 s priced: the 2 left now cost 60 s
    assert lines[2] == "run: revised after prompt '1' (30 s, priced at 1.0 s): about 60 s left"
    assert lines[3].startswith("run: 2/4 prompts") and lines[3].endswith("about 60 s left")
    assert lines[-1].startswith("run: 4/4 prompts") and "done in" in lines[-1]
    assert sum("revised" in line for line in lines) == 1  # it moved once


def test_measured_prices_follow_the_prompts_lengths_and_leave_the_model_unchanged():
    model, tokenizer = make_model("llama"), make_tokenizer()
    prompts = [Prompt("0", words(3)), Prompt("1", words(40, 5)), Prompt("2", words(6), " big red house"),
               Prompt("3", "", error="p.jsonl, line 4: empty text")]
    settings = DatasetSettings(scopes=("semantic", "fisher"), fisher_estimator="eig")
    before = snapshot(model)
    estimate = measure_run(model, tokenizer, prompts, settings)
    assert_unchanged(model, before)
    # tokens of the forward: BOS + words; a target of 3 tokens adds 2 (teacher forcing) and 3 explained positions
    assert estimate.sizes == {"0": (4, 1), "1": (41, 1), "2": (9, 3), "3": None}
    assert estimate.timings.lengths[0] == 4 and estimate.timings.lengths[-1] == 41
    assert all(b <= 4 * a for a, b in zip(estimate.timings.lengths, estimate.timings.lengths[1:]))
    assert estimate.passes == {"semantic": 1, "fisher": 1}
    assert set(estimate.outside) == {"semantic", "fisher"}  # cheap scopes: calibrated on a few tokens
    assert estimate.seconds("3") == 0.0
    for scope in ("semantic", "fisher"):
        timing = estimate.timings.at(41)
        assert estimate.price("1")[scope] == pytest.approx(timing.seconds(1) + estimate.outside[scope])
    krylov = measure_run(model, tokenizer, prompts[:2], DatasetSettings(scopes=("fisher",)), calibrate=False)
    assert krylov.passes["fisher"] > 4 and krylov.outside == {"fisher": 0.0}
    assert krylov.batches == {"fisher": 1} and estimate.batches == {"semantic": 32, "fisher": 32}


def test_a_scope_that_runs_its_passes_in_small_blocks_is_priced_so():
    from captum_jscopes.runs.estimate import pass_batch
    from captum_jscopes.scopes.registry import scope_class

    fisher, semantic = scope_class("fisher"), scope_class("semantic")
    assert pass_batch(fisher, fisher.make_options()) == 1  # krylov: its Krylov blocks, priced as lone passes
    assert pass_batch(fisher, fisher.make_options(estimator="hutchinson")) == 32
    assert pass_batch(semantic, semantic.make_options()) == 32
    estimate = RunEstimate(TIMINGS, {"fisher": 48}, {}, {"long": (1000, 1)}, batches={"fisher": 1})
    assert estimate.price("long")["fisher"] == pytest.approx(1.0 + 48 * 1.0)  # a forward and 48 lone passes
    assert estimate.price("long")["fisher"] < PassTiming(1000, 1, 16, 1.0, 1.0).seconds(48, 32)
