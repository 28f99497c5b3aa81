"""Tests of captum_jscopes.runs.prompts.prepare_prompt: the passage minus its last token."""

from __future__ import annotations

import pytest
from helpers import make_tokenizer

from captum_jscopes.runs.prompts import prepare_prompt


def test_prepare_prompt_drops_the_last_token_and_keeps_bos():
    tokenizer = make_tokenizer()
    prepared = prepare_prompt(tokenizer, "the cat sat on the mat")
    ids = tokenizer("the cat sat on the mat")["input_ids"]
    assert prepared.input_ids.tolist() == [ids[:-1]]
    assert prepared.true_token == ids[-1] == tokenizer.convert_tokens_to_ids("mat")
    assert prepared.has_bos and ids[0] == tokenizer.bos_token_id
    with pytest.raises(ValueError, match="too short"):
        prepare_prompt(tokenizer, "cat")


def test_prepare_prompt_ignores_an_appended_eos():
    from tokenizers import processors

    tokenizer = make_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    prepared = prepare_prompt(tokenizer, "the cat sat")
    assert prepared.true_token == tokenizer.convert_tokens_to_ids("sat")
    assert prepared.input_ids.tolist() == [[1] + tokenizer.convert_tokens_to_ids(["the", "cat"])]


def test_prepare_prompt_keeps_the_last_max_tokens():
    tokenizer = make_tokenizer()
    full = prepare_prompt(tokenizer, "the cat sat on the mat")
    short = prepare_prompt(tokenizer, "the cat sat on the mat", max_tokens=3)
    assert short.input_ids.tolist() == [full.input_ids[0, -3:].tolist()]
    assert short.true_token == full.true_token and not short.has_bos
