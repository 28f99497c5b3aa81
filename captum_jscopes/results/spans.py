"""Readable tokens, and scores of words or any span of tokens.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen) split a character
outside ASCII into several tokens: '🍣' after a space is 'ĠðŁ' + 'į' + '£', and
no one of them is text on its own. This module

* groups token positions into the smallest runs that decode cleanly (without
  U+FFFD) and gives each group its text (:func:`readable_groups`), from which
  every view takes a readable text per token (:func:`token_display`,
  :func:`token_labels`);
* groups those runs into words (:func:`word_spans`) or into spans the user
  chooses (:func:`position_spans`, :func:`char_spans`);
* aggregates token scores into span scores with the rule that fits the scope
  (:func:`aggregate`, :func:`aggregation_rule`): ``"l2"`` for Semantic and
  Temperature, whose token score is the L2 norm ``‖v^T J_t‖`` of a VJP row, so
  the span's score is the norm of the joint perturbation of its tokens,
  ``‖v^T [J_t1 … J_tk]‖ = sqrt(Σ ‖v^T J_t‖²)``; ``"sum"`` for Fisher, whose
  token score is the trace ``tr(J_t^T F J_t)``, and the trace of the joint block
  is the sum of the diagonal blocks' traces.

``ScopeResult.words()`` / ``ScopeResult.spans()`` are the usual way in.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "Span",
    "AGGREGATION_RULES",
    "CONTINUATION_MARK",
    "readable_groups",
    "display_piece",
    "groups_from_display",
    "token_display",
    "token_labels",
    "word_spans",
    "position_spans",
    "char_spans",
    "aggregation_rule",
    "aggregate",
]

#: scope name -> how token scores combine into a span score (see the module doc)
AGGREGATION_RULES = {"semantic": "l2", "temperature": "l2", "fisher": "sum"}

#: label of the 2nd, 3rd ... token of a group in pictures (its text is on the first)
CONTINUATION_MARK = "·"

# Longest run of tokens tried when looking for a clean decode: a character is
# at most 4 bytes, so a longer run that still has U+FFFD holds invalid bytes.
_MAX_RUN = 8


@dataclass(frozen=True)
class Span:
    """A group of token positions and its readable text.

    Attributes:
        text: the decoded text of the tokens, leading whitespace included
            (``" 🍣"``); the texts of consecutive spans concatenate to the prompt.
        positions: the token positions (0-based, ascending).
    """

    text: str
    positions: tuple[int, ...]


# ---------------------------------------------------------------- grouping
def readable_groups(tokens: Any, tokenizer: Any = None, *, text: Optional[str] = None) -> list[Span]:
    """The smallest runs of consecutive tokens that decode without U+FFFD.

    Args:
        tokens: n raw tokenizer pieces (list of str, e.g. ``["I", "Ġlove", "ĠðŁ", "į", "£"]``)
            or n token ids (list of int or 1-D tensor; then ``tokenizer`` is required).
        tokenizer: optional Hugging Face tokenizer. A fast one gives the grouping
            by its ``offset_mapping`` (tokens whose character spans overlap share a
            character); any other is asked to decode growing runs. Without one,
            the pieces themselves are decoded (byte-level BPE and SentencePiece
            pieces, including ``<0xNN>`` byte tokens).
        text: the text the tokens encode, if known (default: the tokenizer's
            decode of the tokens). Only used with a fast tokenizer.
    Returns:
        list of :class:`Span`, in order, covering every position exactly once.
        A token that never decodes cleanly (invalid bytes) is a group of its own
        with its raw text.
    """
    ids, pieces = _ids_and_pieces(tokens, tokenizer)
    if not (ids or pieces):
        return []
    if ids is None:
        return _groups_from_pieces(pieces)
    if getattr(tokenizer, "is_fast", False):
        groups = _groups_from_offsets(ids, tokenizer, text)
        if groups is not None:
            return groups

    def decode(start: int, end: int) -> str:
        return tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return _groups_by_decoding(len(ids), decode)


def groups_from_display(display: Sequence[str]) -> list[Span]:
    """Inverse of :func:`token_display`: a token whose display is empty belongs
    to the group before it (how a saved ``input_display`` keeps the grouping)."""
    groups: list[list] = []
    for i, shown in enumerate(display):
        if shown == "" and groups:
            groups[-1][1].append(i)
        else:
            groups.append([shown, [i]])
    return [Span(t, tuple(p)) for t, p in groups]


def token_display(groups: Sequence[Span], n: int) -> list[str]:
    """Readable text per token (n,): a group's text on its first token and ""
    on the others, so that ``"".join`` of it is the decoded text."""
    display = [""] * n
    for group in groups:
        display[group.positions[0]] = group.text
    return display


def token_labels(display: Sequence[str], *, numbered: bool = False) -> list[str]:
    """A label per token for pictures and listings: its display text, or for the
    2nd, 3rd ... token of a group :data:`CONTINUATION_MARK` (``numbered=False``)
    or the group's text with the token's place in it, ``" 🍣 (2/3)"`` (``numbered=True``,
    also given to the first token of such a group)."""
    labels = list(display)
    for group in groups_from_display(display):
        k = len(group.positions)
        for j, pos in enumerate(group.positions):
            if numbered and k > 1:
                labels[pos] = f"{group.text} ({j + 1}/{k})"
            elif j > 0:
                labels[pos] = CONTINUATION_MARK
    return labels


def _ids_and_pieces(tokens: Any, tokenizer: Any) -> tuple[Optional[list[int]], Optional[list[str]]]:
    """(ids or None, pieces or None); ids only when the tokenizer can be trusted
    to map the pieces back (every piece is in its vocabulary)."""
    if isinstance(tokens, Tensor):
        tokens = tokens.flatten().tolist()
    tokens = list(tokens)
    if tokens and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        if tokenizer is None:
            raise ValueError("token ids need a tokenizer to be decoded; pass tokenizer= or the raw pieces")
        return tokens, None
    bad = [t for t in tokens if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tokens must be str pieces or int ids, found {type(bad[0]).__name__} {bad[0]!r}")
    if tokenizer is None or not tokens:
        return None, tokens
    ids = tokenizer.convert_tokens_to_ids(tokens)
    # A piece outside the vocabulary maps to the unknown id: decoding would
    # show '<unk>', so such tokens are decoded as pieces instead.
    if any(i is None for i in ids) or tokenizer.convert_ids_to_tokens(ids) != tokens:
        return None, tokens
    return list(ids), None


def _groups_from_offsets(ids: list[int], tokenizer: Any, text: Optional[str]) -> Optional[list[Span]]:
    """Group by overlapping character spans, or None when re-encoding the text
    does not give back exactly ``ids`` (then the offsets would belong to other tokens)."""
    if text is None:
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(encoded["input_ids"]) != ids:
        return None
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    groups: list[tuple[int, int, list[int]]] = []  # (start, end, positions)
    for i, (start, end) in enumerate(offsets):
        if groups and start < groups[-1][1] and end > start:
            s, e, positions = groups[-1]
            groups[-1] = (s, max(e, end), positions + [i])
        else:
            groups.append((start, end, [i]))
    spans = []
    prev_end: Optional[int] = None
    for start, end, positions in groups:
        if end <= start:  # a token without characters (e.g. a special token)
            spans.append(Span(tokenizer.decode([ids[positions[0]]], skip_special_tokens=False), tuple(positions)))
            continue
        # Characters between two groups (a space the tokens' offsets leave out)
        # go to the later group, so a word keeps its leading space.
        begin = start if prev_end is None else min(start, prev_end)
        spans.append(Span(text[begin:end], tuple(positions)))
        prev_end = end
    return spans


def _groups_by_decoding(n: int, decode: Callable[[int, int], str]) -> list[Span]:
    """Grow each run until ``decode(start, end)`` has no U+FFFD."""
    groups: list[Span] = []
    start = 0
    while start < n:
        end = start + 1
        while "\ufffd" in decode(start, end) and end < min(n, start + _MAX_RUN):
            end += 1
        if "\ufffd" in decode(start, end):
            end = start + 1  # invalid bytes: the token alone, as decoded
        groups.append(Span(_text_after(groups, start, end, decode), tuple(range(start, end))))
        start = end
    return groups


def _text_after(groups: list[Span], start: int, end: int, decode: Callable[[int, int], str]) -> str:
    """Text of tokens [start, end) as it reads after the previous group.

    Decoding a run alone loses a leading space with SentencePiece decoders (they
    drop the first '▁'); decoding it after the previous group and cutting that
    group's text off keeps it."""
    alone = decode(start, end)
    if not groups:
        return alone
    before = groups[-1].positions[0]
    prefix, joined = decode(before, start), decode(before, end)
    return joined[len(prefix) :] if joined.startswith(prefix) else alone


# ------------------------------------------------ tokenizer-free piece decoding
@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table used by byte-level BPE tokenizers
    (GPT-2, Llama 3, SmolLM2, Qwen): 'Ġ' is the byte of a space, 'Ċ' of a newline."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _is_byte_level(pieces: Sequence[str]) -> bool:
    """Whether the pieces are byte-level BPE: some piece holds a character only
    that table produces (U+0100 and up, e.g. 'Ġ'), or every piece is in the table
    and the bytes together are valid UTF-8 beyond ASCII ('Ã©' for 'é')."""
    decoder = byte_decoder()
    if any(ord(ch) >= 0x100 and ch in decoder for p in pieces for ch in p):
        return True
    if not all(ch in decoder for p in pieces for ch in p):
        return False
    raw = bytes(decoder[ch] for p in pieces for ch in p)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return any(b >= 0x80 for b in raw)


def _piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The bytes a raw piece stands for (byte-level table, SentencePiece '▁' and
    '<0xNN>'), else its UTF-8 text with the markers replaced."""
    match = _SP_BYTE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    decoder = byte_decoder()
    if byte_level and all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    # Not a piece of either table (a hand-written or added token): its text,
    # with the space/newline markers of both kinds replaced.
    return piece_text(piece).encode("utf-8")


def piece_text(piece: str) -> str:
    """Raw text of one piece that does not decode on its own: markers replaced."""
    return piece.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")


def display_piece(piece: str) -> str:
    """The text one raw piece stands for on its own: 'Ġthe' -> ' the', 'Ċ' ->
    newline, '▁the' -> ' the', '<0x0A>' -> newline, 'âĢĻ' -> '’'. A piece that is
    part of a character ('ĠâĢ') keeps its raw form, markers replaced (' âĢ')."""
    return _groups_from_pieces([piece])[0].text


def _groups_from_pieces(pieces: Sequence[str]) -> list[Span]:
    """Feed the pieces' bytes to a strict incremental UTF-8 decoder; a group ends
    where the decoder holds no incomplete character (UTF-8 resynchronises at
    every character start, so this greedy cut gives the smallest runs)."""
    byte_level = _is_byte_level(pieces)
    data = [_piece_bytes(p, byte_level) for p in pieces]
    groups: list[Span] = []
    start, n = 0, len(pieces)
    while start < n:
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        text, end, clean = "", start, False
        while end < n:
            try:
                text += decoder.decode(data[end])
            except UnicodeDecodeError:
                break
            end += 1
            if decoder.getstate()[0] == b"":
                clean = True
                break
        if not clean:  # bytes that never complete a character: the piece alone
            text, end = piece_text(pieces[start]), start + 1
        groups.append(Span(text, tuple(range(start, end))))
        start = end
    return groups


# ---------------------------------------------------------------- words and spans
def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and all(unicodedata.category(ch).startswith("P") for ch in stripped)


def word_spans(groups: Sequence[Span]) -> list[Span]:
    """Words from readable groups: a word starts at whitespace (a group that
    starts with it, or after a group that ends with it), and punctuation-only
    groups at the start or end of a word are words of their own ("city" and ".").
    Whitespace-only groups (a newline token) are words of their own. Scripts
    written without spaces (Chinese, Japanese) stay one word per run: pass your
    own spans to split them.

    Returns: list of :class:`Span` (text with its leading whitespace, positions).
    """
    chunks: list[list[Span]] = []
    for group in groups:
        new = not chunks or group.text[:1].isspace() or chunks[-1][-1].text[-1:].isspace()
        if new:
            chunks.append([group])
        else:
            chunks[-1].append(group)
    words: list[list[Span]] = []
    for chunk in chunks:
        lead = 0
        while lead < len(chunk) and _is_punctuation(chunk[lead].text):
            lead += 1
        if lead == len(chunk):  # all punctuation: one word
            words.append(chunk)
            continue
        tail = len(chunk)
        while tail > lead and _is_punctuation(chunk[tail - 1].text):
            tail -= 1
        for part in (chunk[:lead], chunk[lead:tail], chunk[tail:]):
            if part:
                words.append(part)
    return [_merge(word) for word in words]


def _merge(groups: Sequence[Span]) -> Span:
    return Span("".join(g.text for g in groups), tuple(p for g in groups for p in g.positions))


def position_spans(groups: Sequence[Span], positions: Sequence[Sequence[int]]) -> list[Span]:
    """Spans of the given token positions, each widened to whole readable groups
    (half a character has no text). ``positions``: one sequence of ints per span;
    spans may overlap. Raises ValueError for an empty span or a position out of range."""
    owner = {p: g for g in groups for p in g.positions}
    n = len(owner)
    spans = []
    for k, span in enumerate(positions):
        if isinstance(span, (int, str)) or len(span) == 0:
            raise ValueError(f"span {k} must be a non-empty sequence of token positions, got {span!r}")
        chosen: list[Span] = []
        for p in sorted(set(int(q) for q in span)):
            if not 0 <= p < n:
                raise ValueError(f"span {k} holds position {p}, outside [0, {n})")
            if owner[p] not in chosen:
                chosen.append(owner[p])
        spans.append(_merge(chosen))
    return spans


def char_spans(groups: Sequence[Span], ranges: Sequence[tuple[int, int]]) -> list[Span]:
    """Spans of character ranges ``[start, end)`` of the joined display text
    (``"".join(g.text for g in groups)``): each span holds the groups that
    overlap its range. Raises ValueError for a range that holds no token."""
    bounds, offset = [], 0
    for group in groups:
        bounds.append((offset, offset + len(group.text), group))
        offset += len(group.text)
    spans = []
    for start, end in ranges:
        chosen = [g for s, e, g in bounds if s < end and e > start and e > s]
        if not chosen:
            raise ValueError(f"character range ({start}, {end}) holds no token of the text (length {offset})")
        spans.append(_merge(chosen))
    return spans


# ---------------------------------------------------------------- aggregation
def aggregation_rule(scope: Optional[str]) -> str:
    """``"l2"`` for "semantic" and "temperature", ``"sum"`` for "fisher".

    Raises ValueError for another scope name (a Captum baseline has none): pass
    ``rule=`` yourself ("sum" fits any additive attribution, such as IG)."""
    if scope in AGGREGATION_RULES:
        return AGGREGATION_RULES[scope]
    raise ValueError(
        f"no aggregation rule for scope {scope!r} (known: {sorted(AGGREGATION_RULES)}); "
        "pass rule='l2' (scores that are norms of a VJP) or rule='sum' (additive scores)"
    )


def aggregate(scores: Any, spans: Sequence[Span], rule: str) -> Tensor:
    """Span scores from token scores.

    Args:
        scores: tensor (..., n): token scores along the last dimension.
        spans: the spans (their ``positions`` index the last dimension).
        rule: ``"l2"``: ``sqrt(Σ s_t²)``, for scores that are L2 norms of the
            rows of one VJP (the norm of the joint perturbation); ``"sum"``:
            ``Σ s_t``, for traces (Fisher) and additive attributions.
    Returns:
        tensor (..., len(spans)), the dtype of ``scores`` (computed in float64).
    """
    if rule not in ("l2", "sum"):
        raise ValueError(f"rule must be 'l2' or 'sum', got {rule!r}")
    s = torch.as_tensor(scores)
    if not spans:
        return s.new_zeros(s.shape[:-1] + (0,))
    wide = s.detach().to(torch.float64)
    columns = []
    for span in spans:
        part = wide[..., list(span.positions)]
        columns.append(part.pow(2).sum(-1).sqrt() if rule == "l2" else part.sum(-1))
    return torch.stack(columns, dim=-1).to(s.dtype)
