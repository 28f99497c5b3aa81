"""Temperature Scope: which input tokens drive the model's confidence."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_jscopes.core.forward import ScopeForward
from captum_jscopes.scopes.base import JacobianScope


class TemperatureScope(JacobianScope):
    """Temperature Scope (arXiv 2601.16407, section 3.2).

    Writing ``y = ||y|| * y_hat``, the logits are ``||y|| * (W y_hat)``: ``||y||``
    acts as an inverse temperature. The scope projects on ``v = y_hat`` (held
    constant), so the score of token t is ``||d ||y|| / d x_t||_2``. No target, no
    options; one forward and one backward pass.
    """

    name = "temperature"
    explains = "the norm of the final hidden state (the model's confidence)"

    def directions(self, forward: ScopeForward, targets: Optional[Tensor]) -> Tensor:
        """(1, B, P, d): the unit vector ``y / ||y||``, held constant."""
        y = forward.hidden.detach().to(forward.compute_dtype)
        return (y / y.norm(dim=-1, keepdim=True))[None]

    def readout(self, hidden: Tensor, logits: Tensor, targets: Optional[Tensor]) -> Tensor:
        """(B,) ``||y||``: the confidence the map is the gradient of."""
        return hidden.norm(dim=-1)
