"""Temperature Scope: which input tokens drive the model's confidence."""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from captum_jscopes.scopes.base import JacobianScope, RunForward


class TemperatureScope(JacobianScope):
    """Temperature Scope (arXiv 2601.16407, section 3.2).

    Writing ``y = ||y|| * y_hat``, the logits are ``||y|| * (W y_hat)``: ``||y||``
    acts as an inverse temperature. The scope projects on ``v = y_hat`` (held
    constant), so the score of token t is ``||d ||y|| / d x_t||_2``. No target; one
    forward and one backward pass.
    """

    name = "temperature"

    def _scores(self, run: RunForward, targets: Optional[Tensor], **options: Any) -> tuple[Tensor, Optional[Tensor]]:
        self._reject_options(options)
        forward = run(1.0)
        y = forward.hidden.detach().to(forward.compute_dtype)
        direction = y / y.norm(dim=-1, keepdim=True)
        return forward.squared_norms(direction[None], self.chunk_size)[0].sqrt(), None
