"""The base class of the three Jacobian Scopes.

It owns everything the scopes share: input checks, the guard that leaves the
caller's model untouched, the single forward pass (:mod:`captum_jscopes.core.forward`)
and which tokens get a score. A concrete scope only says which directions of
hidden space it projects on (:meth:`JacobianScope._scores`).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn
from tqdm import tqdm

from captum_jscopes.core.forward import ScopeForward, prepare_inputs, resolve_positions, run_forward
from captum_jscopes.core.model_state import check_causal_lm, preserved_state
from captum_jscopes.core.tokens import special_tokens_mask

RunForward = Callable[[float], ScopeForward]


@dataclass
class ScopeOutput:
    """What one scope call computed: ``scores`` and ``error`` (B, P, seq), and the
    model's ``logits`` (B, P, V) at the explained positions."""

    scores: Tensor
    error: Tensor
    logits: Tensor


class JacobianScope(GradientAttribution):
    """Scores each input token t by a vector-Jacobian product ``v^T J_t`` of the
    final hidden state w.r.t. the token's input embedding (arXiv 2601.16407).

    Args:
        model: a Hugging Face causal LM (``AutoModelForCausalLM``), on any device,
            in any dtype, or dispatched with accelerate's ``device_map``. It is never
            modified.
        tokenizer: optional; needed for string targets and to know the special
            tokens (else the config's BOS/EOS/PAD ids are used).
        exclude_special_tokens: give special tokens (BOS, chat markers, ...) a score
            of 0. They act as attention sinks and would dominate every map.
            Default: True.
        chunk_size: backward passes batched together; bounds memory for scopes
            that use many directions (Fisher). Default: 32.
    """

    #: short name used in reports and file names
    name = "scope"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        exclude_special_tokens: bool = True,
        chunk_size: int = 32,
    ) -> None:
        check_causal_lm(model)
        super().__init__(model)
        # kept apart from forward_func: Captum's LLM wrapper replaces forward_func on its copy
        self.model = model
        self.tokenizer = tokenizer
        self.exclude_special_tokens = exclude_special_tokens
        self.chunk_size = chunk_size

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute(  # type: ignore[override]
        self,
        input_ids: Tensor,
        target: Any = None,
        position: Union[int, Tensor] = -1,
        attention_mask: Optional[Tensor] = None,
        **options: Any,
    ) -> Tensor:
        """Score every input token for the next-token prediction at ``position``.

        Args:
            input_ids: (seq,) or (batch, seq) token ids; pad rows of different
                lengths and pass ``attention_mask``.
            target: what is explained; only the Semantic Scope takes one (see its
                docstring). Default: None.
            position: index of the token whose next-token prediction is explained,
                counted over each row's real (unpadded) tokens; -1 (default) is the
                last. An int for all rows or a (batch,) tensor.
            attention_mask: (batch, seq) of 0/1; default all ones.
            **options: ``token_mask`` (batch, seq) bool: only these tokens are
                scored (e.g. the user's message of a chat prompt);
                ``exclude_special_tokens`` overrides the constructor's choice;
                ``progress`` (bool, default False) shows a progress bar (see
                :meth:`scope_output`); and the scope's own options.
        Returns:
            (batch, seq) float tensor (float32; float64 for a float64 model). The
            token at ``position`` itself is scored; tokens after it, padding and
            excluded special tokens get 0.
        """
        ids, mask = self._inputs(input_ids, attention_mask)
        positions = resolve_positions(position, mask)[:, None]
        targets = self._targets(target, ids.shape[0])
        result = self.attribute_positions(ids, positions, targets, mask, **options)
        if isinstance(result, tuple):
            return tuple(r[:, 0] for r in result)  # type: ignore[return-value]
        return result[:, 0]

    def attribute_positions(
        self, input_ids: Tensor, positions: Tensor, targets: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None, *, return_error: bool = False, **options: Any,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Scores for several explained positions of each prompt from ONE forward
        pass (used for teacher-forced multi-token targets).

        Args:
            input_ids: (batch, seq).
            positions: (batch, P) absolute column indices of the explained tokens.
            targets: (batch, P) target ids, or (batch, P, 2) (target, foil) pairs, for
                the Semantic Scope; None otherwise.
            return_error: also return the estimated standard error of each score
                (zeros for exact scopes, NaN where an estimator gives none).
            **options: ``token_mask``, ``exclude_special_tokens`` and the scope's
                own options, as in :meth:`attribute`.
        Returns:
            (batch, P, seq) scores, or ``(scores, error)`` with ``return_error``.
        """
        output = self.scope_output(input_ids, positions, targets, attention_mask, **options)
        return (output.scores, output.error) if return_error else output.scores

    def scope_output(
        self,
        input_ids: Tensor,
        positions: Tensor,
        targets: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        *,
        token_mask: Optional[Tensor] = None,
        exclude_special_tokens: Optional[bool] = None,
        progress: bool = False,
        **options: Any,
    ) -> "ScopeOutput":
        """Like :meth:`attribute_positions`, returning a :class:`ScopeOutput`:
        the scores, their standard error and the model's logits at the explained
        positions, all from the same single forward pass (the Captum wrapper
        reads the target probabilities off these logits).

        ``progress=True`` shows a tqdm bar on stderr: with ``n_steps`` (the
        path-integrated Semantic Scope) one tick per step of the path; else, with
        several explained positions (a multi-token target), one tick per
        position, each position's backward passes run on the same forward pass
        and give the same scores as without the bar. A scope whose ``_scores``
        takes ``progress`` itself (the Fisher Scope) shows its own bar instead.
        Default False."""
        ids, mask = self._inputs(input_ids, attention_mask)
        positions = positions.to(ids.device).long()
        if positions.dim() != 2 or positions.shape[0] != ids.shape[0]:
            raise ValueError(f"positions must have shape (batch, P), got {tuple(positions.shape)}")
        if bool(((positions < 0) | (positions >= ids.shape[1])).any()):
            raise ValueError(f"positions {positions.tolist()} are outside the prompt of {ids.shape[1]} tokens")
        scored = self._scored_tokens(ids, mask, positions, token_mask, exclude_special_tokens)
        logits: list[Tensor] = []

        def run(scale: float = 1.0) -> ScopeForward:
            forward = run_forward(self.model, ids, mask, positions, embedding_scale=scale)
            if scale == 1.0 and not logits:
                logits.append(forward.logits)
            return forward

        with preserved_state(self.model):
            scores, error = self._scores_with_progress(run, targets, positions.shape[1], progress, options)
        scored = scored.to(scores)
        error = torch.zeros_like(scores) if error is None else error * scored
        return ScopeOutput(scores=scores * scored, error=error, logits=logits[0])

    # -- what a scope defines -------------------------------------------------
    def _scores(
        self, run: RunForward, targets: Optional[Tensor], **options: Any
    ) -> tuple[Tensor, Optional[Tensor]]:
        """(batch, P, seq) raw scores and their standard error (None when exact);
        ``run(scale)`` performs the forward pass."""
        raise NotImplementedError

    def _targets(self, target: Any, batch: int) -> Optional[Tensor]:
        """Turn the user's ``target`` into a (batch, 1[, 2]) tensor of ids."""
        if target is not None:
            raise ValueError(f"{type(self).__name__} explains the whole prediction and takes no target; got {target!r}")
        return None

    # -- progress ---------------------------------------------------------------
    def _scores_with_progress(
        self, run: RunForward, targets: Optional[Tensor], n_positions: int, progress: bool, options: dict
    ) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`_scores`, with a progress bar when ``progress`` is set."""
        if "progress" in inspect.signature(self._scores).parameters:
            # A scope with its own bar (Fisher: over all its backward passes, every
            # position's included) shows it. Its positions are not split here: its
            # estimator draws probes and chooses its split for all positions at once,
            # so one position at a time would give other (equally valid) numbers.
            return self._scores(run, targets, **options, progress=progress)
        if not progress:
            return self._scores(run, targets, **options)
        n_steps = options.get("n_steps")
        if n_steps is not None:
            return self._path_with_progress(run, targets, n_steps, options)
        per_position = targets is None or targets.shape[1] == n_positions
        if n_positions == 1 or not per_position:
            return self._scores(run, targets, **options)  # one step: nothing to count
        return self._positions_with_progress(run, targets, n_positions, options)

    def _path_with_progress(
        self, run: RunForward, targets: Optional[Tensor], n_steps: Any, options: dict
    ) -> tuple[Tensor, Optional[Tensor]]:
        """One tick per forward pass of a path-integrated scope (``n_steps`` of them)."""
        total = n_steps if isinstance(n_steps, int) and n_steps > 0 else None  # a bad value is _scores' error
        with tqdm(total=total, desc=f"{self.name}: path steps", unit="step", leave=False) as bar:
            calls = []

            def counted(scale: float = 1.0) -> ScopeForward:
                # a step is done when the next one starts (its backward passes come after the forward)
                if calls:
                    bar.update(1)
                calls.append(scale)
                return run(scale)

            result = self._scores(counted, targets, **options)
            bar.update(1)
        return result

    def _positions_with_progress(
        self, run: RunForward, targets: Optional[Tensor], n_positions: int, options: dict
    ) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`_scores` one explained position at a time, all on ONE forward pass,
        so that a bar can tick per target token. Each position's backward passes
        are independent of the others' (the direction sits at that position only),
        so the scores are those of a single call; what is lost is only the
        batching of the positions' backward passes into one vmap call."""
        forward = run(1.0)
        scores, errors = [], []
        with tqdm(total=n_positions, desc=f"{self.name}: target tokens", unit="token", leave=False) as bar:
            for p in range(n_positions):
                view = _position_view(forward, p)

                def at_position(scale: float = 1.0, view: ScopeForward = view) -> ScopeForward:
                    if scale != 1.0:
                        raise RuntimeError("a scope that rescales the embeddings needs n_steps to show progress")
                    return view

                row_targets = None if targets is None else targets[:, p : p + 1]
                score, error = self._scores(at_position, row_targets, **options)
                scores.append(score)
                errors.append(error)
                bar.update(1)
        error = None if any(e is None for e in errors) else torch.cat(errors, dim=1)
        return torch.cat(scores, dim=1), error

    # -- shared plumbing --------------------------------------------------------
    def _inputs(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return prepare_inputs(self.model, input_ids, attention_mask)

    def _scored_tokens(
        self,
        ids: Tensor,
        mask: Tensor,
        positions: Tensor,
        token_mask: Optional[Tensor],
        exclude_special_tokens: Optional[bool],
    ) -> Tensor:
        """(batch, P, seq) bool: tokens at or before the explained position, not
        padding, not an excluded special token, and inside ``token_mask``."""
        columns = torch.arange(ids.shape[1], device=ids.device)
        scored = (columns[None, None, :] <= positions[:, :, None]) & (mask[:, None, :] == 1)
        exclude = self.exclude_special_tokens if exclude_special_tokens is None else exclude_special_tokens
        if exclude:
            special = special_tokens_mask(ids, self.tokenizer, getattr(self.model, "config", None))
            scored &= ~special[:, None, :]
        if token_mask is not None:
            token_mask = torch.as_tensor(token_mask, device=ids.device).bool()
            if token_mask.dim() == 1:
                token_mask = token_mask.unsqueeze(0)
            if token_mask.shape != ids.shape:
                raise ValueError(f"token_mask shape {tuple(token_mask.shape)} != input_ids shape {tuple(ids.shape)}")
            scored &= token_mask[:, None, :]
        return scored

    @staticmethod
    def _reject_options(options: dict) -> None:
        if options:
            raise TypeError(f"unexpected option(s): {', '.join(sorted(options))}")


def _position_view(forward: ScopeForward, p: int) -> ScopeForward:
    """``forward`` restricted to explained position ``p``: the per-position fields
    are sliced (the slice of ``hidden`` stays on the same autograd graph, so its
    vector-Jacobian products need no new forward pass); the embeddings, the head
    and the mask are shared."""
    pick = slice(p, p + 1)
    return dataclasses.replace(
        forward,
        hidden=forward.hidden[:, pick],
        logits=forward.logits[:, pick],
        head_slope=None if forward.head_slope is None else forward.head_slope[:, pick],
        positions=forward.positions[:, pick],
    )
