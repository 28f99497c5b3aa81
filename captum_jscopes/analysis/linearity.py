"""When is a Jacobian map locally valid? A per-token validity radius.

A Jacobian Scope is a first-order (Semantic, Temperature) or second-order
(Fisher) statement about what happens when one token's input embedding ``x_t``
moves a little. :func:`linearity_check` measures how far it may move before the
statement stops holding: it perturbs ``x_t`` alone by a relative size ``eps``
(in units of ``||x_t||``), runs the model, and compares the real change with the
scope's prediction.

- Semantic / Temperature: ``x_t`` moves by ``delta = eps * ||x_t|| * u_t`` along
  the unit gradient ``u_t = g_t / ||g_t||`` of the scope's scalar (the target
  logit, the logit difference target - foil, or ``||y||``). Predicted change of
  the scalar: ``eps * ||x_t|| * s_t`` with ``s_t = ||g_t||`` the scope's score
  (exactly ``g_t . delta`` of the move the model sees once ``delta`` is rounded
  to the embedding dtype, which matters only in half precision).
- Fisher: isotropic Gaussian noise on ``x_t`` with per-coordinate
  ``sigma = eps * ||x_t|| / sqrt(e)`` (expected squared norm ``(eps ||x_t||)^2``).
  Predicted expected ``KL(P_orig || P_perturbed)``: ``sigma^2 * s_t / 2``, compared
  with the mean real KL over ``n_draws`` seeded draws.

The relative error is ``|real - predicted| / |predicted|``; a token's radius is the
largest ``eps`` of the grid up to which (every smaller ``eps`` included) it stays
``<= tol``. The radius says nothing about larger moves: zero ablation is at
distance 1.0 in these units and a token swap at :attr:`LinearityResult.swap_distance`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_jscopes.analysis.linearity_result import LinearityResult
from captum_jscopes.core.forward import hidden_and_logits, prepare_inputs, resolve_positions, run_forward
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.text import prompt_labels
from captum_jscopes.scopes.base import JacobianScope

__all__ = ["DEFAULT_EPSILONS", "FISHER_REFERENCES", "LinearityResult", "linearity_check", "check_tokens"]

#: relative perturbation sizes (units of ||x_t||) checked by default
DEFAULT_EPSILONS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: moves orthogonal to the gradient per token that estimate the noise floor
_FLOOR_PROBES = 2
#: what the Fisher check compares the mean KL with (see :func:`linearity_check`)
FISHER_REFERENCES = ("expected", "paired")


# ============================================================ checks
def _check_epsilons(epsilons: Any) -> tuple[float, ...]:
    if epsilons is None:
        return DEFAULT_EPSILONS
    if isinstance(epsilons, Tensor):
        if epsilons.dim() > 1:
            raise ValueError(f"epsilons must be 1-D, got shape {tuple(epsilons.shape)}")
        epsilons = epsilons.flatten().tolist()
    elif isinstance(epsilons, (int, float)) and not isinstance(epsilons, bool):
        epsilons = [epsilons]
    if isinstance(epsilons, (str, bytes)):
        raise TypeError(f"epsilons must be a sequence of numbers, got {epsilons!r}")
    try:
        items = list(epsilons)
    except TypeError:
        raise TypeError(f"epsilons must be a sequence of numbers, got {type(epsilons).__name__}") from None
    if any(isinstance(e, bool) for e in items):
        raise TypeError(f"epsilons must be numbers, not bools: {items!r}")
    try:
        values = [float(e) for e in items]
    except (TypeError, ValueError):
        raise TypeError(f"epsilons must be a sequence of numbers, got {items!r}") from None
    if not values:
        raise ValueError("epsilons is empty: give at least one perturbation size")
    for e in values:
        if not math.isfinite(e) or e <= 0:
            raise ValueError(f"epsilons must be finite and > 0 (units of ||x_t||), got {e}")
    if len(set(values)) != len(values):
        raise ValueError(f"epsilons contain duplicates: {values}")
    return tuple(sorted(values))


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a number, got {type(tol).__name__}")
    tol = float(tol)
    if not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be finite and > 0, got {tol}")
    return tol


def _check_int(value: Any, name: str, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_tokens(tokens: Any, n: int) -> Optional[list[int]]:
    if tokens is None:
        return None
    if isinstance(tokens, Tensor):
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"tokens must hold integer positions, got dtype {tokens.dtype}")
        tokens = tokens.flatten().tolist()
    elif isinstance(tokens, int) and not isinstance(tokens, bool):
        tokens = [tokens]
    try:
        items = list(tokens)
    except TypeError:
        raise TypeError(f"tokens must be a list or tensor of positions, got {type(tokens).__name__}") from None
    out = []
    for t in items:
        try:
            if isinstance(t, bool):
                raise TypeError
            t = operator.index(t)
        except TypeError:
            raise TypeError(f"tokens must hold integer positions, got {t!r}") from None
        if not -n <= t < n:
            raise ValueError(f"token position {t} is out of range for a prompt of {n} tokens")
        out.append(t % n)
    if not out:
        raise ValueError("tokens is empty: give at least one position (or None for every scored token)")
    return sorted(set(out))


# ============================================================ the check
def linearity_check(
    scope: JacobianScope,
    input_ids: Tensor,
    target: Any = None,
    position: Union[int, Tensor] = -1,
    attention_mask: Optional[Tensor] = None,
    epsilons: Optional[Sequence[float]] = None,
    tol: float = 0.1,
    tokens: Optional[Union[Sequence[int], Tensor]] = None,
    *,
    n_draws: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    scope_options: Optional[dict] = None,
    fisher_reference: str = "expected",
) -> LinearityResult:
    """Per-token validity radius of a scope's map: up to which relative
    perturbation of ``x_t`` does the scope's local prediction hold?

    Args:
        scope: a Jacobian Scope, built in or registered (its ``model``,
            ``tokenizer`` and ``exclude_special_tokens`` are used; what is moved
            and compared is its ``perturbation`` and :meth:`~JacobianScope.readout`).
        input_ids: (seq,) or (1, seq) token ids: one prompt.
        target: the target of a scope that takes one (the Semantic Scope: id,
            one-token string, or a (target, foil) pair); None: the model's top-1
            prediction. Must be None for the other scopes.
        position: explained token, counted over real tokens; default -1 (last).
        attention_mask: (seq,) or (1, seq) of 0/1; default all ones.
        epsilons: perturbation sizes in units of ``||x_t||``; finite, > 0, no
            duplicates (sorted here). Default :data:`DEFAULT_EPSILONS`
            (0.001 ... 1.0).
        tol: largest accepted relative error. Default 0.1.
        tokens: positions to check (list or tensor; negative counts from the end).
            Default: every token with a score > 0 (at or before the explained
            position, not padding, not an excluded special token).
        n_draws: Gaussian draws per (token, eps) for the Fisher check. Default 4.
        seed: seeds the Fisher draws and the noise-floor probes
            (``torch.Generator``). Default 0.
        batch_size: perturbed prompts per no-grad forward. Default 16.
        scope_options: extra options for ``scope.attribute`` (e.g.
            ``{"exclude_special_tokens": False}``), passed through the scope's
            ``local_options``: the Fisher Scope defaults to ``estimator="exact"``
            here, so the prediction is not an estimate; the path-integrated
            Semantic Scope (``n_steps``) is not a local map and is refused.
        fisher_reference: what the mean KL over the draws is compared with.
            ``"expected"`` (default): ``sigma^2 * s_t / 2``, the scope's claim
            about the expected KL; with few draws the relative error then also
            holds the Monte Carlo error of the mean (see ``sampling_error``),
            which can exceed ``tol`` at every eps. ``"paired"``: the same draws'
            quadratic form ``1/2 delta^T J_t^T F J_t delta`` (whose expectation is
            ``sigma^2 s_t / 2``), from d extra backward passes: the error then
            measures only the non-linearity.
    Returns:
        a :class:`LinearityResult`.
    Raises:
        TypeError: unsupported scope type, or arguments of the wrong type.
        ValueError: a batch of several prompts, a bad eps grid / tol / n_draws /
            batch_size, a token out of range or with score 0 (or a zero embedding).

    The caller's model is left exactly as it was (see
    :func:`captum_jscopes.core.model_state.preserved_state`), also when this raises.
    """
    if not isinstance(scope, JacobianScope):
        raise TypeError(f"scope must be a Jacobian Scope instance (e.g. SemanticScope), got {type(scope).__name__}")
    if type(scope).readout is JacobianScope.readout:
        raise TypeError(f"{type(scope).__name__} defines no readout (what its map predicts): linearity_check cannot test it")
    model = scope.model
    eps = _check_epsilons(epsilons)
    tol = _check_tol(tol)
    n_draws = _check_int(n_draws, "n_draws", 1)
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        raise ValueError(
            f"input_ids must be one prompt, shape (seq,) or (1, seq); got {tuple(input_ids.shape)} "
            "(call linearity_check once per prompt)"
        )
    ids, mask = prepare_inputs(model, input_ids, attention_mask)
    n = ids.shape[1]
    wanted = check_tokens(tokens, n)
    options = dict(scope_options or {})
    names = (*scope.option_names(), *scope.deprecated_options)
    own = scope.local_options(scope.make_options(**{k: v for k, v in options.items() if k in names}))
    options = {k: v for k, v in options.items() if k not in names}
    options.update({f.name: getattr(own, f.name) for f in dataclasses.fields(own)})
    # reduce="input": the map claims the first-order effect of removing x_t, so x_t is moved
    # toward zero (deterministically); the read-out is the scope's own (a scalar or the KL)
    deletion = own.reduce == "input"
    isotropic = scope.perturbation == "isotropic"
    if fisher_reference not in FISHER_REFERENCES:
        raise ValueError(f"fisher_reference must be one of {FISHER_REFERENCES}, got {fisher_reference!r}")
    pos = int(resolve_positions(position, mask)[0])

    with preserved_state(model):
        scores = scope.attribute(ids, target=target, position=position, attention_mask=mask, **options)
        scores = scores[0].detach().to("cpu", torch.float64)
        with torch.no_grad():
            x = model.get_input_embeddings()(ids)[0].detach()  # (n, e)
        norms = x.to(torch.float64).norm(dim=-1).cpu()
        checked = _tokens_to_check(wanted, scores, norms)
        directions, slopes, targets, noise, quadratic = None, None, None, None, None
        if isotropic:
            targets = None
            if deletion:
                # one move per eps: toward zero, scaled so that sigma^2 s / 2 is eps^2 s / 2 (see _measure)
                unit = x.to("cpu", torch.float64)[checked] / norms[checked][:, None]
                noise = -unit[:, None] * math.sqrt(x.shape[-1])
            else:
                generator = torch.Generator().manual_seed(seed)
                # the same standard-normal draws at every eps of a token: smoother curves
                noise = torch.randn(len(checked), n_draws, x.shape[-1], generator=generator, dtype=torch.float64)
            if fisher_reference == "paired" and not deletion:
                quadratic = _paired_quadratic(scope, ids, mask, pos, checked, noise, own.rules)
        else:
            directions, slopes, targets = _unit_gradients(scope, ids, mask, pos, target, scores, checked, own, x,
                                                           norms)
        with torch.no_grad():
            predicted, observed, sampling, floor = _measure(
                scope, x, mask, pos, checked, eps, scores, norms,
                directions=directions, slopes=slopes, targets=targets, noise=noise, quadratic=quadratic, seed=seed,
                deletion=deletion,
                batch_size=batch_size,
            )
            swap = _swap_distance(model, ids[0], x, norms)

    E = len(eps)
    relative = torch.full((n, E), float("nan"), dtype=torch.float64)
    pred_full = relative.clone()
    obs_full = relative.clone()
    sampling_full = relative.clone()
    floor_full = relative.clone()
    rows = torch.tensor(checked, dtype=torch.long)
    error = (observed - predicted).abs() / predicted.abs()
    error = torch.where(torch.isfinite(error), error, torch.full_like(error, float("inf")))
    relative[rows] = error
    pred_full[rows] = predicted
    obs_full[rows] = observed
    sampling_full[rows] = sampling
    floor_full[rows] = floor
    grid = torch.tensor(eps, dtype=torch.float64)
    radius = torch.full((n,), float("nan"), dtype=torch.float64)
    passing = (error <= tol).long().cumprod(dim=1)  # 1 while every smaller eps passed
    count = passing.sum(1)
    radius[rows] = torch.where(count > 0, grid[(count - 1).clamp(min=0)], torch.zeros_like(count, dtype=torch.float64))
    zero = torch.where(norms > 0, torch.ones_like(norms), torch.full_like(norms, float("nan")))
    return LinearityResult(
        epsilons=grid,
        relative_error=relative,
        radius=radius,
        scores=scores,
        swap_distance=swap,
        zero_distance=zero,
        predicted=pred_full,
        observed=obs_full,
        sampling_error=sampling_full,
        noise_floor=floor_full,
        tokens=rows,
        input_ids=ids[0].cpu(),
        token_labels=tuple(prompt_labels(ids[0].cpu(), scope.tokenizer)),
        position=pos,
        scope=scope.name,
        tol=tol,
        n_draws=n_draws,
        seed=seed,
        fisher_reference=fisher_reference if isotropic and not deletion else None,
        perturbation="deletion" if deletion else scope.perturbation,
        rules=own.rules,
    )


def _tokens_to_check(wanted: Optional[list[int]], scores: Tensor, norms: Tensor) -> list[int]:
    usable = (scores > 0) & (norms > 0)
    if wanted is None:
        checked = usable.nonzero().flatten().tolist()
        if not checked:
            raise ValueError("no token to check: every token has score 0 (or a zero embedding)")
        return checked
    for t in wanted:
        if not bool(norms[t] > 0):
            raise ValueError(f"token {t} has a zero input embedding: a relative perturbation of it is empty")
        if not bool(scores[t] > 0):
            raise ValueError(
                f"token {t} has score 0 (after the explained position, padding, or an excluded special "
                "token; construct the scope with exclude_special_tokens=False to check special tokens): "
                "its relative error is undefined"
            )
    return wanted


def _unit_gradients(
    scope: JacobianScope, ids: Tensor, mask: Tensor, pos: int, target: Any, scores: Tensor, checked: list[int],
    options: Any, x: Tensor, norms: Tensor,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(K, e) the moves' unit directions ``u_t``, (K,) the slope the map claims along
    them (``delta . u_t`` times it is the map's first-order prediction), and the
    explained target ids (None for a scope without target); float64 CPU, from one
    forward and one backward pass of the library's engine along the scope's own
    direction, under the map's ``rules``. ``reduce="norm"``: ``u_t`` the unit
    gradient, slope ``||g_t||``; ``"input"``: ``u_t = -x_t / ||x_t||`` (toward
    deletion), slope ``g_t . u_t``, whose absolute value times ``||x_t||`` is the score."""
    positions = torch.tensor([[pos]], device=ids.device)
    forward = run_forward(scope.model, ids, mask, positions, rules=options.rules)
    targets = scope.explained_targets(target, forward.logits)
    direction = scope.directions(forward, targets)
    if direction.shape[0] != 1:
        raise TypeError(f"the {scope.name} scope projects on {direction.shape[0]} directions; a gradient check needs one")
    grads = forward.vjp(direction)[0, 0, 0].detach().to("cpu", torch.float64)  # (n, e)
    grads = grads[checked]
    expected = scores[checked]
    if options.reduce == "input":
        unit = -x.to("cpu", torch.float64)[checked] / norms[checked][:, None]
        slope = (grads * unit).sum(-1)
        claimed = slope.abs() * norms[checked]
    else:
        norm = grads.norm(dim=-1)
        unit, slope, claimed = grads / norm[:, None], norm, norm
    if not torch.allclose(claimed, expected, rtol=5e-2, atol=0):
        raise RuntimeError(
            f"the engine's values {claimed.tolist()} disagree with the scope's scores {expected.tolist()}: "
            "the check would not test the scope's map"
        )
    return unit, slope, targets


def _read_out(scope: JacobianScope, embeds: Tensor, mask: Tensor, pos: int, targets: Optional[Tensor]) -> Tensor:
    """One no-grad forward of (B, n, e) embeddings through the engine's model call
    (:func:`~captum_jscopes.core.forward.hidden_and_logits`) -> the scope's readout
    (float64 CPU: (B,) scalars or (B, V) log-probs) at the explained column ``pos``."""
    batch, n = embeds.shape[:2]
    positions = torch.full((batch, 1), pos, dtype=torch.long, device=mask.device)
    y, z = hidden_and_logits(scope.model, embeds, mask.expand(batch, n), positions)
    return scope.readout(y[:, 0].to(torch.float64), z[:, 0].to(torch.float64), targets).cpu()


def _paired_quadratic(scope, ids: Tensor, mask: Tensor, pos: int, checked: list[int], noise: Tensor,
                      rules: str = "gradient") -> Tensor:
    """(K, D) ``z^T J_t^T F J_t z`` for each token's standard-normal draws ``z``
    (K, D, e): with ``F = sum_i v_i v_i^T`` (the scope's exact directions) this is
    ``sum_i (v_i^T J_t . z)^2``, from d backward passes of the library's engine."""
    positions = torch.tensor([[pos]], device=ids.device)
    forward = run_forward(scope.model, ids, mask, positions, rules=rules)
    directions = scope.exact_directions(forward)
    total = torch.zeros(noise.shape[:2], dtype=torch.float64)
    rows = torch.tensor(checked, device=forward.embeddings.device)
    for chunk in directions.split(max(1, scope.chunk_size), dim=0):
        grads = forward.vjp(chunk)[:, 0, 0].index_select(1, rows).detach().to("cpu", torch.float64)  # (m, K, e)
        total += torch.einsum("mke,kde->mkd", grads, noise).pow(2).sum(0)
    return total


def _measure(
    scope: JacobianScope,
    x: Tensor,
    mask: Tensor,
    pos: int,
    checked: list[int],
    eps: tuple[float, ...],
    scores: Tensor,
    norms: Tensor,
    *,
    directions: Optional[Tensor],
    slopes: Optional[Tensor],
    deletion: bool = False,
    targets: Optional[Tensor],
    noise: Optional[Tensor],
    quadratic: Optional[Tensor],
    seed: int,
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Predicted and observed (K, E) float64 CPU changes, the relative sampling
    error (isotropic check; NaN otherwise) and the relative noise floor (gradient
    check; NaN for isotropic), from batched no-grad forwards of the perturbed
    prompts (one token moved per prompt)."""
    isotropic = scope.perturbation == "isotropic"
    K, E, e = len(checked), len(eps), x.shape[-1]
    grid = torch.tensor(eps, dtype=torch.float64)
    size = grid[None, :] * norms[checked][:, None]  # (K, E): eps * ||x_t||
    s = scores[checked][:, None]
    if isotropic:
        sigma = size / math.sqrt(e)
        deltas = sigma[:, :, None, None] * noise[:, None]  # (K, E, D, e)
        if deletion:  # the move is -eps x_t: the map claims KL = eps^2 x^T J^T F J x / 2 = eps^2 s / 2
            predicted = grid[None, :].pow(2) * s / 2
        elif quadratic is None:
            predicted = sigma.pow(2) * s / 2
        else:
            per_draw = sigma[:, :, None].pow(2) * quadratic[:, None, :] / 2  # (K, E, D)
            predicted = per_draw.mean(-1)
    else:
        deltas = (size[:, :, None] * directions[:, None, :])[:, :, None]  # (K, E, 1, e)
        predicted = size * slopes[:, None]
    draws = deltas.shape[2]
    token_of = torch.tensor(checked).repeat_interleave(E * draws)
    flat = deltas.reshape(-1, e)
    if not isotropic:
        # noise-floor probes: moves of the smallest size orthogonal to g_t (no first-order change)
        generator = torch.Generator().manual_seed(seed)
        side = torch.randn(K, _FLOOR_PROBES, e, generator=generator, dtype=torch.float64)
        side = side - (side @ directions[:, :, None]) * directions[:, None, :]
        side = side / side.norm(dim=-1, keepdim=True) * size[:, :1, None]
        flat = torch.cat([flat, side.reshape(-1, e)])
        token_of = torch.cat([token_of, torch.tensor(checked).repeat_interleave(_FLOOR_PROBES)])
    base = _read_out(scope, x[None], mask, pos, targets)[0]
    x64 = x.to(torch.float64)
    outs, applied = [], []
    for start in range(0, flat.shape[0], batch_size):
        chunk = flat[start : start + batch_size].to(x.device)
        columns = token_of[start : start + batch_size].to(x.device)
        embeds = x[None].repeat(chunk.shape[0], 1, 1)
        rows = torch.arange(chunk.shape[0], device=x.device)
        embeds[rows, columns] = (x64[columns] + chunk).to(x.dtype)
        # the move the model really sees, after rounding to the embedding dtype
        applied.append((embeds[rows, columns].to(torch.float64) - x64[columns]).cpu())
        outs.append(_read_out(scope, embeds, mask, pos, targets))
    out = torch.cat(outs)
    moved = torch.cat(applied)
    sampling = torch.full((K, E), float("nan"), dtype=torch.float64)
    floor = sampling.clone()
    if isotropic:
        out = out.view(K, E, draws, -1)
        kl = (base.exp() * (base - out)).sum(-1)  # KL(P_orig || P_perturbed), (K, E, D)
        observed = kl.mean(-1)
        if draws > 1:
            spread = kl if quadratic is None else kl - per_draw
            sampling = spread.std(-1) / math.sqrt(draws) / predicted.abs()
    else:
        # first-order prediction g_t . delta of the applied move: eps ||x_t|| s_t unless the
        # embedding dtype rounded the move (half precision at small eps)
        slope = (directions * slopes[:, None])[:, None, :]  # (K, 1, e): g_t's component along the move
        predicted = (moved[: K * E].view(K, E, e) * slope).sum(-1)
        side = moved[K * E :].view(K, _FLOOR_PROBES, e)
        side_change = out[K * E :].view(K, _FLOOR_PROBES) - base - (side * slope).sum(-1)
        observed = out[: K * E].view(K, E) - base
        floor = side_change.abs().max(-1).values[:, None] / predicted.abs()
        if deletion:
            # a deletion move: the gradient has components across it, so the side probes are not flat
            floor = torch.full_like(floor, float("nan"))
    return predicted, observed, sampling, floor


def _swap_distance(model: nn.Module, ids: Tensor, x: Tensor, norms: Tensor, chunk: int = 8192) -> Tensor:
    """(n,) distance from each ``x_t`` to the nearest other token's embedding (the
    output of the embedding module for every id, in chunks of the vocabulary),
    divided by ``||x_t||``."""
    embedding = model.get_input_embeddings()
    vocab = getattr(embedding, "num_embeddings", None)
    if vocab is None:
        vocab = embedding.weight.shape[0]
    x64 = x.to(torch.float64)
    best = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    for start in range(0, vocab, chunk):
        candidates = torch.arange(start, min(vocab, start + chunk), device=ids.device)
        rows = embedding(candidates).to(x.device, torch.float64)  # (C, e)
        distance = torch.cdist(x64, rows)  # (n, C)
        distance[candidates[None, :].to(x.device) == ids[:, None].to(x.device)] = float("inf")
        best = torch.minimum(best, distance.min(dim=1).values)
    best = best.cpu()
    return torch.where(norms > 0, best / norms, torch.full_like(best, float("nan")))
