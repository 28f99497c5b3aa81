"""A token's readable text (captum_jscopes.core.text): output tokens in
Captum's form that never raise, also for a token that is only part of a
multi-byte character; prompt labels; one piece decoded alone."""

import pytest
import torch
from captum.attr._core.llm_attr import _convert_ids_to_pretty_tokens
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from captum_jscopes.core import text as T


@pytest.fixture(scope="module")
def byte_bpe():
    """A byte-level BPE tokenizer written by hand: one token per byte (GPT-2's
    byte-to-unicode alphabet) plus a few merges, among them the byte fragments
    SmolLM2 predicts for Japanese and Korean prompts ('ãĥ' = bytes e3 83, the
    start of a katakana; 'Ġì' = a space and byte ec, the start of a hangul)."""
    merges = [("ã", "ĥ"), ("Ġ", "ì"), ("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    alphabet = sorted(T.byte_decoder())
    vocab = {piece: i for i, piece in enumerate(alphabet + ["".join(m) for m in merges])}
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


TEXT = "I like the 東京\nok 🍣"


def test_output_token_texts_match_captum_on_clean_text(byte_bpe):
    ids = byte_bpe(TEXT).input_ids
    texts = T.output_token_texts(ids, byte_bpe)
    assert texts == _convert_ids_to_pretty_tokens(torch.tensor(ids), byte_bpe)
    assert texts[8:11] == ["東", "東 [OVERLAP]", "東 [OVERLAP]"]  # one character over three tokens
    assert "\\n" in texts and "the" in texts  # newline written as Captum does, spaces stripped


@pytest.mark.parametrize(
    "pieces, expected",
    [
        (["ç"], ["\\xe7"]),  # first byte of a 3-byte Chinese character
        (["ãĥ"], ["\\xe3\\x83"]),  # two of the three bytes of a katakana
        (["Ġì"], ["\\xec"]),  # a space and the first byte of a hangul
        (["H", "i", "ç"], ["H", "i", "\\xe7"]),  # Captum's fallback raises IndexError here
        (["ç", "Ġthe", "ãĥ", "Ġì"], ["\\xe7", "the", "\\xe3\\x83", "\\xec"]),
    ],
)
def test_output_token_texts_show_the_bytes_of_a_partial_character(byte_bpe, pieces, expected):
    ids = byte_bpe.convert_tokens_to_ids(pieces)
    assert T.output_token_texts(ids, byte_bpe) == expected
    assert T.output_token_texts(torch.tensor([ids]), byte_bpe) == expected  # any tensor shape, flattened


def test_output_token_texts_never_raise(byte_bpe):
    assert T.output_token_texts([], byte_bpe) == []
    assert T.output_token_texts([5, 7], None) == ["<5>", "<7>"]  # no tokenizer: the ids
    texts = T.output_token_texts([5, 10**6, -1], byte_bpe)  # ids outside the vocabulary
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_output_texts_read_output_token_texts_back(byte_bpe):
    ids = byte_bpe(" the 東京").input_ids
    target = byte_bpe.decode(ids)
    shown = T.output_texts(T.output_token_texts(ids, byte_bpe), target)
    assert "".join(shown) == target and shown[0] == " the"
    assert shown[2:5] == ["東", "", ""]  # the text on the first token of the character


def test_prompt_labels_number_the_pieces_of_a_character(byte_bpe):
    ids = byte_bpe("ok 🍣").input_ids
    assert T.prompt_labels(ids, byte_bpe)[-4:] == ["🍣 (1/4)", "🍣 (2/4)", "🍣 (3/4)", "🍣 (4/4)"]  # "Ġ" is a token
    assert T.prompt_labels(torch.tensor(ids), None) == [str(i) for i in ids]


def test_display_token_and_readable_tokens():
    assert T.display_token("Ġthe") == " the" and T.display_token("Ċ") == "\n" and T.display_token("<0x0A>") == "\n"
    assert T.display_token("ç") == "ç"  # alone, a Latin-1 looking piece stays as written
    assert T.readable_tokens(["I", "ĠðŁ", "į", "£"]) == ["I", " 🍣", "", ""]
