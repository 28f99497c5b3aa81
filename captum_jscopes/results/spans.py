"""Scores of words or any span of tokens.

The readable text of tokens (byte-level pieces merged into the characters they
spell, :class:`~captum_jscopes.core.text.Span` groups) is in
:mod:`captum_jscopes.core.text`; this module

* groups those readable runs into words (:func:`word_spans`) or into spans the
  user chooses (:func:`position_spans`, :func:`char_spans`);
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

import unicodedata
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from captum_jscopes.scopes.registry import SCOPES
from captum_jscopes.core.text import Span

__all__ = [
    "word_spans",
    "position_spans",
    "char_spans",
    "aggregation_rule",
    "aggregate",
]

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
def aggregation_rule(scope: Optional[str], settings: Optional[Mapping[str, Any]] = None) -> str:
    """The span rule of the registered scope named ``scope`` under the options its
    result was made with (``settings``, the JSON settings: ``reduce`` and the
    scope's own): ``"l2"`` for "semantic" and "temperature" (norms of one VJP),
    ``"sum"`` for "fisher" (a trace) and for every scope under ``reduce="input"``
    (first-order effects of deleting tokens add up).

    Raises ValueError for a name no scope is registered under (a Captum baseline
    has none): pass ``rule=`` yourself ("sum" fits any additive attribution, such as IG)."""
    if scope in SCOPES:
        cls = SCOPES[scope]
        given = {k: v for k, v in (settings or {}).items() if k in ("rules", "reduce")}
        return cls.span_rule_of(cls.make_options(**given))
    raise ValueError(
        f"no aggregation rule for scope {scope!r} (registered scopes: {sorted(SCOPES)}); "
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
