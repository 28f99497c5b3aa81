"""Output token texts of byte-level tokenizers, whose tokens can be fragments of a
character: a character split over tokens is shown on its first token (the
others marked " [OVERLAP]"), and a lone fragment (a predicted next token that is
the first byte of an emoji) is shown by its byte, not a crash (Captum 0.9's fallback indexed
past the end of the ids). End to end: ``jscopes attribute`` and
``attribute-dataset`` on a tiny model whose prediction is such a fragment."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import make_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from captum_jscopes import ScopeResult
from captum_jscopes.cli.main import main
from captum_jscopes.core.captum_compat import pretty_tokens
from captum_jscopes.runs.runner import read_records

PROMPT = "the cat likes 🍣 and"
SUSHI = "🍣"  # four bytes: F0 9F 8D A3, one token each below
LONE_BYTE = "\\xf0"  # how the first byte alone is shown (core.text.output_token_texts)
FIRST_PIECE = "\u00f0"  # its raw byte-level piece, 'ð' (a result's output_tokens)


def byte_level_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges, whose vocabulary is the bytes of ``text``
    (each byte one token, as GPT-2 / SmolLM2 write them: 'Ġ' for a space, 'ð' for 0xF0)."""
    level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = sorted({char for piece, _ in level.pre_tokenize_str(text) for char in piece})
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *pieces])}
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = level
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer(PROMPT)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_a_split_character_is_shown_on_its_first_token(tokenizer):
    ids = ids_of(tokenizer, " " + SUSHI + " and")
    assert len(ids) == 1 + 4 + 4  # 'Ġ', the four bytes, 'Ġ', 'a', 'n', 'd'
    # Captum's style: stripped texts (a lone space is ""), the later bytes of the character marked
    expected = ["", SUSHI, *[SUSHI + " [OVERLAP]"] * 3, "", "a", "n", "d"]
    assert pretty_tokens(torch.tensor(ids), tokenizer) == expected


def test_the_texts_are_one_per_id_and_never_raise(tokenizer):
    sushi = ids_of(tokenizer, SUSHI)
    assert pretty_tokens(sushi, tokenizer) == [SUSHI, *[SUSHI + " [OVERLAP]"] * 3]
    # a lone fragment (what Captum 0.9 crashed on) shows its byte
    assert pretty_tokens(torch.tensor(sushi[:1]), tokenizer) == [LONE_BYTE]
    # incomplete characters, an empty list, an id outside the vocabulary: one text per id
    for ids in (sushi[:2], ids_of(tokenizer, "the") + sushi[:3], [], [10_000]):
        texts = pretty_tokens(ids, tokenizer)
        assert len(texts) == len(ids) and all(isinstance(t, str) for t in texts)


@pytest.fixture(scope="module")
def fragment_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama whose prediction after PROMPT is the first byte of SUSHI (its row
    of the unembedding points along the final hidden state there)."""
    model = make_model("llama")
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    first_byte = ids_of(tokenizer, SUSHI)[0]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
        model.lm_head.weight[first_byte] = 20 * hidden / hidden.norm() ** 2
        assert int(model(ids).logits[0, -1].argmax()) == first_byte
    folder = tmp_path_factory.mktemp("tiny-bytes")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_attribute_explains_a_predicted_fragment_of_a_character(fragment_model_dir, tmp_path, capsys):
    code = main(["attribute", PROMPT, "--model", str(fragment_model_dir), "--scope", "semantic", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    # the raw piece (lossless), and its byte as the readable text
    assert saved.output_tokens == [FIRST_PIECE] and saved.output_display == [LONE_BYTE]
    assert saved.metadata["no_target_given"] is True


def test_attribute_dataset_goes_on_after_such_a_prompt(fragment_model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"text": PROMPT}) + "\n" + json.dumps({"text": "the cat"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["attribute-dataset", str(source), "--model", str(fragment_model_dir), "--scope", "semantic",
                 "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = read_records(out)
    assert [("results" in r) for r in records] == [True, True]
    assert records[0]["results"]["semantic"]["output_tokens"] == [FIRST_PIECE]
    assert records[0]["results"]["semantic"]["output_display"] == [LONE_BYTE]
