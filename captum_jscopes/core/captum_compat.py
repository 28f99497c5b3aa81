"""Every use of Captum's private API, in one place.

Captum's LLM wrapper keeps a few helpers we need private: resolving a target
(string, ids or None = generate) and formatting a Captum input for the model.
They may change in any Captum release, so they are reached only through the
functions below, and ``tests/test_repository.py`` fails when the installed
Captum is not the version they were checked against (:data:`CAPTUM_VERSION`,
pinned in pyproject.toml): re-check this module, then update the pin and the
constant.

Output token texts (:func:`pretty_tokens`) are not Captum's
``_convert_ids_to_pretty_tokens`` but the same form made by
:func:`captum_jscopes.core.text.output_token_texts`: in Captum 0.9 its
fallback indexes past the end of the ids when the last one is a fragment of a
multi-byte character (a predicted next token such as the first byte of an
emoji), so a prompt whose prediction is such a fragment could not be explained.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from captum.attr import LLMGradientAttribution
from torch import Tensor

from captum_jscopes.core.text import output_token_texts

#: The Captum release whose private API this module was checked against.
CAPTUM_VERSION = "0.9.0"

__all__ = ["CAPTUM_VERSION", "pretty_tokens", "target_token_ids", "prompt_token_ids"]


def pretty_tokens(ids: Union[Tensor, Sequence[int]], tokenizer: Any) -> list[str]:
    """One display string per token id, in Captum's style, never raising
    (:func:`captum_jscopes.core.text.output_token_texts`)."""
    return output_token_texts(ids, tokenizer)


def target_token_ids(
    attribution: LLMGradientAttribution, inp: Any, target: Union[str, Tensor, None], gen_args: Optional[dict]
) -> Tensor:
    """(m,) int64 ids of the continuation Captum's wrapper would explain: the
    encoded ``target`` string, the given ids, or ``gen_args`` generation when
    ``target`` is None."""
    return attribution._get_target_tokens(inp, target, gen_args).flatten().long()


def prompt_token_ids(attribution: LLMGradientAttribution, inp: Any) -> Tensor:
    """(1, n) ids of a Captum input as the wrapper feeds them to the model."""
    return attribution._format_model_input(inp.to_model_input())["input_ids"]
