"""Semantic Scope: which input tokens drive one target logit."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from captum_jscopes.scopes.base import JacobianScope, RunForward
from captum_jscopes.core.tokens import resolve_target


class SemanticScope(JacobianScope):
    """Semantic Scope (arXiv 2601.16407, section 3.1): ``v = w_target``, the
    gradient of the target logit w.r.t. the final hidden state, so the score of
    token t is ``||d z_target / d x_t||_2``. One forward and one backward pass.

    ``target`` of :meth:`attribute`:
        - a token id, a one-element tensor, or a string that encodes to exactly one
          token (else a ValueError shows the pieces);
        - a tuple ``(target, foil)``: the contrastive scope ``v = w_target - w_foil``,
          which explains "why target rather than foil";
        - a list (or 1-D tensor) with one of the above per row of a batch;
        - None (default): the model's own top-1 prediction.

    Options of :meth:`attribute`:
        n_steps (int, optional): path-integrated Semantic Scope, the paper's
            comparison: average the gradient over the embeddings scaled by
            ``alpha = k / n_steps``, k = 1..n_steps, multiply by the embeddings and
            take the L2 norm. Costs n_steps forward and backward passes. The paper
            advises against it for LLMs (attribution piles onto attention sinks).
    """

    name = "semantic"

    def _targets(self, target: Any, batch: int) -> Optional[Tensor]:
        if target is None:
            return None
        if isinstance(target, Tensor) and target.dim() == 1 and target.numel() == batch and batch > 1:
            target = target.tolist()
        rows = target if isinstance(target, list) else [target] * batch
        if len(rows) != batch:
            raise ValueError(f"got {len(rows)} targets for a batch of {batch} prompts")
        vocab = self.model.get_output_embeddings().weight.shape[0]
        ids = [self._pair(row, vocab) for row in rows]
        if any(len(pair) != len(ids[0]) for pair in ids):
            raise ValueError("mix of plain and contrastive (target, foil) targets in one batch")
        return torch.tensor(ids, dtype=torch.long)[:, None]  # (B, 1, 1 or 2)

    def _pair(self, target: Any, vocab: int) -> list[int]:
        if isinstance(target, tuple):
            if len(target) != 2:
                raise ValueError(f"a contrastive target is a (target, foil) pair, got {len(target)} items")
            pair = [resolve_target(t, self.tokenizer, vocab) for t in target]
            if pair[0] == pair[1]:
                raise ValueError(f"target and foil are the same token ({pair[0]}): the contrast is zero")
            return pair
        return [resolve_target(target, self.tokenizer, vocab)]

    def _scores(
        self, run: RunForward, targets: Optional[Tensor], n_steps: Optional[int] = None, **options: Any
    ) -> tuple[Tensor, Optional[Tensor]]:
        self._reject_options(options)
        if n_steps is None:
            forward = run(1.0)
            direction = self._direction(forward, targets)
            return forward.squared_norms(direction[None], self.chunk_size)[0].sqrt(), None
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        total, embeddings = None, None
        for step in range(n_steps, 0, -1):  # alpha = 1 first: it fixes the explained target
            forward = run(step / n_steps)
            if targets is None:
                targets = forward.logits.argmax(-1).cpu()
            if embeddings is None:
                embeddings = forward.embeddings.detach()
            grads = forward.vjp(self._direction(forward, targets)[None])[0]  # (B, P, n, e)
            total = grads if total is None else total + grads
        path = (total / n_steps) * embeddings[:, None]
        return path.to(forward.compute_dtype).norm(dim=-1), None

    @staticmethod
    def _direction(forward, targets: Optional[Tensor]) -> Tensor:
        """(B, P, d): gradient of the target logit (minus the foil's) w.r.t. y."""
        if targets is None:
            targets = forward.logits.argmax(-1)
        targets = targets.to(forward.logits.device)
        if targets.dim() == 2:
            targets = targets.unsqueeze(-1)
        if targets.shape[1] == 1 and forward.positions.shape[1] > 1:
            targets = targets.expand(-1, forward.positions.shape[1], -1)
        direction = forward.head_rows(targets[..., 0])
        if targets.shape[-1] == 2:
            direction = direction - forward.head_rows(targets[..., 1])
        return direction
