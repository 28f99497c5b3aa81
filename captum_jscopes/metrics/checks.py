"""Input checks shared by the metrics: one prompt, a position, a score vector,
fractions, an order. Each returns the value in the one form the metrics use, or
raises a ValueError / TypeError that names the argument."""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence, Union

import torch
from torch import Tensor, nn

from captum_jscopes.core.forward import prepare_inputs

__all__ = [
    "Scores",
    "as_real_vector",
    "check_fractions",
    "check_order",
    "check_position",
    "check_prompt",
    "check_scores",
]

Scores = Union[Tensor, Sequence[float], Any]  # anything torch.as_tensor takes


def check_prompt(model: nn.Module, input_ids: Any) -> Tensor:
    """(n,) or (1, n) integer ids -> (n,) on the device of the model's embedding."""
    if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        raise ValueError(
            f"input_ids must be one prompt, shape (n,) or (1, n); got {tuple(input_ids.shape)} "
            "(call the metric once per prompt)"
        )
    ids, _ = prepare_inputs(model, input_ids, None)
    if ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one prompt, shape (n,) or (1, n); got {tuple(input_ids.shape)}")
    return ids[0]


def check_position(position: Any, n: int) -> int:
    """Python-style index (ints, numpy ints, 0-d int tensors) -> [0, n)."""
    try:
        if isinstance(position, bool):
            raise TypeError
        position = operator.index(position)
    except TypeError:
        raise TypeError(f"position must be an int, got {type(position).__name__}") from None
    if not -n <= position < n:
        raise ValueError(f"position {position} is out of range for a prompt of {n} tokens")
    return position % n


def as_real_vector(values: Any, name: str) -> Tensor:
    """A tensor, array or sequence of finite real numbers, shape (n,) or (1, n)
    -> float64 CPU (n,)."""
    if values is None:
        raise TypeError(f"{name} must be a tensor or sequence of numbers, got None")
    try:
        t = values.detach() if isinstance(values, Tensor) else torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor or sequence of numbers: {err}") from err
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,) or (1, n), got shape {tuple(t.shape)}")
    t = t.to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN or inf at positions {bad}")
    return t


def check_scores(scores: Scores, n: int, name: str = "scores") -> Tensor:
    """n finite real scores -> float64 CPU (n,)."""
    s = as_real_vector(scores, name)
    if s.shape[0] != n:
        raise ValueError(f"{name} must have one value per prompt token ({n}), got {s.shape[0]}")
    return s


def check_fractions(fractions: Any, *, allow_zero: bool, name: str = "fractions") -> tuple[float, ...]:
    """Finite distinct numbers in (0, 1] (or [0, 1]) -> ascending tuple."""
    if isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
        fractions = (fractions,)
    try:
        values = [float(f) for f in fractions]
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of numbers, got {fractions!r}") from err
    if not values:
        raise ValueError(f"{name} is empty")
    low = "[0, 1]" if allow_zero else "(0, 1]"
    for f in values:
        if not (math.isfinite(f) and (0.0 <= f if allow_zero else 0.0 < f) and f <= 1.0):
            raise ValueError(f"{name} must lie in {low}, got {f}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} contain duplicates: {values}")
    return tuple(sorted(values))


def check_order(order: Any) -> str:
    if order not in ("most", "least"):
        raise ValueError(f"order must be 'most' (most relevant first) or 'least', got {order!r}")
    return order
