"""Faithfulness metrics for token attributions of causal LMs: remove the tokens an
attribution ranks highest and measure how the model's prediction moves.

Works with scores from ANY method (our scopes, Captum baselines, random): every
metric takes a HF causal LM, one tokenised prompt and a score vector with one
score per prompt token. The spec is ../shared/PAPER.md, "Evaluation protocol of
the paper":

- :func:`aopc` - the paper's AOPC: zero the input embeddings of the top 5/10/20%
  tokens, AOPC = 0.025 (D5 + D10) + 0.05 (D10 + D20) with
  D_f = log p_ablated(y*) - log p_orig(y*). More negative = more faithful.
- :func:`deletion_curve`, :func:`insertion_curve` - the same at any fractions,
  most- or least-relevant first, with their trapezoid areas;
  :func:`deletion_curves` - several methods' curves of one prompt in shared batches.
- :func:`comprehensiveness`, :func:`sufficiency` - ERASER (DeYoung et al. 2020),
  on probabilities.
- :func:`leave_one_out`, :func:`loo_agreement` - ground-truth influence
  KL(P_orig || P_ablated) of each token, and how well scores agree with it.
- :func:`evaluate` - several of these at once, as a dict.

Vocabulary used throughout:

- ``n``: prompt length; ``position``: index of the token whose next-token
  prediction is explained (default -1, the last).
- ``y*`` (``target``): the model's own top-1 prediction at ``position`` on the
  intact prompt, unless a target is given.
- rankable tokens: the tokens at or before ``position`` that are not special
  (BOS, EOS, PAD, ...; see :func:`captum_jscopes.tokens.special_tokens_mask`).
  Only they are ranked and ablated; special tokens act as attention sinks and
  are never removed unless ``include_special=True``. Tokens after ``position``
  cannot influence the prediction of a causal LM, so they are never ranked.
- ``m``: number of rankable tokens. A fraction f of the prompt means the top
  ``max(1, floor(f * m))`` rankable tokens.

Ablation modes (how a token is "removed"):

- ``"zero"`` (the paper's): its input embedding (the output of the model's own
  lookup ``model.get_input_embeddings()``, so Gemma's sqrt(d) scaling is
  included) becomes the zero vector; tokens, positions and attention mask stay.
- ``"token"``: its id becomes a replacement token (``replacement_id``; default
  the tokenizer's pad, else unk, else eos token).
- ``"mask"``: its attention-mask entry becomes 0; ``position_ids`` are passed
  explicitly as 0..n-1 so the other tokens keep their positions.

All ablated variants of a prompt run in batches of ``batch_size`` under
``torch.no_grad()``; log-softmax is taken in float64 at ``position`` only. The
caller's model is never changed: a model in train mode is switched to eval
(dropout off) for the call and every module's flag is restored afterwards,
also on error; parameters, requires_grad, hooks and dtype are not touched.
"""

from __future__ import annotations

import contextlib
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from scipy import stats
from torch import Tensor, nn

from .forward import accepts, prepare_inputs
from .model_state import check_causal_lm
from .tokens import TargetLike, resolve_target, special_tokens_mask

__all__ = [
    "ABLATION_MODES",
    "AOPCResult",
    "CurveResult",
    "EraserResult",
    "LeaveOneOutResult",
    "LooAgreement",
    "ablated_log_probs",
    "ablation_inputs",
    "aopc",
    "comprehensiveness",
    "deletion_curve",
    "deletion_curves",
    "evaluate",
    "insertion_curve",
    "leave_one_out",
    "loo_agreement",
    "n_tokens_for_fraction",
    "rank_tokens",
    "rankable_mask",
    "replacement_token_id",
    "sufficiency",
    "trapezoid_area",
]

ABLATION_MODES = ("zero", "token", "mask")
AOPC_FRACTIONS = (0.05, 0.10, 0.20)
CURVE_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ERASER_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
METRICS = ("aopc", "deletion", "deletion_least", "insertion", "comprehensiveness", "sufficiency", "loo")

Scores = Union[Tensor, Sequence[float], Any]  # anything torch.as_tensor takes


# ====================================================================== results
@dataclass(frozen=True)
class AOPCResult:
    """AOPC of one prompt.

    Attributes:
        aopc: trapezoid area of the deltas over the fractions, unnormalised
            (:func:`trapezoid_area`); for (0.05, 0.10, 0.20) it is
            0.025 (D5 + D10) + 0.05 (D10 + D20). More negative = more faithful.
        fractions: the fractions, ascending.
        n_ablated: tokens ablated at each fraction, ``max(1, floor(f * m))``.
        deltas: ``log p_ablated(y*) - log p_orig(y*)`` at each fraction.
        target: y*, the explained token id.
        log_prob: ``log p_orig(y*)``.
        n_rankable: m, the number of rankable tokens.
    """

    aopc: float
    fractions: tuple[float, ...]
    n_ablated: tuple[int, ...]
    deltas: tuple[float, ...]
    target: int
    log_prob: float
    n_rankable: int


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve of one prompt.

    Attributes:
        kind: "deletion" (tokens removed from the intact prompt) or "insertion"
            (tokens restored into the prompt with every rankable token ablated).
        order: "most" (most relevant first) or "least".
        fractions: the fractions, ascending (0 allowed: nothing removed /
            nothing restored).
        n_tokens: tokens removed (deletion) or restored (insertion) at each
            fraction: 0 for f = 0, else ``max(1, floor(f * m))``.
        log_probs: ``log p(y*)`` at each point.
        probs: ``p(y*)`` at each point.
        deltas: ``log_probs - log p_orig(y*)``.
        area: trapezoid area of ``deltas`` over ``fractions`` (unnormalised, the
            AOPC convention). Deletion: more negative = more faithful.
            Insertion: closer to 0 (higher) = more faithful.
        prob_area: trapezoid area of ``probs`` (the usual deletion / insertion
            AUC when the fractions span [0, 1]).
        target: y*.
        log_prob: ``log p_orig(y*)``.
        n_rankable: m.
    """

    kind: str
    order: str
    fractions: tuple[float, ...]
    n_tokens: tuple[int, ...]
    log_probs: tuple[float, ...]
    probs: tuple[float, ...]
    deltas: tuple[float, ...]
    area: float
    prob_area: float
    target: int
    log_prob: float
    n_rankable: int


@dataclass(frozen=True)
class EraserResult:
    """ERASER comprehensiveness or sufficiency of one prompt (on probabilities).

    Attributes:
        metric: "comprehensiveness" or "sufficiency".
        fractions: the bins, ascending.
        n_tokens: top tokens removed (comprehensiveness) or kept (sufficiency)
            per bin, ``max(1, floor(f * m))``.
        values: ``p(y*|x) - p(y*|x')`` per bin.
        mean: average of ``values`` over the bins. Comprehensiveness: higher =
            more faithful; sufficiency: lower = more faithful.
        prob: ``p(y*|x)`` on the intact prompt.
        target: y*.
        n_rankable: m.
    """

    metric: str
    fractions: tuple[float, ...]
    n_tokens: tuple[int, ...]
    values: tuple[float, ...]
    mean: float
    prob: float
    target: int
    n_rankable: int


@dataclass(frozen=True)
class LeaveOneOutResult:
    """Leave-one-out influence of each token of one prompt.

    Attributes:
        kl: (n,) float64 CPU tensor, ``KL(P_orig || P_ablated)`` at ``position``
            when that token alone is ablated; 0 for tokens that are not rankable.
        rankable: (n,) bool CPU tensor, the tokens that were ablated.
        position: the explained position, non-negative.
        target: y*, the intact prompt's top-1 prediction (the KL uses the whole
            distribution; y* is for reference).
        mode: the ablation mode.
    """

    kl: Tensor
    rankable: Tensor
    position: int
    target: int
    mode: str


@dataclass(frozen=True)
class LooAgreement:
    """How a score vector agrees with leave-one-out influence, over the rankable
    tokens of one prompt.

    Attributes:
        spearman: Spearman rho (NaN if either vector is constant or m < 2).
        kendall: Kendall tau-b (NaN likewise).
        top1_percentile: ``100 * r / m`` where r is the number of tokens whose
            LOO influence is strictly greater than that of the method's top-1
            token. 0 = the method's top token is the LOO top token; lower is
            better; random scores average ``50 (m - 1) / m``.
        top_jaccard: Jaccard overlap |A & B| / |A | B| of the method's and the
            LOO's top ``max(1, floor(top_fraction * m))`` tokens.
        top_fraction: the fraction used for ``top_jaccard`` (default 0.10).
        n_tokens: m, the number of tokens compared.
    """

    spearman: float
    kendall: float
    top1_percentile: float
    top_jaccard: float
    top_fraction: float
    n_tokens: int


# ============================================================ input checking
def _check_prompt(model: nn.Module, input_ids: Any) -> Tensor:
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


def _check_position(position: Any, n: int) -> int:
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


def _as_real_vector(values: Any, name: str) -> Tensor:
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


def _check_scores(scores: Scores, n: int, name: str = "scores") -> Tensor:
    """n finite real scores -> float64 CPU (n,)."""
    s = _as_real_vector(scores, name)
    if s.shape[0] != n:
        raise ValueError(f"{name} must have one value per prompt token ({n}), got {s.shape[0]}")
    return s


def _check_fractions(fractions: Any, *, allow_zero: bool, name: str = "fractions") -> tuple[float, ...]:
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


def _check_mode(mode: Any) -> str:
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose one of {ABLATION_MODES}")
    return mode


def _check_order(order: Any) -> str:
    if order not in ("most", "least"):
        raise ValueError(f"order must be 'most' (most relevant first) or 'least', got {order!r}")
    return order


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


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


def _resolve_replacement(model: nn.Module, mode: str, replacement_id: Any, tokenizer: Any) -> Optional[int]:
    """The replacement id for "token" mode, checked against the vocabulary; None otherwise."""
    if mode != "token":
        return None
    if replacement_id is None:
        replacement_id = replacement_token_id(tokenizer, getattr(model, "config", None))
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


# ============================================================ model state
@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """No grad, dropout off; every module's ``training`` flag restored on exit,
    also on error. Parameters, requires_grad and hooks are not touched."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        if any(flag for _, flag in flags):
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


# ============================================================ ranking
def rankable_mask(
    input_ids: Tensor,
    position: int = -1,
    *,
    tokenizer: Any = None,
    config: Any = None,
    include_special: bool = False,
) -> Tensor:
    """Which tokens may be ranked and ablated.

    Args:
        input_ids: (n,) token ids.
        position: explained position (negative counts from the end). Default -1.
        tokenizer, config: where the special token ids come from.
        include_special: also rank special tokens (BOS, ...). Default False.
    Returns:
        (n,) bool CPU tensor: True at or before ``position`` and (unless
        ``include_special``) not special.
    """
    ids = input_ids.detach().flatten().cpu()
    n = ids.shape[0]
    position = _check_position(position, n)
    mask = torch.arange(n) <= position
    if not include_special:
        mask &= ~special_tokens_mask(ids, tokenizer, config)
    return mask


def rank_tokens(scores: Tensor, rankable: Tensor, order: str = "most") -> Tensor:
    """Positions of the rankable tokens sorted by score.

    Args:
        scores: (n,) real scores.
        rankable: (n,) bool.
        order: "most" (highest score first, default) or "least".
    Returns:
        (m,) int64 CPU positions. Ties keep the earlier position first, so the
        ranking is deterministic.
    """
    order = _check_order(order)
    positions = rankable.cpu().nonzero().flatten()
    values = scores.detach().cpu().to(torch.float64)[positions]
    key = -values if order == "most" else values
    return positions[torch.sort(key, stable=True).indices]


def n_tokens_for_fraction(fraction: float, m: int) -> int:
    """Tokens a fraction stands for: 0 for 0, else ``max(1, floor(fraction * m))``.

    A 1e-9 slack absorbs float error (0.29 * 100 = 28.999999999999996 -> 29).
    """
    if fraction <= 0:
        return 0
    return min(m, max(1, math.floor(fraction * m + 1e-9)))


def trapezoid_area(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Unnormalised trapezoid area ``sum_i (f[i+1] - f[i]) (v[i] + v[i+1]) / 2``.

    For fractions (0.05, 0.10, 0.20) and deltas (D5, D10, D20) this is the
    paper's AOPC ``0.025 (D5 + D10) + 0.05 (D10 + D20)``. One point gives 0.
    """
    if len(fractions) != len(values):
        raise ValueError(f"{len(fractions)} fractions but {len(values)} values")
    return float(
        sum((fractions[i + 1] - fractions[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(values) - 1))
    )


# ============================================================ ablation
def ablation_inputs(
    model: nn.Module,
    input_ids: Tensor,
    ablate: Tensor,
    *,
    mode: str = "zero",
    replacement_id: Optional[int] = None,
) -> dict[str, Tensor]:
    """Forward keyword arguments for a batch of ablated copies of one prompt.

    Args:
        model: the causal LM (used for its embedding lookup in "zero" mode).
        input_ids: (n,) token ids on the model's embedding device.
        ablate: (V, n) bool, True where variant v ablates a token.
        mode: "zero", "token" or "mask" (see the module docstring).
        replacement_id: the id "token" mode writes (required there).
    Returns:
        dict with ``attention_mask`` (V, n) int64, ``position_ids`` (V, n) =
        0..n-1, and ``inputs_embeds`` (V, n, e) ("zero") or ``input_ids`` (V, n).
        Only the ablated tokens differ from the intact prompt.
    """
    _check_mode(mode)
    device = input_ids.device
    ablate = ablate.to(device)
    variants, n = ablate.shape
    ids = input_ids.expand(variants, n)
    attention_mask = torch.ones(variants, n, dtype=torch.long, device=device)
    # explicit positions: masking a token in "mask" mode must not shift the others
    kwargs = {"position_ids": torch.arange(n, device=device).expand(variants, n)}
    if mode == "zero":
        with torch.no_grad():
            embeds = model.get_input_embeddings()(input_ids.unsqueeze(0))
        kwargs["inputs_embeds"] = embeds.expand(variants, -1, -1).masked_fill(ablate.unsqueeze(-1), 0.0)
    elif mode == "token":
        if replacement_id is None:
            raise ValueError("mode='token' needs replacement_id")
        kwargs["input_ids"] = ids.masked_fill(ablate, replacement_id)
    else:
        kwargs["input_ids"] = ids
        attention_mask = attention_mask.masked_fill(ablate, 0)
    kwargs["attention_mask"] = attention_mask
    return kwargs


def _log_probs_at(model: nn.Module, kwargs: dict[str, Tensor], position: int, n: int) -> Tensor:
    """One batched forward; float64 log-softmax at ``position`` only -> (V, vocab)."""
    kwargs = dict(kwargs, use_cache=False)
    column = position
    if accepts(model, "logits_to_keep"):
        # the head only for the last n - position columns; the wanted one is first
        kwargs["logits_to_keep"] = n - position
        column = 0
    logits = model(**kwargs).logits[:, column, :]
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def _run_variants(
    model: nn.Module,
    input_ids: Tensor,
    ablate: Tensor,
    position: int,
    mode: str,
    replacement_id: Optional[int],
    batch_size: int,
) -> Tensor:
    """Log-probs (V, vocab) float64 at ``position`` for each ablation row; inputs
    already checked, called inside :func:`_inference`."""
    n = input_ids.shape[0]
    if mode == "mask":
        blind = ablate[:, : position + 1].all(dim=1)
        if bool(blind.any()):
            raise ValueError(
                "mode='mask' cannot ablate every token up to the explained position (the prediction "
                "would attend to nothing); keep a BOS token in the prompt or use mode='zero'"
            )
    out = []
    for chunk in ablate.split(batch_size):
        kwargs = ablation_inputs(model, input_ids, chunk, mode=mode, replacement_id=replacement_id)
        out.append(_log_probs_at(model, kwargs, position, n).cpu())
    return torch.cat(out)


def ablated_log_probs(
    model: nn.Module,
    input_ids: Tensor,
    ablate: Tensor,
    *,
    position: int = -1,
    mode: str = "zero",
    tokenizer: Any = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> Tensor:
    """Next-token log-probabilities at ``position`` for ablated copies of a prompt.

    Args:
        model: a Hugging Face causal LM (not modified).
        input_ids: (n,) or (1, n) token ids.
        ablate: (V, n) or (n,) bool, True where a token is ablated. A row of all
            False gives the intact prompt.
        position: explained position. Default -1.
        mode: "zero" (default), "token" or "mask".
        tokenizer: picks the replacement token of "token" mode.
        replacement_id: explicit replacement token for "token" mode.
        batch_size: variants per forward. Default 16.
    Returns:
        (V, vocab) float64 CPU tensor (1-D (vocab,) for a 1-D ``ablate``).
    """
    check_causal_lm(model)
    ids = _check_prompt(model, input_ids)
    n = ids.shape[0]
    position = _check_position(position, n)
    mode = _check_mode(mode)
    batch_size = _check_batch_size(batch_size)
    if not isinstance(ablate, Tensor) or ablate.dtype != torch.bool:
        raise TypeError("ablate must be a bool tensor of shape (n,) or (V, n)")
    single = ablate.dim() == 1
    rows = ablate.unsqueeze(0) if single else ablate
    if rows.dim() != 2 or rows.shape[1] != n or rows.shape[0] == 0:
        raise ValueError(f"ablate must have shape ({n},) or (V, {n}) with V >= 1, got {tuple(ablate.shape)}")
    replacement_id = _resolve_replacement(model, mode, replacement_id, tokenizer)
    with _inference(model):
        out = _run_variants(model, ids, rows.cpu(), position, mode, replacement_id, batch_size)
    return out[0] if single else out


# ============================================================ shared setup
@dataclass
class _Prompt:
    """A checked prompt with its intact prediction."""

    model: nn.Module
    ids: Tensor  # (n,) on the embedding device
    position: int
    rankable: Tensor  # (n,) bool CPU
    mode: str
    replacement_id: Optional[int]
    batch_size: int
    log_probs: Tensor  # (vocab,) float64, intact prompt
    target: int

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def m(self) -> int:
        return int(self.rankable.sum())

    @property
    def log_prob(self) -> float:
        return float(self.log_probs[self.target])

    def run(self, ablate: Tensor) -> Tensor:
        """(V, n) bool -> (V, vocab) log-probs. A row that ablates nothing IS the
        intact prompt: it reuses that forward, so its delta is exactly 0 (a
        batched forward can differ from a single one by ~1e-7)."""
        out = self.log_probs.expand(ablate.shape[0], -1).clone()
        changed = ablate.any(dim=1)
        if bool(changed.any()):
            # identical rows (methods that agree on their top tokens) run once
            unique, inverse = torch.unique(ablate[changed].to(torch.uint8), dim=0, return_inverse=True)
            log_probs = _run_variants(
                self.model, self.ids, unique.bool(), self.position, self.mode, self.replacement_id, self.batch_size
            )
            out[changed] = log_probs[inverse]
        return out

    def masks(self, token_sets: Sequence[Tensor]) -> Tensor:
        """One (n,) bool row per set of positions."""
        rows = torch.zeros(len(token_sets), self.n, dtype=torch.bool)
        for row, positions in zip(rows, token_sets):
            row[positions] = True
        return rows


def _check_common(
    model: nn.Module,
    input_ids: Any,
    position: Any,
    mode: Any,
    tokenizer: Any,
    include_special: bool,
    replacement_id: Any,
    batch_size: Any,
) -> tuple[Tensor, int, Tensor, str, Optional[int], int]:
    """Everything a metric checks before running the model."""
    check_causal_lm(model)
    ids = _check_prompt(model, input_ids)
    position = _check_position(position, ids.shape[0])
    mode = _check_mode(mode)
    batch_size = _check_batch_size(batch_size)
    rankable = rankable_mask(
        ids, position, tokenizer=tokenizer, config=getattr(model, "config", None), include_special=include_special
    )
    if not bool(rankable.any()):
        raise ValueError(
            f"no token to rank: every token up to position {position} is special "
            "(pass include_special=True to rank special tokens)"
        )
    replacement_id = _resolve_replacement(model, mode, replacement_id, tokenizer)
    return ids, position, rankable, mode, replacement_id, batch_size


def _intact(model, ids, position, rankable, mode, replacement_id, batch_size, target, tokenizer) -> _Prompt:
    """Run the intact prompt (inside :func:`_inference`) and fix the target."""
    nothing = torch.zeros(1, ids.shape[0], dtype=torch.bool)
    log_probs = _run_variants(model, ids, nothing, position, mode, replacement_id, batch_size)[0]
    if target is None:
        target_id = int(log_probs.argmax())
    else:
        target_id = resolve_target(target, tokenizer, log_probs.shape[0])
    return _Prompt(model, ids, position, rankable, mode, replacement_id, batch_size, log_probs, target_id)


def _points(prompt: _Prompt, ranked: Union[Tensor, Sequence[Tensor]], counts: Sequence[int], keep: bool) -> Tensor:
    """log p(y*) (len(counts),) with the top ``k`` ranked tokens ablated
    (``keep=False``) or with every rankable token ablated but them (``keep=True``).
    A list of R rankings gives the R curves one after the other, (R * len(counts),)."""
    all_rankable = prompt.rankable.nonzero().flatten()
    sets = []
    for order in [ranked] if isinstance(ranked, Tensor) else ranked:
        for k in counts:
            top = order[:k]
            if keep:
                sets.append(all_rankable[~torch.isin(all_rankable, top)])
            else:
                sets.append(top)
    return prompt.run(prompt.masks(sets))[:, prompt.target]


# ============================================================ metrics
def aopc(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    position: int = -1,
    fractions: Sequence[float] = AOPC_FRACTIONS,
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> AOPCResult:
    """The paper's AOPC (deletion, most relevant first) of one prompt.

    Rank the rankable tokens by score; for each fraction f ablate the top
    ``max(1, floor(f * m))``; ``D_f = log p_ablated(y*) - log p_orig(y*)``;
    AOPC = :func:`trapezoid_area` of the D_f over the fractions (unnormalised),
    which for the default (0.05, 0.10, 0.20) is 0.025 (D5 + D10) + 0.05 (D10 + D20).

    Args:
        model: a Hugging Face causal LM (not modified).
        input_ids: (n,) or (1, n) token ids.
        scores: (n,) scores of any method; higher = more relevant. Scores of
            non-rankable tokens are ignored.
        position: explained position. Default -1 (the last token).
        fractions: at least two values in (0, 1]. Default (0.05, 0.10, 0.20).
        mode: "zero" (default, the paper's), "token" or "mask".
        tokenizer: source of special tokens (else the model config) and of the
            "token" mode replacement; needed for a string target.
        include_special: also rank and ablate special tokens. Default False.
        target: explain this token instead of y* (id or one-token string).
        replacement_id: explicit replacement token for "token" mode.
        batch_size: ablated variants per forward. Default 16.
    Returns:
        :class:`AOPCResult`. More negative ``aopc`` = more faithful.
    """
    fractions = _check_fractions(fractions, allow_zero=False)
    if len(fractions) < 2:
        raise ValueError(f"AOPC is an area: give at least two fractions, got {fractions}")
    curve = deletion_curve(
        model, input_ids, scores, position=position, fractions=fractions, order="most", mode=mode,
        tokenizer=tokenizer, include_special=include_special, target=target,
        replacement_id=replacement_id, batch_size=batch_size,
    )
    return AOPCResult(
        aopc=curve.area,
        fractions=curve.fractions,
        n_ablated=curve.n_tokens,
        deltas=curve.deltas,
        target=curve.target,
        log_prob=curve.log_prob,
        n_rankable=curve.n_rankable,
    )


def deletion_curve(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    position: int = -1,
    fractions: Sequence[float] = CURVE_FRACTIONS,
    order: str = "most",
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> CurveResult:
    """log p(y*) as the top-ranked tokens are removed from the intact prompt.

    Args:
        fractions: values in [0, 1]; f removes ``max(1, floor(f * m))`` tokens
            (0 removes none). Default 0, 0.1, ..., 1.
        order: "most" (most relevant first, default: a faithful method drops
            fast) or "least" (least relevant first: a faithful method stays flat).
        Other arguments as in :func:`aopc`.
    Returns:
        :class:`CurveResult` with kind "deletion". At fractions (0.05, 0.1, 0.2)
        and order "most", ``area`` equals the AOPC.
    """
    return _curve("deletion", model, input_ids, scores, position, fractions, order, mode, tokenizer,
                  include_special, target, replacement_id, batch_size)


def insertion_curve(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    position: int = -1,
    fractions: Sequence[float] = CURVE_FRACTIONS,
    order: str = "most",
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> CurveResult:
    """log p(y*) as the top-ranked tokens are restored into the prompt with all
    rankable tokens ablated (special tokens and tokens after ``position`` stay).

    Args:
        fractions: values in [0, 1]; f restores ``max(1, floor(f * m))`` tokens
            (0 restores none; 1 gives back the intact prompt, delta 0).
            Default 0, 0.1, ..., 1.
        order: "most" (most relevant restored first, default) or "least".
        Other arguments as in :func:`aopc`. y* is the INTACT prompt's top-1.
    Returns:
        :class:`CurveResult` with kind "insertion": a faithful method climbs
        back fast, i.e. a higher (closer to 0) ``area``.
    """
    return _curve("insertion", model, input_ids, scores, position, fractions, order, mode, tokenizer,
                  include_special, target, replacement_id, batch_size)


def deletion_curves(
    model: nn.Module,
    input_ids: Tensor,
    scores: Mapping[str, Scores],
    *,
    position: int = -1,
    fractions: Sequence[float] = CURVE_FRACTIONS,
    order: str = "most",
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> dict[str, CurveResult]:
    """:func:`deletion_curve` of several score vectors of one prompt (one per
    method) at once: one intact forward for all, the ablated variants of every
    method in the same batches, and an ablation two methods share run once.

    Args:
        scores: name -> (n,) score vector (a method's attribution).
        Other arguments as in :func:`deletion_curve`.
    Returns:
        name -> :class:`CurveResult`, equal to ``deletion_curve`` of each score
        vector up to batching round-off (~1e-7).
    """
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError("scores must be a non-empty mapping: method name -> score vector")
    return _curves("deletion", model, input_ids, scores, position, fractions, order, mode, tokenizer,
                   include_special, target, replacement_id, batch_size)


def _curve(kind, model, input_ids, scores, position, fractions, order, mode, tokenizer,
           include_special, target, replacement_id, batch_size) -> CurveResult:
    return _curves(kind, model, input_ids, {"": scores}, position, fractions, order, mode, tokenizer,
                   include_special, target, replacement_id, batch_size)[""]


def _curves(kind, model, input_ids, scores_by_name, position, fractions, order, mode, tokenizer,
            include_special, target, replacement_id, batch_size) -> dict[str, CurveResult]:
    ids, position, rankable, mode, replacement_id, batch_size = _check_common(
        model, input_ids, position, mode, tokenizer, include_special, replacement_id, batch_size
    )
    checked = {name: _check_scores(s, ids.shape[0], f"scores[{name!r}]" if name else "scores")
               for name, s in scores_by_name.items()}
    fractions = _check_fractions(fractions, allow_zero=True)
    order = _check_order(order)
    with _inference(model):
        prompt = _intact(model, ids, position, rankable, mode, replacement_id, batch_size, target, tokenizer)
        counts = tuple(n_tokens_for_fraction(f, prompt.m) for f in fractions)
        ranked = [rank_tokens(s, prompt.rankable, order) for s in checked.values()]
        # every method's variants in one call: shared batches, shared rows run once
        log_probs = _points(prompt, ranked, counts, keep=kind == "insertion").split(len(counts))
    return {name: _curve_result(kind, order, fractions, counts, lp, prompt)
            for name, lp in zip(checked, log_probs)}


def _curve_result(kind, order, fractions, counts, log_probs, prompt) -> CurveResult:
    deltas = tuple(float(lp) - prompt.log_prob for lp in log_probs)
    probs = tuple(math.exp(float(lp)) for lp in log_probs)
    return CurveResult(
        kind=kind,
        order=order,
        fractions=fractions,
        n_tokens=counts,
        log_probs=tuple(float(lp) for lp in log_probs),
        probs=probs,
        deltas=deltas,
        area=trapezoid_area(fractions, deltas),
        prob_area=trapezoid_area(fractions, probs),
        target=prompt.target,
        log_prob=prompt.log_prob,
        n_rankable=prompt.m,
    )


def comprehensiveness(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    position: int = -1,
    fractions: Sequence[float] = ERASER_FRACTIONS,
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> EraserResult:
    """ERASER comprehensiveness: ``p(y*|x) - p(y*|x without its top-k% tokens)``
    per bin, averaged over the bins. Uses PROBABILITIES (as ERASER does), not
    log-probabilities like AOPC. Higher = the top tokens matter more = more
    faithful.

    Args:
        fractions: bins in (0, 1]; default (0.01, 0.05, 0.10, 0.20, 0.50), each
            removing ``max(1, floor(f * m))`` tokens.
        Other arguments as in :func:`aopc`.
    """
    return _eraser("comprehensiveness", model, input_ids, scores, position, fractions, mode, tokenizer,
                   include_special, target, replacement_id, batch_size)


def sufficiency(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    position: int = -1,
    fractions: Sequence[float] = ERASER_FRACTIONS,
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> EraserResult:
    """ERASER sufficiency: ``p(y*|x) - p(y*|only the top-k% tokens kept)`` per
    bin, averaged over the bins. "Only kept" ablates every other rankable token;
    special tokens (BOS) stay. Uses PROBABILITIES (as ERASER does). Lower = the
    top tokens alone suffice = more faithful (it can be negative).

    Args:
        fractions: bins in (0, 1]; default (0.01, 0.05, 0.10, 0.20, 0.50), each
            keeping ``max(1, floor(f * m))`` tokens.
        Other arguments as in :func:`aopc`.
    """
    return _eraser("sufficiency", model, input_ids, scores, position, fractions, mode, tokenizer,
                   include_special, target, replacement_id, batch_size)


def _eraser(metric, model, input_ids, scores, position, fractions, mode, tokenizer,
            include_special, target, replacement_id, batch_size) -> EraserResult:
    fractions = _check_fractions(fractions, allow_zero=False, name="bins")
    curve = _curve(
        "deletion" if metric == "comprehensiveness" else "insertion", model, input_ids, scores, position,
        fractions, "most", mode, tokenizer, include_special, target, replacement_id, batch_size,
    )
    prob = math.exp(curve.log_prob)
    values = tuple(prob - p for p in curve.probs)
    return EraserResult(
        metric=metric,
        fractions=curve.fractions,
        n_tokens=curve.n_tokens,
        values=values,
        mean=sum(values) / len(values),
        prob=prob,
        target=curve.target,
        n_rankable=curve.n_rankable,
    )


def leave_one_out(
    model: nn.Module,
    input_ids: Tensor,
    *,
    position: int = -1,
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> LeaveOneOutResult:
    """Ground-truth influence of each token: ablate it alone and take
    ``KL(P_orig || P_ablated)`` of the next-token distributions at ``position``
    (float64 softmax). One forward per rankable token, run in batches.

    Args as in :func:`aopc`.
    Returns:
        :class:`LeaveOneOutResult`; ``kl`` is 0 for tokens that are not rankable.
    """
    ids, position, rankable, mode, replacement_id, batch_size = _check_common(
        model, input_ids, position, mode, tokenizer, include_special, replacement_id, batch_size
    )
    kl = torch.zeros(ids.shape[0], dtype=torch.float64)
    with _inference(model):
        prompt = _intact(model, ids, position, rankable, mode, replacement_id, batch_size, None, tokenizer)
        reference = prompt.log_probs
        # one batch at a time: all m x vocab log-probs at once would be ~1 GB for
        # a 1000-token prompt and a 128k vocabulary
        for chunk in rankable.nonzero().flatten().split(batch_size):
            ablated = prompt.run(prompt.masks([t.view(1) for t in chunk]))
            kl[chunk] = (reference.exp() * (reference - ablated)).sum(-1)
    kl.clamp_(min=0.0)  # float rounding can dip a tiny KL below 0
    return LeaveOneOutResult(kl=kl, rankable=rankable, position=position, target=prompt.target, mode=mode)


def loo_agreement(
    scores: Scores,
    loo: Union[LeaveOneOutResult, Tensor, Sequence[float]],
    *,
    rankable: Optional[Tensor] = None,
    top_fraction: float = 0.10,
) -> LooAgreement:
    """Agreement of a score vector with leave-one-out influence.

    Args:
        scores: (n,) scores of any method; higher = more relevant.
        loo: a :class:`LeaveOneOutResult` (its ``rankable`` tokens are compared)
            or an (n,) influence vector.
        rankable: (n,) bool, the tokens to compare; default the LOO result's
            ``rankable``, or every token for a plain vector.
        top_fraction: fraction in (0, 1] for the top-k Jaccard. Default 0.10.
    Returns:
        :class:`LooAgreement` (Spearman, Kendall, top-1 LOO percentile, top-k Jaccard).
    """
    if isinstance(loo, LeaveOneOutResult):
        influence = loo.kl
        if rankable is None:
            rankable = loo.rankable
    else:
        influence = _as_real_vector(loo, "loo")
    n = influence.shape[0]
    s = _check_scores(scores, n)
    if rankable is None:
        rankable = torch.ones(n, dtype=torch.bool)
    if not isinstance(rankable, Tensor) or rankable.dtype != torch.bool or rankable.shape != (n,):
        raise ValueError(f"rankable must be a bool tensor of shape ({n},)")
    rankable = rankable.cpu()
    m = int(rankable.sum())
    if m == 0:
        raise ValueError("no token to compare: rankable is all False")
    (top_fraction,) = _check_fractions((top_fraction,), allow_zero=False, name="top_fraction")

    method_rank = rank_tokens(s, rankable)
    loo_rank = rank_tokens(influence, rankable)
    top1 = method_rank[0]
    above = int((influence[rankable] > influence[top1]).sum())
    k = n_tokens_for_fraction(top_fraction, m)
    a, b = set(method_rank[:k].tolist()), set(loo_rank[:k].tolist())
    x, y = s[rankable].numpy(), influence[rankable].numpy()
    return LooAgreement(
        spearman=_correlation(stats.spearmanr, x, y),
        kendall=_correlation(stats.kendalltau, x, y),
        top1_percentile=100.0 * above / m,
        top_jaccard=len(a & b) / len(a | b),
        top_fraction=top_fraction,
        n_tokens=m,
    )


def _correlation(fn, x, y) -> float:
    """A scipy rank correlation, NaN (without a warning) when undefined."""
    if len(x) < 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y)[0])


def evaluate(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    metrics: Sequence[str] = ("aopc", "loo"),
    loo: Optional[LeaveOneOutResult] = None,
    position: int = -1,
    mode: str = "zero",
    tokenizer: Any = None,
    include_special: bool = False,
    target: Optional[TargetLike] = None,
    replacement_id: Optional[int] = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Several faithfulness metrics of one score vector, each with its defaults.

    Args:
        metrics: names among "aopc", "deletion", "deletion_least", "insertion",
            "comprehensiveness", "sufficiency", "loo". Default ("aopc", "loo").
        loo: a precomputed :func:`leave_one_out` of this prompt (it does not
            depend on the scores: compute it once per prompt and share it across
            methods); computed here when "loo" is asked and it is None.
        Other arguments as in :func:`aopc` (``target`` does not affect "loo").
    Returns:
        dict name -> result: :class:`AOPCResult`, :class:`CurveResult`,
        :class:`EraserResult`, or :class:`LooAgreement` for "loo".
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose among {METRICS}")
    common = dict(position=position, mode=mode, tokenizer=tokenizer, include_special=include_special,
                  replacement_id=replacement_id, batch_size=batch_size)
    ranked = dict(common, target=target)
    runners = {
        "aopc": lambda: aopc(model, input_ids, scores, **ranked),
        "deletion": lambda: deletion_curve(model, input_ids, scores, **ranked),
        "deletion_least": lambda: deletion_curve(model, input_ids, scores, order="least", **ranked),
        "insertion": lambda: insertion_curve(model, input_ids, scores, **ranked),
        "comprehensiveness": lambda: comprehensiveness(model, input_ids, scores, **ranked),
        "sufficiency": lambda: sufficiency(model, input_ids, scores, **ranked),
    }
    results: dict[str, Any] = {}
    for name in metrics:
        if name == "loo":
            if loo is None:
                loo = leave_one_out(model, input_ids, **common)
            elif not isinstance(loo, LeaveOneOutResult):
                raise TypeError(f"loo must be a LeaveOneOutResult, got {type(loo).__name__}")
            elif _check_position(position, loo.kl.shape[0]) != loo.position:
                raise ValueError(f"loo was computed at position {loo.position}, not at {position}")
            results[name] = loo_agreement(scores, loo)
        else:
            results[name] = runners[name]()
    return results
