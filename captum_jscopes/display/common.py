"""Small helpers shared by the display modules (this package only): score
checks, the colour scale every picture and page uses (so PNG and HTML agree),
and the parts of a Captum result a picture reads.

Scores that are all >= 0 use a sequential colour map starting at 0; signed
scores (e.g. Integrated Gradients, Feature Ablation) use a diverging map
centred at 0. The colour scale ends at the 99th percentile of |score| (larger
scores clip, and the colour bar says so), so one attention sink does not wash
out a long prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import matplotlib
import numpy as np
from captum.attr import LLMAttributionResult
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from captum_jscopes.core.text import result_texts

PathLike = Union[str, Path]

DIVERGING_CMAP = "PiYG"  # negative pink/red, positive green, like Captum's own plots
TARGET_COLOR = "#d62728"  # red


def as_scores(scores: Any, n: Optional[int] = None, name: str = "scores") -> np.ndarray:
    """1-D float64 numpy copy of a tensor / array / list; checks length and NaN."""
    if hasattr(scores, "detach"):  # torch tensor, any dtype or device
        scores = scores.detach().float().cpu().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values for {n} tokens")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or inf")
    return arr


#: default colour-scale end: this quantile of |score| (numpy "higher" method,
#: so prompts of up to 100 tokens end at their largest score)
CLIP_QUANTILE = 0.99


@dataclass
class Scale:
    """The colour scale: ``top`` is the score at the dark end; ``note`` says how
    it was chosen when scores above it clip (None when nothing clips)."""

    top: float
    note: Optional[str]


def color_scale(arr: np.ndarray, vmax: Optional[float], clip_quantile: Optional[float]) -> Scale:
    """Where the colour scale ends. An explicit ``vmax`` wins; else the
    ``clip_quantile`` quantile of |score| (None: the largest |score|). On a
    3000-token prompt the largest score is often one attention sink 10-100x the
    rest, which would leave every other box white; the top 1% clip instead."""
    magnitudes = np.abs(arr)
    largest = float(magnitudes.max()) if arr.size else 0.0
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be > 0, got {vmax}")
        top, how = float(vmax), f"clipped at vmax = {float(vmax):.3g}"
    elif clip_quantile is not None and arr.size:
        if not 0 < clip_quantile <= 1:
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        top = float(np.quantile(magnitudes, clip_quantile, method="higher"))
        how = f"clipped at the {100 * clip_quantile:g}th percentile of |score|, {top:.3g}"
    else:
        top, how = largest, ""
    if not top > 0:  # all zero, or a quantile that is 0 while a few scores are not
        top = largest if largest > 0 else 1.0
    note = f"{how} (max {largest:.3g})" if largest > top else None
    return Scale(top, note)


def token_colors(
    scores: Any,
    cmap: str = "Blues",
    diverging_cmap: str = DIVERGING_CMAP,
    vmax: Optional[float] = None,
    clip_quantile: Optional[float] = CLIP_QUANTILE,
) -> tuple[np.ndarray, ScalarMappable]:
    """RGBA colour of every score, and the mappable for a colour bar / legend.

    Non-negative scores: ``cmap`` from 0 (white end) to the scale's top. Any
    negative score: ``diverging_cmap`` from -top to +top (0 in the middle). The
    top is ``vmax`` if given, else the ``clip_quantile`` quantile of |score|
    (default 0.99, see ``color_scale``; None: the largest |score|; 1 if all are 0).
    Larger scores clip to the darkest colour.

    Returns: (rgba array (n, 4), ScalarMappable).
    """
    arr = as_scores(scores)
    signed = bool((arr < 0).any())
    top = color_scale(arr, vmax, clip_quantile).top
    norm = Normalize(vmin=-top if signed else 0.0, vmax=top, clip=True)
    mappable = ScalarMappable(norm=norm, cmap=matplotlib.colormaps[diverging_cmap if signed else cmap])
    return mappable.to_rgba(arr), mappable


def text_color(rgba: Sequence[float]) -> str:
    """Black on light boxes, white on dark ones (perceived luminance)."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def check_tokens(tokens: Any) -> list[str]:
    """``tokens`` as a list of str; TypeError / ValueError for anything else or an empty list."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a list of str, not {type(tokens).__name__}")
    if not tokens:
        raise ValueError("tokens is empty: nothing to draw")
    bad = [t for t in tokens if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tokens must hold only str, found {type(bad[0]).__name__} {bad[0]!r}")
    return list(tokens)


# ------------------------------------------------------------------ results
@dataclass
class ResultView:
    """What the pictures and pages read of a Captum result: raw input tokens (n,),
    readable input texts (n,), readable output texts (m,), ``seq_attr`` (n,),
    ``token_attr`` (m, n) or None, ``output_probs`` (m,) or None, and the metadata
    (a plain Captum result has none: {})."""

    input_tokens: list[str]
    input_display: list[str]
    output_display: list[str]
    seq_attr: Any
    token_attr: Any
    output_probs: Any
    metadata: dict


def result_view(result: Any) -> ResultView:
    """The :class:`ResultView` of any Captum ``LLMAttributionResult`` (a ScopeResult
    gives its own texts, any other is decoded: :func:`~captum_jscopes.core.text.result_texts`)."""
    if not isinstance(result, LLMAttributionResult):
        raise TypeError(f"expected a captum LLMAttributionResult, not {type(result).__name__}")
    inputs, outputs = result_texts(result)
    return ResultView(
        list(result.input_tokens), inputs, outputs, result.seq_attr, result.token_attr, result.output_probs,
        dict(getattr(result, "metadata", None) or {}),
    )  # fmt: skip


@dataclass
class Row:
    """What one picture of a result shows: scores (n,), the red target text,
    its probability and a caption that says which scores these are."""

    scores: Any
    target: Optional[str]
    prob: Optional[float]
    caption: Optional[str]


def result_row(result: ResultView, row: Optional[int]) -> Row:
    """For a :class:`ResultView` (or a ScopeResult, which has the same attributes):
    ``seq_attr`` (row=None: all output tokens, their scores summed) or
    ``token_attr[row]`` (one output token, given the prompt and the earlier ones)."""
    outputs = result.output_display
    probs = None if result.output_probs is None else [float(p) for p in result.output_probs]
    m = len(outputs)
    if row is None:
        target = result.metadata.get("target")
        target = target if isinstance(target, str) and target else "".join(outputs) or None
        prob = None if probs is None or not probs else float(np.prod(probs))
        if target is None:  # no output tokens (e.g. a target-free scope): no red box
            return Row(result.seq_attr, None, None, None)
        what = f"{m} tokens, " if m > 1 else ""
        caption = f"target {target!r} ({what}p = {prob:.3g})" if prob is not None else f"target {target!r}"
        caption += contrast_note(result.metadata)
        if m > 1:
            caption += f" · colours: the sum of the {m} target tokens' scores"
        return Row(result.seq_attr, target, prob, caption + view_note(result))
    if result.token_attr is None:
        raise ValueError("row was given but the result has no token_attr")
    m = result.token_attr.shape[0]
    if isinstance(row, bool) or not isinstance(row, int) or not -m <= row < m:
        raise ValueError(f"row must be an int in [0, {m}), got {row!r}")
    row = row % m
    prob = None if probs is None else probs[row]
    caption = f"target token {row + 1} of {m}: {outputs[row]!r}" + ("" if prob is None else f" (p = {prob:.3g})")
    if row > 0:
        caption += f", after {''.join(outputs[:row])!r}"
    caption += " · colours: this token's scores"
    return Row(result.token_attr[row], outputs[row], prob, caption + view_note(result))


def contrast_note(metadata: dict) -> str:
    """' rather than ' conservative' (p = 0.12)' for a contrastive result
    (``metadata["contrast"]``, a (target, foil) pair), with the shared text
    before the two tokens; else ''."""
    contrast = metadata.get("contrast")
    if not isinstance(contrast, dict) or "foil_token" not in contrast:
        return ""
    prob = contrast.get("foil_prob")
    text = f" rather than {contrast['foil_token']!r}" + ("" if prob is None else f" (p = {float(prob):.3g})")
    return text + (f", after {contrast['after']!r}" if contrast.get("after") else "")


_RULE_WORDS = {"l2": "root of the sum of squares", "sum": "sum"}


def view_note(result: ResultView) -> str:
    """' · per word: root of the sum of squares of its tokens' for a word/span view."""
    view = result.metadata.get("view")
    if not isinstance(view, dict) or view.get("rule") not in _RULE_WORDS:
        return ""
    unit = "word" if view.get("unit") == "words" else "span"
    return f" · per {unit}: {_RULE_WORDS[view['rule']]} of its tokens' scores"

