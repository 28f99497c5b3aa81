"""What :func:`captum_jscopes.analysis.linearity.linearity_check` returns: the
per-token relative errors, validity radii and the check's own noise for one prompt,
with a short text report (:meth:`LinearityResult.summary`) and the tokens whose
radius the check's resolution sets (:meth:`LinearityResult.limited_by_noise`).
Drawn by :func:`captum_jscopes.display.linearity.plot_linearity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["LinearityResult"]


@dataclass(frozen=True, eq=False)
class LinearityResult:
    """What :func:`linearity_check` measured for one prompt. ``seq`` is the prompt
    length, ``E`` the number of perturbation sizes; all tensors are CPU float64
    unless said otherwise.

    Attributes:
        epsilons: (E,) ascending perturbation sizes, in units of ``||x_t||``.
        relative_error: (seq, E) ``|real - predicted| / |predicted|``; NaN for
            tokens not checked (inf where the perturbed model gave NaN/inf).
        radius: (seq,) largest eps with ``relative_error <= tol`` there and at every
            smaller eps of the grid; 0 if the smallest eps already fails; NaN for
            tokens not checked.
        scores: (seq,) the scope's scores ``s_t`` (as :meth:`attribute` returns them).
        swap_distance: (seq,) ``min_{c != id_t} ||x_t - E[c]|| / ||x_t||``: how far
            (same units as eps) the nearest other token's embedding lies. NaN
            where ``||x_t|| = 0``.
        zero_distance: (seq,) distance to the zero vector in these units: 1.0
            (NaN where ``||x_t|| = 0``).
        predicted: (seq, E) the scope's prediction: the change of the scalar
            (``g_t . delta``), or for Fisher ``sigma^2 s_t / 2`` (``"expected"``) or
            the draws' mean quadratic form (``"paired"``); NaN for tokens not checked.
        observed: (seq, E) the measured change (mean KL over the draws for Fisher).
        sampling_error: (seq, E) Fisher only: standard error of the mean over the
            draws (of the KL for ``"expected"``, of KL minus its paired quadratic
            prediction for ``"paired"``) relative to the prediction; a relative
            error of this size is Monte Carlo noise, not non-linearity. NaN for the
            other scopes, for unchecked tokens and for ``n_draws=1``.
        noise_floor: (seq, E) Semantic / Temperature only: the largest change of
            the scalar under two seeded moves of x_t of the smallest size, orthogonal
            to g_t (so with no first-order change), relative to the prediction at
            each eps. It measures rounding (plus curvature at the smallest eps): where it is
            not well below ``tol`` the relative error there is not resolved, e.g.
            float32 rounding (also inside float64 models whose norms compute in
            float32, like Llama's RMSNorm). NaN for Fisher (not estimated: the
            KL is second order in the logits' rounding, negligible in float32 and
            float64 but not in half precision) and for unchecked tokens.
        tokens: (K,) int64 positions that were checked, ascending.
        input_ids: (seq,) int64 token ids of the prompt.
        token_labels: readable text per prompt token (core.text.prompt_labels), or the ids.
        position: absolute index of the explained token.
        scope: the scope's name ("semantic", "temperature", "fisher", or a registered one).
        tol: the tolerance the radii were computed with.
        n_draws, seed: the noise draws of the Fisher check (unused otherwise).
        fisher_reference: ``"expected"`` or ``"paired"`` for an isotropic check (Fisher), else None.
        perturbation: what was moved: the scope's ``perturbation``, ``"gradient"``
            (along the unit gradient; Semantic, Temperature) or ``"isotropic"``
            (Gaussian noise; Fisher); or ``"deletion"`` for a map made with
            ``reduce="input"``: each ``x_t`` moved toward zero, ``x_t -> (1 - eps) x_t``.
        rules: the backward pass of the map checked (``"gradient"`` or ``"lrp"``).
    """

    epsilons: Tensor
    relative_error: Tensor
    radius: Tensor
    scores: Tensor
    swap_distance: Tensor
    zero_distance: Tensor
    predicted: Tensor
    observed: Tensor
    sampling_error: Tensor
    noise_floor: Tensor
    tokens: Tensor
    input_ids: Tensor
    token_labels: tuple[str, ...]
    position: int
    scope: str
    tol: float
    n_draws: int
    seed: int
    fisher_reference: Optional[str] = None
    perturbation: str = "gradient"
    rules: str = "gradient"

    def summary(self) -> str:
        """A short text report: one line per checked token with its score, radius
        and swap distance, and how many tokens are valid over the whole grid. A
        token whose first failing eps lies within the check's own noise (noise
        floor or sampling error above ``tol / 2`` there) is flagged: its radius
        is a lower bound set by the check's resolution, not by the model."""
        largest = float(self.epsilons[-1])
        reference = f" ({self.fisher_reference} reference)" if self.fisher_reference else ""
        lines = [
            f"linearity check of the {self.scope} scope{reference} at position {self.position} "
            f"(tol {self.tol:g}, eps {float(self.epsilons[0]):g}..{largest:g} x ||x_t||)"
        ]
        width = max([len(self.token_labels[t]) for t in self.tokens.tolist()] + [5])
        lines.append(f"  {'pos':>4}  {'token':<{width}}  {'score':>10}  {'radius':>7}  {'swap':>6}")
        flagged = 0
        for t, limited in zip(self.tokens.tolist(), self.limited_by_noise()[self.tokens].tolist()):
            flagged += limited
            lines.append(
                f"  {t:>4}  {self.token_labels[t]:<{width}}  {float(self.scores[t]):>10.3e}  "
                f"{float(self.radius[t]):>7.3g}  {float(self.swap_distance[t]):>6.3g}" + ("  *" if limited else "")
            )
        checked = self.radius[self.tokens]
        whole = int((checked == largest).sum())
        failing = int((checked == 0).sum())
        lines.append(
            f"  {whole}/{len(self.tokens)} tokens valid up to the largest eps, "
            f"{failing} fail already at the smallest"
        )
        if flagged:
            cause = (
                "the Monte Carlo error of the mean KL (more n_draws, or fisher_reference='paired')"
                if self.perturbation == "isotropic"
                else "rounding (the noise floor; larger eps or a float64 model)"
            )
            lines.append(f"  * the first failing eps is within {cause}")
        return "\n".join(lines)

    def limited_by_noise(self) -> Tensor:
        """(seq,) bool: checked tokens whose first failing eps has a noise floor
        (Semantic, Temperature) or sampling error (Fisher) above ``tol / 2``."""
        noise = self.sampling_error if self.perturbation == "isotropic" else self.noise_floor
        failing = ~(self.relative_error <= self.tol)  # NaN (unchecked) counts as failing
        first = failing.long().argmax(dim=1)  # first failing eps (0 when none fails)
        any_fail = failing.any(dim=1)
        at_first = noise.gather(1, first[:, None])[:, 0]
        out = any_fail & (at_first > self.tol / 2)
        out[~torch.isin(torch.arange(out.shape[0]), self.tokens)] = False
        return out

    def __str__(self) -> str:
        return self.summary()
