"""Targets a reader reads: ``--next {token,char,word}``, ``next=`` in ``explain``,
``explain_scopes``, the Captum wrapper and ``attribute_dataset``, and ``--generate N``.

A tiny byte-level BPE tokenizer (ByteLevel pre-tokenizer and decoder: every byte
is a token, plus the merge 'ĠÃ') writes 'é' as two tokens, 'Ã' + '©'. A tiny Llama
whose embeddings and head are set so that its greedy continuation of "I like" is
'ĠÃ' '©' 't' 'Ã' '¨' '.' (" étè."): its next token is a byte fragment, its next
character " é", its next word " étè". SmolLM2 is checked on Russian, Chinese,
Thai and Hindi prompts (slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from captum.attr import TextTokenInput
from helpers import assert_unchanged, make_model, snapshot
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from captum_jscopes import DatasetSettings, LLMScopeAttribution, ScopeResult, SemanticScope, load_model
from captum_jscopes.cli.main import main
from captum_jscopes.core.continuation import continuation
from captum_jscopes.runs.dataset import attribute_prompt
from captum_jscopes.runs.explain import explain, explain_scopes
from captum_jscopes.runs.prompts import Prompt

PROMPT = "I like"
#: the model's greedy continuation of PROMPT, token by token
CHAIN = ["ĠÃ", "©", "t", "Ã", "¨", "."]
WORD = " étè"
FFFD = "\ufffd"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte a token, one merge ('Ġ' + 'Ã': a space and the first byte of é/è)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(sorted(alphabet))}}
    vocab["ĠÃ"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab, [("Ġ", "Ã")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def chain_model(tokenizer):
    """A tiny Llama whose greedy continuation of PROMPT is CHAIN: the last token of
    each step has a large embedding along its own direction, and the head row of
    the next token of the chain reads that direction (the layers add little)."""
    model = make_model("llama")
    vocab = len(tokenizer)
    model.resize_token_embeddings(vocab)
    ids = tokenizer.convert_tokens_to_ids(["e", *CHAIN])  # 'e' ends "I like"
    with torch.no_grad():
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        emb.normal_(0, 0.02)
        head.normal_(0, 0.02)
        for k, (now, after) in enumerate(zip(ids, ids[1:])):
            emb[now] = 0
            emb[now, k] = 100.0
            head[after, k] = 10.0
    return model.eval()


@pytest.fixture(scope="module")
def chain():
    tokenizer = byte_level_tokenizer()
    return chain_model(tokenizer), tokenizer


@pytest.fixture(scope="module")
def chain_dir(chain, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("byte-level-llama")
    model, tokenizer = chain
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ids_of(tokenizer, tokens):
    return tokenizer.convert_tokens_to_ids(list(tokens))


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_tokenizer_writes_a_character_as_two_tokens(chain):
    model, tokenizer = chain
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode(" é")) == ["ĠÃ", "©"]
    assert FFFD in tokenizer.decode(ids_of(tokenizer, ["ĠÃ"]))
    assert tokenizer.decode(ids_of(tokenizer, CHAIN)) == WORD + "."


@pytest.mark.parametrize("next_, expected", [("token", CHAIN[:1]), ("char", CHAIN[:2]), ("word", CHAIN[:5])])
def test_continuation_stops_at_the_end_of_the_unit(chain, next_, expected):
    model, tokenizer = chain
    before = snapshot(model)
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert continuation(model, tokenizer, prompt, next=next_) == ids_of(tokenizer, expected)
    assert_unchanged(model, before)


def test_continuation_generates_then_completes_and_caps_words(chain):
    model, tokenizer = chain
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert continuation(model, tokenizer, prompt, min_tokens=3) == ids_of(tokenizer, CHAIN[:3])
    # three tokens end inside 'è': on to the end of the character
    assert continuation(model, tokenizer, prompt, next="char", min_tokens=4) == ids_of(tokenizer, CHAIN[:5])
    # a word is capped at word_tokens, and ends on a whole character: " ét" (3 tokens), not " ét" + half of 'è'
    assert continuation(model, tokenizer, prompt, next="word", word_tokens=3) == ids_of(tokenizer, CHAIN[:3])
    with pytest.raises(ValueError, match="next must be one of token, char, word"):
        continuation(model, tokenizer, prompt, next="sentence")
    with pytest.raises(ValueError, match="whole number >= 1"):
        continuation(model, tokenizer, prompt, min_tokens=0)


def test_explain_next_word_is_the_teacher_forced_word(chain):
    model, tokenizer = chain
    word_ids = ids_of(tokenizer, CHAIN[:5])
    result = explain(model, tokenizer, PROMPT, "semantic", next="word")
    assert result.metadata["target"] == WORD and "".join(result.output_display) == WORD
    assert result.metadata["next"] == "word" and result.metadata["target_ids"] == word_ids
    assert result.metadata["no_target_given"] is True and result.token_attr.shape[0] == 5
    # the prediction itself is a fragment: its bytes, never U+FFFD, and marked
    assert result.metadata["prediction"]["fragment"] is True and FFFD not in result.metadata["prediction"]["token"]
    # the same numbers as the wrapper on these ids, and as the wrapper's own next="word"
    inp = TextTokenInput(PROMPT, tokenizer)
    wrapper = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer)
    given = wrapper.attribute(inp, target=torch.tensor(word_ids))
    torch.testing.assert_close(result.token_attr, given.token_attr)
    own = wrapper.attribute(inp, next="word")
    torch.testing.assert_close(own.token_attr, given.token_attr)
    assert own.metadata["next"] == "word" and own.metadata["target"] == WORD
    with pytest.raises(ValueError, match="give no target"):
        wrapper.attribute(inp, target=" é", next="word")
    # every scope from the one forward; next is ignored when a target is given
    together = list(explain_scopes(model, tokenizer, PROMPT, ("semantic", "temperature"), next="char"))
    assert [r.metadata["target"] for r in together] == [" é", " é"]
    assert explain(model, tokenizer, PROMPT, "semantic", " é", next="word").metadata["target"] == " é"


def test_generate_explains_n_greedy_tokens(chain):
    model, tokenizer = chain
    result = explain(model, tokenizer, PROMPT, "semantic", generate=3)
    assert result.metadata["target_ids"] == ids_of(tokenizer, CHAIN[:3]) and result.metadata["generate"] == 3
    assert result.metadata["target"] == " ét" and result.token_attr.shape[0] == 3
    with pytest.raises(ValueError, match="not both"):
        explain(model, tokenizer, PROMPT, "semantic", " é", generate=3)


def test_cli_says_when_the_next_token_is_a_byte_fragment(chain_dir, tmp_path, capsys):
    code, out, err = run(["attribute", PROMPT, "--model", chain_dir, "--scope", "semantic", "--out", tmp_path], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "byte fragment" in line]
    assert len(notes) == 1 and "--next char" in notes[0] and "--next word" in notes[0]
    assert FFFD not in out and "prediction: '\\\\xc3'" in out


def test_cli_next_word_prints_and_draws_the_whole_word(chain_dir, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", chain_dir, "--scope", "semantic", "--next", "word", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert f"prediction: {WORD!r}" in out and "the next word: 5 tokens" in out
    assert "byte fragment" not in err and FFFD not in out
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.metadata["target"] == WORD and "".join(saved.output_display) == WORD
    for name in ("semantic.html", "semantic_interactive.html", "semantic.json"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert FFFD not in text and "\\ufffd" not in text, name  # not in the page, not in the file, not escaped
    assert (tmp_path / "semantic.png").stat().st_size > 0
    # --next with --target is refused in one line
    code, _, err = run(argv + ["--target", " é"], capsys)
    assert code != 0 and "leave out --target" in err


def test_cli_generate_writes_an_interactive_page_per_output_token(chain_dir, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", chain_dir, "--scope", "temperature", "--generate", "3", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "3 generated tokens: 3 tokens" in out
    saved = ScopeResult.load_json(tmp_path / "temperature.json")
    assert saved.token_attr.shape[0] == 3 and saved.metadata["target"] == " ét"
    assert (tmp_path / "temperature_interactive.html").is_file()
    code, _, err = run(argv[:-2] + ["--generate", "0", "--out", tmp_path], capsys)
    assert code == 2 and "whole number >= 1 of tokens" in err


def test_attribute_dataset_takes_next(chain, chain_dir, tmp_path, capsys):
    model, tokenizer = chain
    settings = DatasetSettings(scopes=("semantic",), next="word")
    record = attribute_prompt(model, tokenizer, Prompt("0", PROMPT), settings)
    assert ScopeResult.from_dict(record["results"]["semantic"]).metadata["target"] == WORD
    # a prompt with its own target keeps it
    record = attribute_prompt(model, tokenizer, Prompt("1", PROMPT, " é"), settings)
    assert ScopeResult.from_dict(record["results"]["semantic"]).metadata["target"] == " é"
    assert settings.to_dict()["next"] == "word"
    # a run.json written before the setting existed reads as the next token
    assert DatasetSettings.upgrade_dict({"scopes": ["semantic"]})["next"] == "token"
    with pytest.raises(ValueError, match="next must be one of"):
        DatasetSettings(next="line")
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps({"text": PROMPT}) + "\n", encoding="utf-8")
    argv = ["attribute-dataset", source, "--model", chain_dir, "--scope", "semantic", "--next", "word",
            "--out", tmp_path / "run"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert ScopeResult.from_dict(records[0]["results"]["semantic"]).metadata["target"] == WORD


# ----------------------------------------------------------------------------- the default model


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["Я люблю", "我最喜欢的食物是", "ฉันรัก", "मैं प्यार करता हूँ"])
def test_next_word_on_smollm2_is_a_whole_word(prompt, tmp_path, capsys):
    argv = ["attribute", prompt, "--next", "word", "--scope", "semantic", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    word = saved.metadata["target"]
    assert word.strip() and FFFD not in word and FFFD not in out
    assert f"prediction: {word!r}" in out
    model, tokenizer = load_model()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert saved.metadata["target_ids"] == continuation(model, tokenizer, ids, next="word")
    for name in ("semantic.html", "semantic.json"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert FFFD not in text and "\\ufffd" not in text, name
