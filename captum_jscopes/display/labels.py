"""How a token's readable text is drawn in a box: its label (spaces become a
word gap, a newline :data:`NEWLINE_MARK`, long text is cut) and the labels of a
whole row of tokens. The readable text itself comes from
:mod:`captum_jscopes.core.text`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from captum_jscopes.core.text import CONTINUATION_MARK, token_labels

__all__ = ["NEWLINE_MARK", "MAX_LABEL_CHARS", "TokenLabel", "token_label", "box_labels"]

#: drawn for a newline inside a token's box or label
NEWLINE_MARK = "⏎"

#: longer box labels are cut with "…" so one box never fills a line
MAX_LABEL_CHARS = 30


@dataclass
class TokenLabel:
    """How one token is drawn in a box: its text, whether a word starts there
    (a leading space, drawn as a wider gap) and whether a line break follows."""

    text: str
    word_start: bool
    newline_after: bool


def token_label(text: str, limit: Optional[int] = MAX_LABEL_CHARS) -> TokenLabel:
    """The box label of a token's readable text (a raw piece: decode it first
    with :func:`~captum_jscopes.core.text.display_token`). Leading spaces become
    ``word_start``, a newline :data:`NEWLINE_MARK`, a tab '→', a token of spaces
    only '␣' per space; text longer than ``limit`` characters (default
    :data:`MAX_LABEL_CHARS`; None: no limit) is cut with '…'."""
    stripped = text.lstrip(" ")
    word_start = len(stripped) < len(text)
    newline_after = text.endswith("\n")
    shown = stripped.replace("\r", "\\r").replace("\n", NEWLINE_MARK).replace("\t", "→")
    if not shown:  # a token made only of spaces
        shown, word_start = "␣" * len(text), False
    if limit is not None and len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return TokenLabel(shown, word_start, newline_after)


def box_labels(display: Sequence[str]) -> list[TokenLabel]:
    """Box labels of readable tokens (n,): the 2nd, 3rd ... token of a group
    ("" in ``display``) shows :data:`CONTINUATION_MARK` and sits close to the
    first (no word gap)."""
    labels = []
    for text, shown in zip(display, token_labels(display)):
        if text == "" and shown == CONTINUATION_MARK:
            labels.append(TokenLabel(shown, False, False))
        else:
            labels.append(token_label(text))
    return labels
