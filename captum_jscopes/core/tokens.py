"""Token-level helpers shared by the scopes, the Captum wrapper and the metrics:
which tokens are special (attention sinks), and how a user's target becomes a
token id."""

from __future__ import annotations

from typing import Any, Iterable, Union

import torch
from torch import Tensor

TargetLike = Union[int, str, Tensor]


def special_token_ids(tokenizer: Any = None, config: Any = None) -> set[int]:
    """Ids of the special tokens (BOS, EOS, PAD, chat markers, ...).

    Taken from ``tokenizer.all_special_ids`` when a tokenizer is given, else from
    the ``bos/eos/pad_token_id`` fields of the model config.
    """
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    if config is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, Iterable):
                ids.update(int(v) for v in value)
    return ids


def special_tokens_mask(
    input_ids: Tensor, tokenizer: Any = None, config: Any = None
) -> Tensor:
    """Bool tensor shaped like ``input_ids``: True where the token is special."""
    ids = sorted(special_token_ids(tokenizer, config))
    if not ids:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))


def resolve_target(target: TargetLike, tokenizer: Any, vocab_size: int) -> int:
    """Turn a target (token id, 0-d tensor, or a string that encodes to exactly
    one token) into a token id, or raise a ValueError that says why not."""
    if isinstance(target, Tensor):
        if target.numel() != 1:
            raise ValueError(
                f"a tensor target must hold exactly one token id, got shape {tuple(target.shape)}"
            )
        target = int(target.item())
    if isinstance(target, bool):
        raise TypeError("target must be a token id or a string, not a bool")
    if isinstance(target, int):
        if not 0 <= target < vocab_size:
            raise ValueError(f"target token id {target} is outside the vocabulary [0, {vocab_size})")
        return target
    if isinstance(target, str):
        if tokenizer is None:
            raise ValueError(
                f"target {target!r} is a string: pass tokenizer= to the scope to encode it, "
                "or give a token id"
            )
        ids = encode_target(tokenizer, target)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"target {target!r} encodes to {len(ids)} tokens {pieces}; a scope explains one "
                "next-token prediction: pick one of these pieces (or its id), or use "
                "LLMScopeAttribution for a multi-token target"
            )
        return resolve_target(int(ids[0]), tokenizer, vocab_size)
    raise TypeError(f"target must be an int, a str or a one-element tensor, not {type(target).__name__}")


class InputError(ValueError):
    """A prompt or target that cannot be explained as given (an empty target, one
    outside the model's vocabulary, a prompt of special tokens only): the input is
    wrong, not the computation. A ValueError; ``jscopes`` exits with status 2 for
    it, as for a bad flag value."""


def encode_target(tokenizer: Any, target: str) -> list[int]:
    """Token ids of a target string, without special tokens (several for a
    multi-token target). Raises :class:`InputError` (a ValueError) if it is empty,
    encodes to nothing, or holds a word the vocabulary lacks (it encodes to the
    unknown token while the text does not spell that token)."""
    if not isinstance(target, str):
        raise TypeError(f"target must be a str, not {type(target).__name__}")
    if target == "":
        raise InputError("the target is an empty string")
    ids = list(tokenizer.encode(target, add_special_tokens=False))
    if not ids:
        raise InputError(f"the target {target!r} encodes to no tokens")
    unk_id, unk = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if unk_id is not None and unk_id in ids and (not unk or unk not in target):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise InputError(f"the target {target!r} is not in the model's vocabulary: it encodes to {pieces}")
    return ids

