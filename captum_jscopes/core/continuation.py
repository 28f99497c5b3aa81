"""The model's own greedy continuation of a prompt, in units a reader reads.

A byte-level BPE model (SmolLM2, GPT-2, Llama 3, Qwen) often predicts a token
that is only part of a character: after "我最喜欢的食物是" SmolLM2's next token
is the first byte of 食, which decodes to U+FFFD. :func:`continuation` extends
the greedy prediction until it is

- ``"token"``: exactly ``min_tokens`` tokens (the next token, as before);
- ``"char"``: a whole character: no byte fragment is left (the decoded text has
  no U+FFFD);
- ``"word"``: a whole word: whole characters up to the next whitespace or
  punctuation (or symbol), at most ``word_tokens`` tokens (8), combining marks
  (Devanagari and Thai vowel signs, accents) kept with their letter. Scripts
  written without spaces (Chinese, Thai) run to punctuation or the cap.

The continuation is then explained as a multi-token target from one
teacher-forced forward (:func:`captum_jscopes.runs.explain.explain_scopes`,
:meth:`captum_jscopes.LLMScopeAttribution.attribute`'s ``next=``).
"""

from __future__ import annotations

import unicodedata
from typing import Any, Optional

import torch
from torch import Tensor

from captum_jscopes.core.forward import module_device
from captum_jscopes.core.model_state import cache_argument, preserved_state
from captum_jscopes.core.tokens import special_token_ids

__all__ = ["NEXT_UNITS", "WORD_TOKENS", "continuation", "check_next", "is_fragment"]

#: what ``next=`` / ``--next`` takes
NEXT_UNITS = ("token", "char", "word")
#: at most this many tokens in a ``"word"`` continuation (combining marks may add a few)
WORD_TOKENS = 8
#: U+FFFD, what a tokenizer decodes a byte fragment to
REPLACEMENT = "\ufffd"


def check_next(next: Any) -> str:
    """``next`` if it is one of :data:`NEXT_UNITS`, else a one-line ValueError."""
    if next not in NEXT_UNITS:
        raise ValueError(f"next must be one of {', '.join(NEXT_UNITS)}, got {next!r}")
    return next


def is_fragment(text: str) -> bool:
    """Whether a decoded token is (or holds) a byte fragment of a character."""
    return REPLACEMENT in text


class _Greedy:
    """The model's greedy tokens after ``ids`` (1, n), one per call, with a KV cache."""

    def __init__(self, model: Any, ids: Tensor) -> None:
        self.model = model
        self.device = module_device(model.get_input_embeddings())
        self.pending = ids.reshape(1, -1).to(self.device)
        self.cache = None
        self.name = cache_argument(model)

    def __call__(self) -> int:
        cache = {self.name: self.cache} if self.name else {}
        out = self.model(input_ids=self.pending, use_cache=self.name is not None, **cache)
        self.cache = getattr(out, self.name, None) if self.name else None
        token = int(out.logits[0, -1].float().argmax())
        if self.cache is None:  # a model without a cache: run the whole sequence again
            self.pending = torch.cat([self.pending, torch.tensor([[token]], device=self.device)], dim=1)
        else:
            self.pending = torch.tensor([[token]], device=self.device)
        return token


def _word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LMN"


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def continuation(
    model: Any,
    tokenizer: Any,
    prompt_ids: Tensor,
    *,
    next: str = "token",
    min_tokens: int = 1,
    word_tokens: int = WORD_TOKENS,
) -> list[int]:
    """The model's greedy continuation of ``prompt_ids``, extended to a whole
    character or word.

    Args:
        model, tokenizer: a Hugging Face causal LM (not modified) and its tokenizer.
        prompt_ids: (1, n) or (n,) token ids of the prompt as the model sees it
            (BOS, a chat template included).
        next: ``"token"`` (exactly ``min_tokens`` tokens), ``"char"`` (then on to
            the end of a character) or ``"word"`` (then on to the end of a word);
            see the module docstring. Default "token".
        min_tokens: generate at least this many tokens first (``--generate N``).
            Default 1.
        word_tokens: the cap of a ``"word"`` continuation (beyond ``min_tokens``
            tokens), combining marks that follow excepted. Default 8.
    Returns:
        the token ids (at least one). Generation stops before a special token
        (EOS, a chat marker) unless it is the very first one.
    """
    check_next(next)
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
        raise ValueError(f"the number of tokens to generate must be a whole number >= 1, got {min_tokens!r}")
    specials = special_token_ids(tokenizer, getattr(model, "config", None))
    cap = max(word_tokens, min_tokens)
    piece_cap = max(4, cap)  # a piece longer than this never decodes cleanly: taken as it is
    ids: list[int] = []
    text = ""
    with preserved_state(model, grad=False), torch.no_grad():
        step = _Greedy(model, torch.as_tensor(prompt_ids))
        while True:
            piece: list[int] = []
            while True:  # one token ("token"), or the tokens up to the end of a character
                token = step()
                if token in specials:
                    return ids or piece or [token]
                piece.append(token)
                full = _decode(tokenizer, ids + piece)
                added = full[len(text):] if full.startswith(text) else _decode(tokenizer, piece)
                if next == "token" or not is_fragment(added) or len(piece) >= piece_cap:
                    break
            if next == "word" and len(ids) >= min_tokens and not _continues(text, added, len(ids) + len(piece), cap):
                return ids
            ids += piece
            text = full
            if len(ids) >= min_tokens and next != "word":
                return ids
            if len(ids) >= cap + piece_cap:
                return ids


def _continues(text: str, added: str, n_after: int, cap: int) -> bool:
    """Whether the piece ``added`` (whole characters) belongs to the word ``text``
    ends with, the word then being ``n_after`` tokens long."""
    if not added:
        return n_after <= cap
    first = added[0]
    if _is_mark(first):  # a vowel sign or an accent belongs to its letter, past the cap too
        return True
    if n_after > cap:
        return False
    if not text.strip():  # only whitespace so far: the word has not started
        return True
    return _word_char(text[-1]) and _word_char(first)
