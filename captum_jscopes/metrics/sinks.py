"""The attention-sink artifact, measured: how much of a map's total sits on the
special tokens and the first real tokens, against how much of the prediction
those same positions really carry.

A map's share of a group of positions (``score_share``) is compared with the
share of the leave-one-out KL the group holds (``loo_share``, the ground truth
of :mod:`.leave_one_out`, under each ablation mode). Their difference,
``excess = score_share - loo_share``, is the part of the map that the model's
behaviour does not back: positive where a scope over-credits the sink. Ablating
the whole group at once (``joint_kl``, ``prediction_changed``) says whether the
early tokens matter to the prediction at all.

Both shares are taken over the same tokens: those at or before the explained
position, special tokens included (a map made with
``exclude_special_tokens=True`` gives them 0, and that 0 is what is compared).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.tokens import special_tokens_mask
from captum_jscopes.metrics.ablation import AblatedPrompt
from captum_jscopes.metrics.checks import Scores, check_scores
from captum_jscopes.metrics.leave_one_out import single_token_kl
from captum_jscopes.metrics.settings import ABLATION_MODES, AblationSettings

__all__ = ["SINK_MODES", "SinkRow", "SinkReport", "sink_report"]

#: the ablations the report compares with by default: the paper's zero embedding, and attention masking,
#: which removes a token without putting an out-of-distribution vector in its place
SINK_MODES = ("zero", "mask")


@dataclass(frozen=True)
class SinkRow:
    """One group of positions under one ablation mode.

    Attributes:
        group: ``"special"`` (BOS and other special tokens) or ``"first_k"`` (the
            first k tokens that are not special).
        mode: the ablation mode of the leave-one-out reference.
        positions: the group's absolute positions (empty if the prompt has none).
        score_share: the map's share of its total held by the group (NaN if the
            map is all zero).
        loo_share: the group's share of the total leave-one-out KL (NaN if every
            single ablation leaves the prediction exactly unchanged).
        uniform_share: ``len(positions) / m``, the share of a flat map.
        joint_kl: ``KL(P_orig || P)`` when the whole group is ablated at once
            (0 for an empty group).
        prediction_changed: whether that joint ablation changes the top-1 prediction.
    """

    group: str
    mode: str
    positions: tuple[int, ...]
    score_share: float
    loo_share: float
    uniform_share: float
    joint_kl: float
    prediction_changed: bool

    @property
    def excess(self) -> float:
        """``score_share - loo_share``: the share of the map the model's behaviour does not back."""
        return self.score_share - self.loo_share


@dataclass(frozen=True)
class SinkReport:
    """Sink shares of one map on one prompt (from :func:`sink_report`).

    Attributes:
        rows: one :class:`SinkRow` per (group, mode), groups first.
        k: the number of leading real tokens in ``"first_k"``.
        position: the explained position (absolute).
        n_tokens: m, the tokens both shares are taken over.
        loo_kl: ``{mode: (n,) float64 tensor}``, the leave-one-out KL of every
            token (0 after ``position``), for further analysis.
    """

    rows: tuple[SinkRow, ...]
    k: int
    position: int
    n_tokens: int
    loo_kl: dict[str, Tensor]

    def row(self, group: str, mode: str) -> SinkRow:
        """The row of ``group`` under ``mode``."""
        for r in self.rows:
            if r.group == group and r.mode == mode:
                return r
        raise KeyError(f"no row for group {group!r} and mode {mode!r}")

    def table(self) -> str:
        """The rows as a markdown table."""
        lines = [
            "| group | ablation | positions | map share | LOO share | excess | flat share | joint KL | top-1 changes |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.group} | {r.mode} | {','.join(map(str, r.positions)) or '-'} | {r.score_share:.3f} | "
                f"{r.loo_share:.3f} | {r.excess:+.3f} | {r.uniform_share:.3f} | {r.joint_kl:.3g} | "
                f"{'yes' if r.prediction_changed else 'no'} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def sink_report(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    k: int = 1,
    position: int = -1,
    modes: Sequence[str] = SINK_MODES,
    settings: Optional[AblationSettings] = None,
    **ablation: Any,
) -> SinkReport:
    """Compare a map's share of the early positions with their leave-one-out share.

    Args:
        model: a Hugging Face causal LM (not modified).
        input_ids: (n,) or (1, n) token ids of one prompt.
        scores: (n,) non-negative scores of any method for the prediction at
            ``position`` (e.g. ``SemanticScope(...).attribute(ids)[0]``; make it
            with ``exclude_special_tokens=False`` to see what a scope gives BOS).
        k: how many leading non-special tokens form the ``"first_k"`` group.
            Default 1.
        position: the explained position. Default -1.
        modes: ablation modes of the leave-one-out reference, each in
            ``ABLATION_MODES``. Default :data:`SINK_MODES` (``"zero"``, ``"mask"``).
        settings, **ablation: as in :func:`captum_jscopes.metrics.aopc`, except
            ``mode`` (set by ``modes``) and ``include_special`` (always True:
            the special tokens are one of the groups).
    Returns:
        :class:`SinkReport`.
    Raises:
        ValueError: negative or NaN scores, a bad ``k`` or an unknown mode.
    """
    modes = tuple(modes)
    if not modes or any(m not in ABLATION_MODES for m in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct values from {ABLATION_MODES}, got {modes!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if "mode" in ablation or "include_special" in ablation:
        raise TypeError("sink_report sets mode (through modes=) and include_special itself")
    base = AblationSettings.of(settings, **ablation)
    rows: list[SinkRow] = []
    loo_kl: dict[str, Tensor] = {}
    with preserved_state(model, grad=False):
        for mode in modes:
            prompt = AblatedPrompt.prepare(model, input_ids, position, AblationSettings.of(base, mode=mode, include_special=True))
            s = check_scores(scores, prompt.n)
            if bool((s < 0).any()):
                raise ValueError("sink_report needs non-negative scores (take .abs() of signed attributions)")
            groups = _groups(prompt, k, base.tokenizer)
            kl = single_token_kl(prompt)
            loo_kl[mode] = kl
            joint = prompt.run(prompt.masks([torch.tensor(p, dtype=torch.long) for p in groups.values()]))
            joint_kl = (prompt.log_probs.exp() * (prompt.log_probs - joint)).sum(-1).clamp(min=0.0)
            s = s * prompt.rankable  # tokens after the position carry no share
            for (name, positions), kl_joint, log_probs in zip(groups.items(), joint_kl, joint):
                rows.append(
                    SinkRow(
                        group=name,
                        mode=mode,
                        positions=positions,
                        score_share=_share(s, positions),
                        loo_share=_share(kl, positions),
                        uniform_share=len(positions) / prompt.m,
                        joint_kl=float(kl_joint),
                        prediction_changed=bool(int(log_probs.argmax()) != prompt.target),
                    )
                )
    rows.sort(key=lambda r: (r.group != "special", modes.index(r.mode)))
    return SinkReport(rows=tuple(rows), k=k, position=prompt.position, n_tokens=prompt.m, loo_kl=loo_kl)


def _groups(prompt: AblatedPrompt, k: int, tokenizer: Any) -> dict[str, tuple[int, ...]]:
    """The special tokens and the first k others, among the tokens up to the position."""
    special = special_tokens_mask(prompt.ids.cpu(), tokenizer, getattr(prompt.model, "config", None))
    inside = prompt.rankable
    specials = (inside & special).nonzero().flatten().tolist()
    real = (inside & ~special).nonzero().flatten().tolist()
    return {"special": tuple(specials), "first_k": tuple(real[:k])}


def _share(values: Tensor, positions: tuple[int, ...]) -> float:
    total = float(values.sum())
    if total == 0.0:
        return float("nan")
    return float(values[list(positions)].sum()) / total if positions else 0.0
