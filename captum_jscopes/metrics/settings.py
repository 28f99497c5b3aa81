"""How a token is removed, carried through every metric as one object.

:class:`AblationSettings` holds the five choices every faithfulness metric
shares (ablation mode, replacement token, tokenizer, special tokens, batch
size). Each metric takes ``settings=`` and, for convenience, the same five names
as keyword overrides, so ``aopc(model, ids, scores, mode="token")`` and
``aopc(model, ids, scores, settings=AblationSettings(mode="token"))`` are the
same call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor, nn

from captum_jscopes.core.settings import Settings

__all__ = ["ABLATION_MODES", "AblationSettings", "replacement_token_id"]

ABLATION_MODES = ("zero", "token", "mask")


def replacement_token_id(tokenizer: Any = None, config: Any = None) -> Optional[int]:
    """The token that ``mode="token"`` substitutes for ablated tokens: the
    tokenizer's pad token, else its unk token, else its eos token; without a
    tokenizer, the config's ``pad_token_id``, else ``eos_token_id`` (the first one
    if it is a list). None when none of these exists."""
    sources = []
    if tokenizer is not None:
        sources += [getattr(tokenizer, f"{kind}_token_id", None) for kind in ("pad", "unk", "eos")]
    if config is not None:
        sources += [getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)]
    for value in sources:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class AblationSettings(Settings):
    """How the metrics ablate tokens and batch the ablated prompts.

    Attributes:
        mode: how a token is removed. ``"zero"`` (default, the paper's): its
            input embedding (the output of ``model.get_input_embeddings()``, so
            Gemma's sqrt(d) scaling is included) becomes the zero vector.
            ``"token"``: its id becomes ``replacement_id``. ``"mask"``: its
            attention-mask entry becomes 0, positions are kept.
        tokenizer: source of the special tokens (else the model config), of the
            ``"token"`` replacement, and of string targets. Default None.
        include_special: also rank and ablate special tokens (BOS, ...).
            Default False: they act as attention sinks and stay.
        replacement_id: the token ``"token"`` mode writes; default
            :func:`replacement_token_id` of the tokenizer / config.
        batch_size: ablated variants per forward. Default 16.
    """

    mode: str = "zero"
    tokenizer: Any = field(default=None, repr=False, compare=False)
    include_special: bool = False
    replacement_id: Optional[int] = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in ABLATION_MODES:
            raise ValueError(f"unknown ablation mode {self.mode!r}; choose one of {ABLATION_MODES}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.include_special, bool):
            raise TypeError(f"include_special must be a bool, got {type(self.include_special).__name__}")

    def replacement(self, model: nn.Module) -> Optional[int]:
        """The replacement id of ``"token"`` mode, checked against the model's
        vocabulary; None in the other modes."""
        if self.mode != "token":
            return None
        replacement_id = self.replacement_id
        if replacement_id is None:
            replacement_id = replacement_token_id(self.tokenizer, getattr(model, "config", None))
            if replacement_id is None:
                raise ValueError(
                    "mode='token' needs a replacement token: the tokenizer/config has no pad, unk or eos "
                    "token; pass replacement_id="
                )
        if isinstance(replacement_id, Tensor) and replacement_id.numel() == 1:
            replacement_id = int(replacement_id.item())
        if isinstance(replacement_id, bool) or not isinstance(replacement_id, int):
            raise TypeError(f"replacement_id must be an int token id, got {type(replacement_id).__name__}")
        vocab = model.get_input_embeddings().weight.shape[0]
        if not 0 <= replacement_id < vocab:
            raise ValueError(f"replacement_id {replacement_id} is outside the vocabulary [0, {vocab})")
        return replacement_id
