"""Readable groups of byte-level tokens, words and spans, and the aggregation
rules checked against brute-force Jacobians on a tiny model."""

import pytest
import torch
import transformers
from captum.attr import TextTokenInput
from helpers import CONFIGS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from captum_jscopes import FisherScope, LLMScopeAttribution, SemanticScope, TemperatureScope, linearity_check
from captum_jscopes.core import text as T
from captum_jscopes.results import spans as S

SENTENCES = [
    "I love sushi and the city of Tokyo.",
    "My favourite city is Paris, the city of light.",
    "The cat sat on the mat and the dog ran home.",
    "Emoji like 🍣 and 🙂 are bytes too.",
    "東京の寿司はおいしい。",
]
PROMPT = "I love 🍣 and 東京の寿司. My favourite city is"


@pytest.fixture(scope="module")
def bpe():
    """A real byte-level BPE tokenizer, trained in memory. Its 300 tokens are
    too few for merges of the multi-byte characters: each of 🍣, 東, 京 ... is
    split over several tokens, as in GPT-2 or SmolLM2."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    backend.train_from_iterator(SENTENCES * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def bpe_model(bpe):
    """The tiny llama of tests/helpers.py with the BPE tokenizer's vocabulary, float64."""
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.vocab_size = len(bpe)
    config._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(config).to(torch.float64).eval()


def decode(tokenizer, ids):
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


# ------------------------------------------------------------------ grouping
def test_groups_of_byte_level_bpe_are_the_smallest_clean_runs(bpe):
    ids = bpe(PROMPT).input_ids
    pieces = bpe.convert_ids_to_tokens(ids)
    groups = T.readable_groups(ids, bpe)
    # the setting this test is about: some characters span several tokens
    assert any(len(g.positions) > 1 for g in groups)
    assert [p for g in groups for p in g.positions] == list(range(len(ids)))
    assert "".join(g.text for g in groups) == PROMPT
    for g in groups:
        run = [ids[p] for p in g.positions]
        assert "\ufffd" not in decode(bpe, run)
        for cut in range(1, len(run)):  # smallest: no shorter run decodes cleanly
            assert "\ufffd" in decode(bpe, run[:cut])
    assert {"🍣", "東", "京", "の"} <= {g.text.strip() for g in groups}
    # three routes to the same groups: offsets (fast tokenizer), decoding
    # growing runs, and the raw pieces alone (no tokenizer, e.g. an old JSON file)
    by_decoding = T._groups_by_decoding(len(ids), lambda a, b: decode(bpe, ids[a:b]))
    assert T._groups_from_offsets(ids, bpe, None) == by_decoding == groups
    assert T.readable_groups(pieces) == groups
    assert T.readable_groups(pieces, bpe) == groups


def test_token_display_and_labels_keep_the_text():
    pieces = ["I", "Ġlove", "ĠðŁ", "į", "£", "Ġand"]
    groups = T.readable_groups(pieces)
    display = T.token_display(groups, len(pieces))
    assert display == ["I", " love", " 🍣", "", "", " and"]
    assert T.groups_from_display(display) == groups
    assert T.token_labels(display) == ["I", " love", " 🍣", "·", "·", " and"]
    assert T.token_labels(display, numbered=True)[2:5] == [" 🍣 (1/3)", " 🍣 (2/3)", " 🍣 (3/3)"]


def test_sentencepiece_byte_tokens_and_invalid_bytes():
    pieces = ["▁I", "▁love", "▁", "<0xF0>", "<0x9F>", "<0x8D>", "<0xA3>", "▁x", "<0xFF>", "y"]
    groups = T.readable_groups(pieces)
    assert [(g.text, g.positions) for g in groups] == [
        (" I", (0,)), (" love", (1,)), (" ", (2,)), ("🍣", (3, 4, 5, 6)),
        (" x", (7,)), ("<0xFF>", (8,)), ("y", (9,)),
    ]  # fmt: skip  (0xFF never starts a character: alone, in its raw form)


def test_sentencepiece_decoder_keeps_leading_spaces():
    """Decoding a run alone drops a SentencePiece '▁'; decoding after the
    previous group keeps it."""
    backend = Tokenizer(models.WordLevel({"▁I": 0, "▁love": 1, "▁Paris": 2}, unk_token="▁I"))
    backend.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    groups = T.readable_groups([0, 1, 2], tok)
    assert [g.text for g in groups] == ["I", " love", " Paris"]


def test_words_split_at_spaces_and_punctuation():
    pieces = ["The", "Ġcity", ".", "Ċ", '"', "He", "llo", '"', "Ġdon", "'t", "ĠðŁ", "į", "£", "!"]
    words = S.word_spans(T.readable_groups(pieces))
    assert [(w.text, w.positions) for w in words] == [
        ("The", (0,)), (" city", (1,)), (".", (2,)), ("\n", (3,)), ('"', (4,)), ("Hello", (5, 6)),
        ('"', (7,)), (" don't", (8, 9)), (" 🍣", (10, 11, 12)), ("!", (13,)),
    ]  # fmt: skip


def test_position_and_char_spans_take_whole_groups():
    pieces = ["I", "Ġlove", "ĠðŁ", "į", "£", "Ġand"]
    groups = T.readable_groups(pieces)
    (span,) = S.position_spans(groups, [[3]])  # half of the emoji: the whole emoji
    assert span == T.Span(" 🍣", (2, 3, 4))
    text = "".join(g.text for g in groups)  # "I love 🍣 and"
    spans = S.char_spans(groups, [(0, 6), (text.index("🍣"), len(text))])
    assert [s.positions for s in spans] == [(0, 1), (2, 3, 4, 5)]
    with pytest.raises(ValueError, match="outside"):
        S.position_spans(groups, [[6]])
    with pytest.raises(ValueError, match="no token"):
        S.char_spans(groups, [(100, 200)])


# ------------------------------------------------------------------ aggregation rules
def test_rules_by_scope_name():
    assert [S.aggregation_rule(s) for s in ("semantic", "temperature", "fisher")] == ["l2", "l2", "sum"]
    with pytest.raises(ValueError, match="rule="):
        S.aggregation_rule("integrated_gradients")
    scores = torch.tensor([[3.0, 4.0, 1.0], [1.0, 0.0, 2.0]])
    spans = [T.Span("a", (0, 1)), T.Span("b", (2,))]
    assert torch.allclose(S.aggregate(scores, spans, "l2"), torch.tensor([[5.0, 1.0], [1.0, 2.0]]))
    assert torch.allclose(S.aggregate(scores, spans, "sum"), torch.tensor([[7.0, 1.0], [1.0, 2.0]]))


def _embeddings(model, ids):
    x = model.get_input_embeddings()(torch.tensor([ids])).detach().clone()
    return x.requires_grad_(True)


def _hidden(model, x):
    """y: the final hidden state at the last position, where the head consumes it."""
    return model.model(inputs_embeds=x).last_hidden_state[0, -1]


def _vjp_rows(model, ids, direction):
    """(n, d) rows v^T J_t of the scalar direction(y), by plain autograd."""
    x = _embeddings(model, ids)
    (grad,) = torch.autograd.grad(direction(_hidden(model, x)), x)
    return grad[0]


@pytest.mark.parametrize("scope_name", ["semantic", "temperature"])
def test_word_l2_score_is_the_norm_of_the_joint_vjp(bpe, bpe_model, scope_name):
    ids = bpe(PROMPT).input_ids
    weight = bpe_model.lm_head.weight
    target = int(torch.tensor(ids[-1]))  # any token will do
    if scope_name == "semantic":
        scope = SemanticScope(bpe_model, bpe)
        rows = _vjp_rows(bpe_model, ids, lambda y: weight[target] @ y)
    else:
        scope = TemperatureScope(bpe_model, bpe)
        rows = _vjp_rows(bpe_model, ids, lambda y: y.norm())  # d||y|| = (y/||y||)^T J
    result = LLMScopeAttribution(scope, bpe).attribute(TextTokenInput(PROMPT, bpe), target=torch.tensor([target]))
    assert torch.allclose(result.seq_attr, rows.norm(dim=-1), rtol=1e-8, atol=1e-12)  # the tokens agree
    words = result.words()
    assert words.metadata["view"]["rule"] == "l2"
    assert any(len(p) > 1 for p in words.metadata["view"]["positions"])
    for k, positions in enumerate(words.metadata["view"]["positions"]):
        joint = rows[positions].flatten()  # concatenated VJP rows of the word's tokens
        assert float(words.seq_attr[k]) == pytest.approx(float(joint.norm()), rel=1e-10)
    assert torch.equal(words.source.seq_attr, result.seq_attr)  # the raw token scores stay


def test_word_fisher_score_is_the_trace_of_the_joint_block(bpe, bpe_model):
    prompt = "I love 🍣 and 東京"  # short: the Jacobian is (d, n, d)
    ids = bpe(prompt).input_ids
    x = _embeddings(bpe_model, ids)
    jac = torch.autograd.functional.jacobian(lambda e: _hidden(bpe_model, e), x)[:, 0]  # (d, n, d)
    with torch.no_grad():
        y = _hidden(bpe_model, x)
        p = torch.softmax(bpe_model.lm_head(y), -1)
        w = bpe_model.lm_head.weight
        fisher = w.T @ (torch.diag(p) - torch.outer(p, p)) @ w  # Fisher of y (d, d)
    result = LLMScopeAttribution(FisherScope(bpe_model, bpe), bpe).attribute(
        TextTokenInput(prompt, bpe), target=torch.tensor([0]), estimator="exact"
    )
    per_token = torch.stack([torch.trace(jac[:, t].T @ fisher @ jac[:, t]) for t in range(len(ids))])
    assert torch.allclose(result.seq_attr, per_token, rtol=1e-6)
    words = result.words()
    assert words.metadata["view"]["rule"] == "sum"
    for k, positions in enumerate(words.metadata["view"]["positions"]):
        block = jac[:, positions].reshape(jac.shape[0], -1)  # J_W = [J_t1 ... J_tk], (d, k d)
        assert float(words.seq_attr[k]) == pytest.approx(float(torch.trace(block.T @ fisher @ block)), rel=1e-6)


def test_multi_token_rows_aggregate_each_row_and_sum(bpe, bpe_model):
    result = LLMScopeAttribution(SemanticScope(bpe_model, bpe), bpe).attribute(
        TextTokenInput(PROMPT, bpe), target=" the city"
    )
    words = result.words()
    m = result.token_attr.shape[0]
    assert m > 1 and words.token_attr.shape == (m, len(words.input_tokens))
    for row in range(m):
        expected = S.aggregate(result.token_attr[row], S.word_spans(result.groups()), "l2")
        assert torch.allclose(words.token_attr[row], expected)
    assert torch.allclose(words.seq_attr, words.token_attr.sum(0))
    assert words.output_display == [" the", " city"] and words.output_probs is result.output_probs


def test_linearity_check_names_tokens_by_their_readable_text(bpe, bpe_model):
    ids = bpe(PROMPT, return_tensors="pt").input_ids
    pieces = bpe.convert_ids_to_tokens(ids[0].tolist())
    assert any("Ġ" in p or "ð" in p for p in pieces)  # the raw pieces are unreadable
    result = linearity_check(SemanticScope(bpe_model, bpe), ids, tokens=[0, 1, 2])
    labels = result.token_labels
    assert len(labels) == ids.shape[1]
    assert not any("Ġ" in label or "ð" in label for label in labels), labels
    sushi = [label for label in labels if "🍣" in label]
    assert len(sushi) > 1 and sushi[0].startswith(" 🍣 (1/"), labels
    assert all(labels[t] in result.summary() for t in (0, 1, 2))
