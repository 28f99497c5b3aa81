"""In-context time-series forecasting, the paper's case study: write a series
as text an LM can continue, read the continuation back, map token attributions
to one score per value, and seeded test series (Lorenz, logistic map, Brownian
motion).

Serialisation (as in the paper): rescale the series linearly to [0.15, 0.85],
write each value as a 2-digit integer (round(x * 100)), comma-separated, no
spaces, trailing comma: ``[0, 0.5, 1] -> "15,50,85,"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

_VALUE = re.compile(r"[0-9]+")


# ----------------------------------------------------------------------------- serialisation


@dataclass(frozen=True)
class Scaling:
    """The linear map between a series' range [min, max] and [low, high]."""

    min: float
    max: float
    low: float = 0.15
    high: float = 0.85

    def scale(self, values: Any) -> np.ndarray:
        """Series values -> [low, high] (a constant series maps to the middle)."""
        values = np.asarray(values, dtype=np.float64)
        if self.max == self.min:
            return np.full_like(values, (self.low + self.high) / 2)
        return self.low + (values - self.min) / (self.max - self.min) * (self.high - self.low)

    def inverse(self, ints: Any) -> np.ndarray:
        """Written integers (e.g. 15..85) -> series values, float64."""
        scaled = np.asarray(ints, dtype=np.float64) / 100
        if self.max == self.min:
            return np.full_like(scaled, self.min)
        return self.min + (scaled - self.low) / (self.high - self.low) * (self.max - self.min)


def serialize(values: Any, *, low: float = 0.15, high: float = 0.85) -> tuple[str, Scaling]:
    """Write a series as "15,42,85," (see the module docstring).

    Args:
        values: 1-D array-like of finite numbers, length >= 1.
        low, high: the range the series is rescaled to; both times 100 must
            round to 2-digit integers (10..99).

    Returns:
        (text, scaling); ``deserialize(text, scaling)`` gives the series back
        within 0.005 * (max - min) / (high - low).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D series, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("values contain NaN or infinity")
    if not (0.1 <= low < high <= 0.99):
        raise ValueError(f"need 0.1 <= low < high <= 0.99 so every value is 2 digits, got low={low}, high={high}")
    scaling = Scaling(float(array.min()), float(array.max()), float(low), float(high))
    ints = np.rint(scaling.scale(array) * 100).astype(int)
    return "".join(f"{i:02d}," for i in ints), scaling


def deserialize(text: str, scaling: Optional[Scaling] = None) -> np.ndarray:
    """Parse "15,42,85," back into a float64 array.

    Only values closed by a comma count: a trailing incomplete value (as when a
    generation stops mid-number) is ignored. Without ``scaling`` the written
    integers are returned (as floats); with it, the series values.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    pieces = [piece.strip() for piece in text.split(",")[:-1]]
    bad = [piece for piece in pieces if not _VALUE.fullmatch(piece)]
    if bad:
        raise ValueError(f"not a serialised series: {bad[0]!r} is not an integer")
    ints = np.array([int(piece) for piece in pieces], dtype=np.float64)
    return ints if scaling is None else scaling.inverse(ints)


# ----------------------------------------------------------------------------- scores per value


def value_scores(
    text: str,
    token_scores: Any,
    tokenizer: Any = None,
    *,
    offsets: Optional[Sequence[tuple[int, int]]] = None,
    add_special_tokens: bool = True,
) -> np.ndarray:
    """One score per value of a serialised series, from one score per token.

    The score of a value is the sum of the scores of the tokens that overlap its
    digits; tokens that cover only delimiters, spaces or nothing (BOS, offset
    (0, 0)) are left out. A token straddling a comma and a digit (",4") counts
    for the value of its digit; a token covering digits of several values is
    split evenly between them, so the total is conserved.

    Args:
        text: the serialised series the scores were computed on.
        token_scores: (seq_len,) scores, a tensor or array-like.
        tokenizer: a Hugging Face tokenizer; ``text`` is re-tokenised with it
            (offsets from ``return_offsets_mapping`` when the tokenizer is fast,
            else by decoding token by token). seq_len must match.
        offsets: instead of a tokenizer, the (start, end) character span of each
            token in ``text``.
        add_special_tokens: how the scores' tokens were encoded (BOS or not).

    Returns:
        (n_values,) float64 array, n_values = number of digit runs in ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    scores = _as_1d_array(token_scores)
    if (tokenizer is None) == (offsets is None):
        raise ValueError("give exactly one of tokenizer or offsets")
    spans = token_offsets(text, tokenizer, add_special_tokens=add_special_tokens) if offsets is None else offsets
    spans = [(int(start), int(end)) for start, end in spans]
    if len(spans) != len(scores):
        raise ValueError(
            f"{len(scores)} token scores for {len(spans)} tokens of the text; score the same "
            f"encoding (add_special_tokens={add_special_tokens})"
        )
    values = [match.span() for match in _VALUE.finditer(text)]
    result = np.zeros(len(values))
    starts = np.array([start for start, _ in values])
    ends = np.array([end for _, end in values])
    for (start, end), score in zip(spans, scores):
        hit = np.flatnonzero((starts < end) & (ends > start))
        if hit.size:
            result[hit] += score / hit.size
    return result


def token_offsets(text: str, tokenizer: Any, *, add_special_tokens: bool = True) -> list[tuple[int, int]]:
    """(start, end) character span in ``text`` of each token of ``tokenizer(text)``;
    special tokens get an empty span."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        # Some tokenizers give a special token a non-empty span; it covers no text of ours.
        return [
            (0, 0) if token in special else (int(start), int(end))
            for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
        ]
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return offsets_by_decoding(text, ids, tokenizer)


def offsets_by_decoding(text: str, ids: Sequence[int], tokenizer: Any) -> list[tuple[int, int]]:
    """Token spans for tokenizers without offset mapping: token i covers what
    decoding ids[:i+1] adds to decoding ids[:i] (special tokens skipped)."""
    decoded = [""] + [tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for i in range(len(ids))]
    if decoded[-1] != text:
        raise ValueError("the tokenizer does not decode back to the text; cannot align tokens to values")
    return [(len(decoded[i]), len(decoded[i + 1])) for i in range(len(ids))]


def _as_1d_array(token_scores: Any) -> np.ndarray:
    if isinstance(token_scores, torch.Tensor):
        token_scores = token_scores.detach().to("cpu", torch.float64).numpy()
    scores = np.asarray(token_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"token_scores must be 1-D (seq_len,), got shape {scores.shape}; pass one row of a batch")
    return scores


# ----------------------------------------------------------------------------- test series


def lorenz(
    n: int,
    *,
    dt: float = 0.01,
    seed: int = 0,
    component: int = 0,
    burn_in: int = 1000,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
) -> np.ndarray:
    """(n,) samples of one coordinate (0: x, 1: y, 2: z) of the Lorenz system,
    integrated with RK4 at step ``dt`` from a random start drawn with ``seed``,
    after ``burn_in`` steps that bring it onto the attractor."""
    _check_length(n)
    if component not in (0, 1, 2):
        raise ValueError(f"component must be 0, 1 or 2 (x, y, z), got {component!r}")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    if not (isinstance(burn_in, int) and burn_in >= 0):
        raise ValueError(f"burn_in must be an int >= 0, got {burn_in!r}")

    def velocity(s: np.ndarray) -> np.ndarray:
        x, y, z = s
        return np.array([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    state = np.random.default_rng(seed).uniform(-10, 10, 3) + np.array([0.0, 0.0, 25.0])
    out = np.empty(n)
    for step in range(burn_in + n):
        k1 = velocity(state)
        k2 = velocity(state + dt / 2 * k1)
        k3 = velocity(state + dt / 2 * k2)
        k4 = velocity(state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if step >= burn_in:
            out[step - burn_in] = state[component]
    return out


def logistic_map(n: int, *, r: float = 3.8, x0: Optional[float] = None, seed: int = 0) -> np.ndarray:
    """(n,) iterates x[t+1] = r x[t] (1 - x[t]) from x[0] = x0 (default: drawn
    uniformly in (0.1, 0.9) with ``seed``). r = 3.8 is chaotic."""
    _check_length(n)
    if not 0 < r <= 4:
        raise ValueError(f"r must be in (0, 4] to keep the map in (0, 1), got {r}")
    if x0 is None:
        x0 = float(np.random.default_rng(seed).uniform(0.1, 0.9))
    if not 0 < x0 < 1:
        raise ValueError(f"x0 must be in (0, 1), got {x0}")
    out = np.empty(n)
    out[0] = x0
    for t in range(1, n):
        out[t] = r * out[t - 1] * (1 - out[t - 1])
    return out


def brownian_motion(n: int, *, seed: int = 0, sigma: float = 1.0) -> np.ndarray:
    """(n,) random walk starting at 0 with independent N(0, sigma^2) steps."""
    _check_length(n)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    steps = np.random.default_rng(seed).normal(0.0, sigma, n - 1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def _check_length(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
