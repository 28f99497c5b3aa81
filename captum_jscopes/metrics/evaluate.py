"""Several faithfulness metrics of one score vector in one call."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor, nn

from captum_jscopes.core.tokens import TargetLike
from captum_jscopes.metrics.checks import Scores, check_position
from captum_jscopes.metrics.curves import aopc, comprehensiveness, deletion_curve, insertion_curve, sufficiency
from captum_jscopes.metrics.leave_one_out import LeaveOneOutResult, leave_one_out, loo_agreement
from captum_jscopes.metrics.settings import AblationSettings

__all__ = ["METRICS", "evaluate"]

METRICS = ("aopc", "deletion", "deletion_least", "insertion", "comprehensiveness", "sufficiency", "loo")


def evaluate(
    model: nn.Module,
    input_ids: Tensor,
    scores: Scores,
    *,
    metrics: Sequence[str] = ("aopc", "loo"),
    loo: Optional[LeaveOneOutResult] = None,
    position: int = -1,
    target: Optional[TargetLike] = None,
    settings: Optional[AblationSettings] = None,
    **ablation: Any,
) -> dict[str, Any]:
    """Several faithfulness metrics of one score vector, each with its defaults.

    Args:
        metrics: names among "aopc", "deletion", "deletion_least", "insertion",
            "comprehensiveness", "sufficiency", "loo". Default ("aopc", "loo").
        loo: a precomputed :func:`leave_one_out` of this prompt (it does not
            depend on the scores: compute it once per prompt and share it across
            methods); computed here when "loo" is asked and it is None.
        Other arguments as in :func:`captum_jscopes.metrics.aopc` (``target``
        does not affect "loo").
    Returns:
        dict name -> result: :class:`AOPCResult`, :class:`CurveResult`,
        :class:`EraserResult`, or :class:`LooAgreement` for "loo".
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose among {METRICS}")
    settings = AblationSettings.of(settings, **ablation)
    ranked = dict(position=position, target=target, settings=settings)
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
                loo = leave_one_out(model, input_ids, position=position, settings=settings)
            elif not isinstance(loo, LeaveOneOutResult):
                raise TypeError(f"loo must be a LeaveOneOutResult, got {type(loo).__name__}")
            elif check_position(position, loo.kl.shape[0]) != loo.position:
                raise ValueError(f"loo was computed at position {loo.position}, not at {position}")
            results[name] = loo_agreement(scores, loo)
        else:
            results[name] = runners[name]()
    return results
