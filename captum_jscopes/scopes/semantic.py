"""Semantic Scope: which input tokens drive one target logit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from captum_jscopes.core.forward import ScopeForward
from captum_jscopes.scopes.base import JacobianScope, RunForward, ScopeOptions
from captum_jscopes.core.tokens import resolve_target


@dataclass(frozen=True)
class SemanticOptions(ScopeOptions):
    """Options of :meth:`SemanticScope.attribute`."""

    n_steps: Optional[int] = field(
        default=None,
        metadata={"help": "path-integrated Semantic Scope with this many steps (the paper's comparison; "
                          "n_steps forward and backward passes). Default: the local map"},
    )


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
            take the L2 norm (``reduce="input"``: the absolute sum, Integrated
            Gradients' token attribution). Costs n_steps forward and backward passes. The paper
            advises against it for LLMs (attribution piles onto attention sinks).
    """

    name = "semantic"
    takes_target = True
    explains = "the logit of the target token (minus the foil's)"
    Options = SemanticOptions

    @classmethod
    def backward_passes(cls, options: SemanticOptions, hidden_size: int) -> int:
        return options.n_steps or 1

    @classmethod
    def local_options(cls, options: SemanticOptions) -> SemanticOptions:
        if options.n_steps is not None:
            raise ValueError("the path-integrated Semantic Scope (n_steps) is not a local map; drop n_steps")
        return options

    def shows_own_progress(self, options: SemanticOptions) -> bool:
        return options.n_steps is not None  # a bar over the path's steps

    def directions(self, forward: ScopeForward, targets: Optional[Tensor]) -> Tensor:
        return self._direction(forward, targets)[None]

    def readout(self, hidden: Tensor, logits: Tensor, targets: Optional[Tensor]) -> Tensor:
        """(B,) the target's logit, minus the foil's for a (target, foil) pair."""
        pair = targets.reshape(-1).tolist()
        value = logits[:, pair[0]]
        return value - logits[:, pair[1]] if len(pair) == 2 else value

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
        self, run: RunForward, targets: Optional[Tensor], options: SemanticOptions, *, progress: bool = False
    ) -> tuple[Tensor, Optional[Tensor]]:
        n_steps = options.n_steps
        if n_steps is None:
            return super()._scores(run, targets, options)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        total, embeddings = None, None
        with tqdm(total=n_steps, desc=f"{self.name}: path steps", unit="step", leave=False, disable=not progress) as bar:
            for step in range(n_steps, 0, -1):  # alpha = 1 first: it fixes the explained target
                forward = run(step / n_steps)
                if forward.layer_states is not None:
                    raise ValueError("the path-integrated Semantic Scope (n_steps) has no layer view; drop n_steps")
                if targets is None:
                    targets = forward.logits.argmax(-1).cpu()
                if embeddings is None:
                    embeddings = forward.embeddings.detach()
                grads = forward.vjp(self._direction(forward, targets)[None])[0]  # (B, P, n, e)
                total = grads if total is None else total + grads
                bar.update(1)
        path = ((total / n_steps) * embeddings[:, None]).to(forward.compute_dtype)
        # "input": the signed sum, Integrated Gradients' own token attribution (its completeness holds)
        return (path.sum(-1).abs() if options.reduce == "input" else path.norm(dim=-1)), None

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
