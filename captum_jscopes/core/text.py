"""The one home of a token's readable text: what every view (pictures, HTML,
the interactive page, listings, JSON) shows for a token.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen) split a character
outside ASCII into several tokens: '🍣' after a space is 'ĠðŁ' + 'į' + '£', and
no one of them is text on its own. This module

* groups token positions into the smallest runs that decode cleanly (without
  U+FFFD) and gives each group its text (:func:`readable_groups`, :class:`Span`),
  from which every view takes a readable text per token (:func:`token_display`,
  :func:`readable_tokens`, :func:`token_labels`);
* decodes one raw piece on its own (:func:`display_token`: 'Ġthe' -> ' the');
* gives the readable texts of a Captum result (:func:`input_texts`,
  :func:`output_texts`, :func:`result_texts`), the numbered labels of a prompt
  (:func:`prompt_labels`) and Captum-style output tokens that never raise, even
  for a token that is only part of a character (:func:`output_token_texts`).

How a token's text is drawn in a box (spaces as gaps, newlines as a mark) is in
:mod:`captum_jscopes.display.labels`; word and span grouping and score
aggregation are in :mod:`captum_jscopes.results.spans`. This module draws nothing.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

from torch import Tensor

__all__ = [
    "Span",
    "CONTINUATION_MARK",
    "OVERLAP_MARK",
    "readable_groups",
    "groups_from_display",
    "token_display",
    "token_labels",
    "display_token",
    "display_piece",
    "readable_tokens",
    "input_texts",
    "output_texts",
    "result_texts",
    "prompt_labels",
    "output_token_texts",
    "token_pieces",
    "byte_decoder",
    "piece_text",
]

#: label of the 2nd, 3rd ... token of a group in pictures (its text is on the first)
CONTINUATION_MARK = "·"

#: Captum's mark on an output token that shares a character with the token
#: before it (``"🍣 [OVERLAP]"``); :func:`output_token_texts` writes it too
OVERLAP_MARK = " [OVERLAP]"

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


def display_token(token: str) -> str:
    """The text a raw tokenizer piece stands for on its own: 'Ġthe' -> ' the',
    'Ċ' -> newline, '▁the' (SentencePiece) -> ' the', '<0x0A>' -> newline,
    'âĢĻ' -> '’'. A piece that is not valid text alone (part of a multi-byte
    character, 'ĠâĢ') keeps its raw form, with only the space/newline markers
    replaced (' âĢ'); :func:`readable_groups` joins such pieces with their neighbours.
    """
    return _groups_from_pieces([token])[0].text


#: the same function under the name :mod:`captum_jscopes.results.spans` gave it
display_piece = display_token


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


# ---------------------------------------------------------------- per token
def readable_tokens(tokens: Any, tokenizer: Any = None) -> list[str]:
    """Readable text per token (n,): the text of a run of tokens that only
    together decode cleanly is on its first token, "" on the others, so that
    ``"".join`` of it is the decoded text.

    Args:
        tokens: n raw pieces, or n ids with ``tokenizer`` (as in :func:`readable_groups`).
        tokenizer: optional Hugging Face tokenizer. Default None: the pieces are decoded.
    """
    tokens = tokens.flatten().tolist() if isinstance(tokens, Tensor) else list(tokens)
    return token_display(readable_groups(tokens, tokenizer), len(tokens))


def input_texts(tokens: Sequence[str], inp: Any = None) -> list[str]:
    """Readable text per input token of a Captum result (n,), as in
    :func:`readable_tokens`. The tokenizer of Captum's input ``inp`` (if any)
    decodes them, by id when ``inp.itp_tensor`` holds ids that spell exactly
    these pieces (a fast tokenizer then groups by offsets), else by piece."""
    tokens = list(tokens)
    tokenizer = getattr(inp, "tokenizer", None)
    return readable_tokens(_input_ids(tokens, inp, tokenizer) or tokens, tokenizer)


def _input_ids(tokens: list[str], inp: Any, tokenizer: Any) -> Optional[list[int]]:
    """The input token ids from ``inp`` when they match the input tokens."""
    itp = getattr(inp, "itp_tensor", None)
    if tokenizer is None or not isinstance(itp, Tensor) or itp.numel() != len(tokens):
        return None
    ids = itp.flatten().tolist()
    return ids if tokenizer.convert_ids_to_tokens(ids) == tokens else None


def output_texts(tokens: Sequence[str], target: Any = None) -> list[str]:
    """Readable text per output token (m,), leading spaces kept (``[" New", " York"]``).

    Args:
        tokens: m output tokens: raw pieces, or Captum's display tokens (stripped,
            a newline written '\\n', the 2nd part of a split character marked
            :data:`OVERLAP_MARK`).
        target: the decoded target text, if known (``metadata["target"]``):
            cut along the tokens, it restores the spaces stripped tokens lack.
    Returns:
        ``target`` cut along the tokens when they spell it (a token marked
        :data:`OVERLAP_MARK` gets "", as in :func:`readable_tokens`), else the
        tokens decoded as pieces (:func:`readable_tokens`).
    """
    tokens = list(tokens)
    if isinstance(target, str):
        cut = _cut_along(target, tokens)
        if cut is not None:
            return cut
    return readable_tokens(tokens)


def _cut_along(target: str, tokens: list[str]) -> Optional[list[str]]:
    """Cut ``target`` into one piece per token, or None if the tokens do not spell it.
    Whitespace between the tokens goes to the later one: [' New', ' York']."""
    out, cursor = [], 0
    for token in tokens:
        if token.endswith(OVERLAP_MARK):
            out.append("")
            continue
        core = display_token(token).replace("\\n", "\n").strip(" ")
        found = target.find(core, cursor) if core else cursor
        if found < 0 or target[cursor:found].strip():
            return None
        end = found + len(core) if core else min(cursor + 1, len(target))
        out.append(target[cursor:end])
        cursor = end
    if target[cursor:].strip() or not out:
        return None
    out[-1] += target[cursor:]
    return out


def result_texts(result: Any) -> tuple[list[str], list[str]]:
    """(input texts (n,), output texts (m,)) of any Captum ``LLMAttributionResult``:
    a :class:`~captum_jscopes.results.result.ScopeResult` gives its own
    ``input_display``/``output_display``; another result is decoded with
    :func:`input_texts` and :func:`output_texts` (its ``metadata["target"]``, if any)."""
    inputs = getattr(result, "input_display", None)
    if inputs is None:
        inputs = input_texts(result.input_tokens, getattr(result, "inp", None))
    outputs = getattr(result, "output_display", None)
    if outputs is None:
        target = (getattr(result, "metadata", None) or {}).get("target")
        outputs = output_texts(result.output_tokens, target)
    return list(inputs), list(outputs)


def prompt_labels(ids: Any, tokenizer: Any) -> list[str]:
    """A label per prompt token (n,) for listings: its readable text, and for the
    tokens of one character the character and the token's place in it
    (``" 🍣 (2/3)"``, :func:`token_labels` with ``numbered=True``). Never raises:
    the ids as strings when there is no tokenizer or it cannot name these ids.

    Args:
        ids: n token ids (list of int or tensor of any shape, flattened).
        tokenizer: a Hugging Face tokenizer, or None.
    """
    ids = _id_list(ids)
    if tokenizer is not None:
        try:
            return token_labels(readable_tokens(ids, tokenizer), numbered=True)
        except Exception:  # a tokenizer that cannot name these ids: fall back to the ids
            pass
    return [str(i) for i in ids]


def output_token_texts(ids: Any, tokenizer: Any) -> list[str]:
    """One readable string per id (m,), in the form Captum labels output tokens
    with (its ``_convert_ids_to_pretty_tokens``), but never raising.

    Per group of ids that only together decode cleanly (:func:`readable_groups`):
    the group's text, stripped, a newline written '\\n', on its first id, and the
    same text + :data:`OVERLAP_MARK` on the others (``["🍣", "🍣 [OVERLAP]",
    "🍣 [OVERLAP]"]``; :func:`output_texts` reads this back). An id that is only
    part of a character and never completes one (a model may predict the first
    bytes of a Chinese character, 'ç', and stop) shows its bytes escaped:
    'ç' -> ``"\\xe7"``, 'Ġì' -> ``"\\xec"``, 'ãĥ' -> ``"\\xe3\\x83"`` (byte-level
    BPE and ``<0xNN>`` pieces; any other keeps its decoded text, U+FFFD included).
    An id the tokenizer cannot decode at all shows as ``"<id>"``.

    Args:
        ids: m token ids (sequence of int, or a tensor of any shape, flattened).
        tokenizer: a Hugging Face tokenizer (fast or slow).
    Returns:
        list of m str (empty for no ids).
    """
    ids = _id_list(ids)
    if not ids:
        return []
    try:
        groups = readable_groups(ids, tokenizer)
    except Exception:  # a tokenizer that cannot decode runs: every id on its own
        groups = [Span(_decode_one(tokenizer, i), (k,)) for k, i in enumerate(ids)]
    out = [""] * len(ids)
    for group in groups:
        text = group.text
        if "\ufffd" in text and len(group.positions) == 1:
            text = _fragment_text(tokenizer, ids[group.positions[0]], text)
        shown = text.replace("\n", "\\n").strip()
        for j, pos in enumerate(group.positions):
            out[pos] = shown if j == 0 else shown + OVERLAP_MARK
    return out


def token_pieces(ids: Any, tokenizer: Any) -> list[str]:
    """The raw tokenizer piece of each id (``'ĠParis'``, the form
    ``ScopeResult.input_tokens`` hold): lossless, what a result's
    ``output_tokens`` hold; its readable text is :func:`output_texts`'s. An id
    without a piece (past the tokenizer's vocabulary) gets its decoded text, or
    ``"<id>"``."""
    pieces = []
    for token_id in _id_list(ids):
        try:
            piece = tokenizer.convert_ids_to_tokens(token_id)
        except Exception:  # an id the tokenizer does not know
            piece = None
        pieces.append(piece if isinstance(piece, str) else _decode_one(tokenizer, token_id))
    return pieces


def _id_list(ids: Any) -> list[int]:
    if isinstance(ids, Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    return [int(i) for i in ids]


def _decode_one(tokenizer: Any, token_id: int) -> str:
    """The id decoded alone, or ``"<id>"`` when the tokenizer cannot decode it."""
    try:
        return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    except Exception:  # an id outside the vocabulary, or no tokenizer
        return f"<{token_id}>"


def _fragment_text(tokenizer: Any, token_id: int, decoded: str) -> str:
    """Text of an id that holds part of a character: its bytes, the invalid
    ones escaped (``"\\xe7"``), when its piece names bytes (byte-level BPE or
    ``<0xNN>``); else ``decoded`` (with U+FFFD)."""
    try:
        piece = tokenizer.convert_ids_to_tokens(token_id)
    except Exception:  # no piece for this id: keep what decoding gave
        return decoded
    if not isinstance(piece, str) or not piece:
        return decoded
    decoder = byte_decoder()
    if not (_SP_BYTE.match(piece) or all(ch in decoder for ch in piece)):
        return decoded
    return _piece_bytes(piece, byte_level=True).decode("utf-8", errors="backslashreplace")
