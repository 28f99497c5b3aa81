"""Faithfulness metrics for token attributions of causal LMs: remove the tokens
an attribution ranks highest and measure how the model's prediction moves.

They work with scores from ANY method (our scopes, Captum baselines, random):
every metric takes a HF causal LM, one tokenised prompt and a score vector with
one score per prompt token. The protocol is written down in docs/method.md.

Where each kind lives:

- :mod:`.settings` - :class:`AblationSettings`, the one object carrying how a
  token is removed (mode, replacement token, special tokens, batch size);
- :mod:`.ablation` - rankable tokens, ranking, fraction -> token count, and the
  batched no-grad forwards (:func:`ablated_log_probs`);
- :mod:`.curves` - the paper's :func:`aopc`, :func:`deletion_curve`,
  :func:`insertion_curve`, :func:`deletion_curves` (several methods in shared
  batches), ERASER :func:`comprehensiveness` and :func:`sufficiency`;
- :mod:`.leave_one_out` - ground-truth influence KL(P_orig || P_ablated) of each
  token and :func:`loo_agreement` of scores with it;
- :mod:`.sinks` - :func:`sink_report`: a map's share of BOS / special tokens and
  of the first real tokens against the leave-one-out share of the same positions;
- :mod:`.evaluate` - several of these at once.

Vocabulary used throughout:

- ``n``: prompt length; ``position``: index of the token whose next-token
  prediction is explained (default -1, the last).
- ``y*`` (``target``): the model's own top-1 prediction at ``position`` on the
  intact prompt, unless a target is given.
- rankable tokens: the tokens at or before ``position`` that are not special
  (BOS, EOS, PAD, ...; see :func:`captum_jscopes.core.tokens.special_tokens_mask`).
  Only they are ranked and ablated; special tokens act as attention sinks and
  are never removed unless ``include_special=True``.
- ``m``: number of rankable tokens. A fraction f of the prompt means the top
  ``max(1, floor(f * m))`` rankable tokens.

The caller's model is never changed: a model in train mode is switched to eval
(dropout off) for the call and every module's flag and every parameter's
``requires_grad`` are restored afterwards, also on error.
"""

from captum_jscopes.metrics.ablation import AblatedPrompt, ablated_log_probs, ablation_inputs, n_tokens_for_fraction, rank_tokens, rankable_mask
from captum_jscopes.metrics.checks import check_fractions
from captum_jscopes.metrics.curves import (
    AOPC_FRACTIONS,
    CURVE_FRACTIONS,
    ERASER_FRACTIONS,
    AOPCResult,
    CurveResult,
    EraserResult,
    aopc,
    comprehensiveness,
    deletion_curve,
    deletion_curves,
    insertion_curve,
    sufficiency,
    trapezoid_area,
)
from captum_jscopes.metrics.evaluate import METRICS, evaluate
from captum_jscopes.metrics.leave_one_out import LeaveOneOutResult, LooAgreement, leave_one_out, loo_agreement, single_token_kl
from captum_jscopes.metrics.settings import ABLATION_MODES, AblationSettings, replacement_token_id
from captum_jscopes.metrics.sinks import SINK_MODES, SinkReport, SinkRow, sink_report

__all__ = [
    "ABLATION_MODES",
    "AOPC_FRACTIONS",
    "AOPCResult",
    "AblatedPrompt",
    "AblationSettings",
    "CURVE_FRACTIONS",
    "CurveResult",
    "ERASER_FRACTIONS",
    "EraserResult",
    "LeaveOneOutResult",
    "LooAgreement",
    "METRICS",
    "SINK_MODES",
    "SinkReport",
    "SinkRow",
    "ablated_log_probs",
    "ablation_inputs",
    "aopc",
    "check_fractions",
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
    "single_token_kl",
    "sink_report",
    "sufficiency",
    "trapezoid_area",
]
