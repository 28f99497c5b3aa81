"""The base class of the three Jacobian Scopes.

It owns everything the scopes share: input checks, the guard that leaves the
caller's model untouched, the single forward pass (:mod:`captum_jscopes.core.forward`)
and which tokens get a score. A concrete scope only says which directions of
hidden space it projects on (:meth:`JacobianScope._scores`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn
from tqdm import tqdm

from captum_jscopes.core.forward import (
    REDUCTIONS,
    RULES,
    ScopeForward,
    check_choice,
    prepare_inputs,
    resolve_positions,
    run_forward,
)
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


@dataclass(frozen=True)
class ScopeOptions:
    """Base of a scope's own options of :meth:`JacobianScope.attribute`: a
    frozen dataclass per scope (``SemanticScope.Options``, ``FisherScope.Options``),
    whose fields carry their default and ``metadata={"help": ...}``, from which
    the command line builds its flags. This base holds the two options every
    scope takes, registered ones included:

    - ``rules``: ``"gradient"`` (default: the plain Jacobian) or ``"lrp"``: every
      vector-Jacobian product runs through AttnLRP's propagation rules
      (:mod:`captum_jscopes.core.lrp`; Llama, Mistral, Qwen2/3, Gemma-3, GPT-2).
    - ``reduce``: ``"norm"`` (default: ``||v^T J_t||``, a token's influence along
      any direction) or ``"input"``: ``|v^T J_t x_t|``, the first-order effect of
      removing the token's embedding (Fisher: ``x_t^T J_t^T F J_t x_t``, the
      second-order KL of deleting it). Scores under ``"input"`` add over a span.
    """

    rules: str = field(
        default="gradient",
        metadata={"help": "backward pass: gradient (the plain Jacobian) or lrp (AttnLRP's rules for norms, "
                          "activations, gates and attention; Llama, Mistral, Qwen2/3, Gemma-3, GPT-2). "
                          "Default: gradient",
                  "choices": RULES},
    )
    reduce: str = field(
        default="norm",
        metadata={"help": "a token's score from its VJP g_t: norm (||g_t||) or input (|g_t . x_t|, the first-order "
                          "effect of deleting the token; Fisher: x_t^T J_t^T F J_t x_t). Default: norm",
                  "choices": REDUCTIONS},
    )


class JacobianScope(GradientAttribution):
    """Scores each input token t by a vector-Jacobian product ``v^T J_t`` of the
    final hidden state w.r.t. the token's input embedding (arXiv 2601.16407).

    A scope carries its own behaviour: everything the CLI, the datasets, the
    benchmarks, the Inseq methods, :func:`~captum_jscopes.linearity_check` and the
    span views need to know about it is a class attribute or a classmethod below,
    so that code asks the scope and never checks its name. A new scope subclasses
    this, sets them, defines :meth:`_scores` (and :meth:`readout`) and is
    registered with :func:`captum_jscopes.scopes.registry.register_scope`; see
    ``docs/extending.md``.

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

    #: short name used in the registry, reports, file names and ``--scope``
    name: ClassVar[str] = "scope"
    #: what the map explains, in a few words (error messages, Inseq)
    explains: ClassVar[str] = "a direction of the final hidden state"
    #: whether :meth:`attribute` takes a ``target`` (else a target is refused)
    takes_target: ClassVar[bool] = False
    #: how the scores of several tokens combine into one span's score (words,
    #: spans): ``"l2"`` (root of the sum of squares: the norm of the joint
    #: perturbation, for scores that are norms of one VJP) or ``"sum"`` (additive
    #: scores, such as a trace)
    span_rule: ClassVar[str] = "l2"
    #: what :func:`~captum_jscopes.linearity_check` moves: ``"gradient"`` (each
    #: token along the unit gradient of :meth:`readout`, a scalar, comparing the
    #: change with ``eps ||x_t|| score``) or ``"isotropic"`` (Gaussian noise,
    #: comparing the KL of :meth:`readout`'s log-probabilities with ``sigma^2 score / 2``)
    perturbation: ClassVar[str] = "gradient"
    #: the scope's options of :meth:`attribute` (a :class:`ScopeOptions` dataclass)
    Options: ClassVar[type] = ScopeOptions
    #: options of a cheaper map to suggest when a call will take long (the cost
    #: estimate of ``jscopes attribute``); empty: none
    quick_look: ClassVar[dict] = {}
    #: deprecated spellings :meth:`make_options` still accepts (with a DeprecationWarning)
    deprecated_options: ClassVar[tuple[str, ...]] = ()
    #: keys of a result's JSON settings that earlier versions wrote under another name:
    #: former -> today's (files with the former still load)
    renamed_settings: ClassVar[dict[str, str]] = {}

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

    # -- what code that uses a scope asks it ------------------------------------
    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of the scope's own options (the fields of :attr:`Options`)."""
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def make_options(cls, **options: Any) -> ScopeOptions:
        """The scope's :attr:`Options` from keyword options; a one-line
        TypeError names an option the scope does not take. Values are checked
        where they are used (one error message per value, in the scope)."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            known = ", ".join(cls.option_names()) or "none"
            raise TypeError(f"unexpected option(s) for the {cls.name} scope: {', '.join(unknown)} (its options: {known})")
        made = cls.Options(**options)
        check_choice("rules", made.rules, RULES)
        check_choice("reduce", made.reduce, REDUCTIONS)
        return made

    @classmethod
    def span_rule_of(cls, options: Optional[ScopeOptions] = None) -> str:
        """How token scores made with ``options`` combine over a span: ``"sum"`` under
        ``reduce="input"`` (first-order effects of deleting tokens add up), else the
        scope's :attr:`span_rule`."""
        if options is not None and options.reduce == "input":
            return "sum"
        return cls.span_rule

    @classmethod
    def backward_passes(cls, options: ScopeOptions, hidden_size: int) -> int:
        """Backward passes per explained token with these options (the unit of the
        cost estimate and of the benchmarks' budget column). Default: 1."""
        return 1

    @classmethod
    def randomised(cls, options: ScopeOptions) -> bool:
        """Whether the scores depend on a seed (probes drawn). Default: False."""
        return False

    @classmethod
    def local_options(cls, options: ScopeOptions) -> ScopeOptions:
        """The options :func:`~captum_jscopes.linearity_check` runs the scope with:
        a local, exact map (a ValueError where the options make it non-local;
        Fisher picks the exact estimator unless one was chosen). Default: the
        options as given."""
        return options

    @classmethod
    def settings(cls, options: ScopeOptions) -> dict:
        """The options as JSON settings of a result (``metadata["settings"]``):
        by default every option with a JSON-able value, under its own name."""
        return {k: v for k, v in dataclasses.asdict(options).items() if isinstance(v, (int, float, str, bool))}

    def shows_own_progress(self, options: ScopeOptions) -> bool:
        """Whether :meth:`_scores` draws its own progress bar for these options
        (then the positions are not split for a per-token bar). Default: False."""
        return False

    def readout(self, hidden: Tensor, logits: Tensor, targets: Optional[Tensor]) -> Tensor:
        """What the scope's map predicts the change of, for
        :func:`~captum_jscopes.linearity_check`: from the final hidden state
        ``hidden`` (B, d) and the logits (B, V) at the explained position (float64),
        a (B,) scalar whose gradient the map is (``perturbation="gradient"``) or
        (B, V) log-probabilities whose KL it predicts (``"isotropic"``).
        ``targets`` is :meth:`explained_targets`' (1, 1[, 2]) tensor or None."""
        raise NotImplementedError(f"{type(self).__name__} defines no readout; linearity_check cannot test it")

    def explained_targets(self, target: Any, logits: Tensor) -> Optional[Tensor]:
        """The (1, 1[, 2]) target ids :meth:`attribute` explains for ``target``
        on one prompt whose logits (1, 1, V) at the explained position are given:
        the model's prediction where the scope takes a target and none is given;
        None for a scope without target."""
        if not self.takes_target:
            return None
        targets = self._targets(target, 1)
        return logits.argmax(-1).cpu()[..., None] if targets is None else targets

    def directions(self, forward: ScopeForward, targets: Optional[Tensor]) -> Tensor:
        """(m, B, P, d) directions ``v`` whose VJP norms are the scores, for a
        scope defined by directions alone (Semantic, Temperature: m = 1)."""
        raise NotImplementedError

    @classmethod
    def exact_directions(cls, forward: ScopeForward) -> Tensor:
        """(m, B, P, d) directions ``v_i`` with ``sum_i v_i v_i^T`` the matrix whose
        quadratic form an isotropic scope's map is (Fisher: every eigen-direction
        ``sqrt(l_i) u_i`` of F, so that ``F = sum_i v_i v_i^T``), at ``forward``'s
        explained positions: the paired reference of
        :func:`~captum_jscopes.linearity_check` (``fisher_reference="paired"``) for a
        scope with ``perturbation = "isotropic"``. Default: a NotImplementedError."""
        raise NotImplementedError(f"{cls.__name__} defines no exact_directions: its map is no quadratic form "
                                  "sum_i (v_i^T J_t)^2 with known directions v_i")

    # -- attribution ---------------------------------------------------------------
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
            target: what is explained; only a scope with ``takes_target`` takes one
                (the Semantic Scope: see its docstring). Default: None.
            position: index of the token whose next-token prediction is explained,
                counted over each row's real (unpadded) tokens; -1 (default) is the
                last. An int for all rows or a (batch,) tensor.
            attention_mask: (batch, seq) of 0/1; default all ones.
            **options: ``token_mask`` (batch, seq) bool: only these tokens are
                scored (e.g. the user's message of a chat prompt);
                ``exclude_special_tokens`` overrides the constructor's choice;
                ``progress`` (bool, default False) shows a progress bar (see
                :meth:`scope_output`); ``return_error`` (bool, default False) also
                returns the standard error of each score; and the scope's own
                options (the fields of its :attr:`Options`).
        Returns:
            (batch, seq) float tensor (float32; float64 for a float64 model). The
            token at ``position`` itself is scored; tokens after it, padding and
            excluded special tokens get 0. With ``return_error``, ``(scores, error)``.
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
                a scope that takes a target; None otherwise.
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
        forward: Optional[ScopeForward] = None,
        layers: bool = False,
        **options: Any,
    ) -> "ScopeOutput":
        """Like :meth:`attribute_positions`, returning a :class:`ScopeOutput`:
        the scores, their standard error and the model's logits at the explained
        positions, all from the same single forward pass (the Captum wrapper
        reads the target probabilities off these logits).

        ``progress=True`` shows a tqdm bar on stderr: a scope that draws its own
        (Fisher: over its backward passes; the path-integrated Semantic Scope: over
        its steps) shows it; else, with several explained positions (a multi-token
        target), one tick per position, each position's backward passes run on the
        same forward pass and give the same scores as without the bar. Default False.

        ``forward``: a :class:`~captum_jscopes.core.forward.ScopeForward` of
        ``run_forward`` on the same ids, mask and positions, shared by several
        scopes (one forward for all of them); default None: this call runs its own.

        ``layers=True``: the scores (and errors) are (B, P, L + 1, seq): row 0 over
        the input embeddings (the usual map), row l at the residual stream after
        decoder layer l, from the same backward passes (see
        :func:`captum_jscopes.analysis.layers.layer_map`). Default False.
        """
        opts = self.make_options(**options)
        ids, mask = self._inputs(input_ids, attention_mask)
        positions = positions.to(ids.device).long()
        if positions.dim() != 2 or positions.shape[0] != ids.shape[0]:
            raise ValueError(f"positions must have shape (batch, P), got {tuple(positions.shape)}")
        if bool(((positions < 0) | (positions >= ids.shape[1])).any()):
            raise ValueError(f"positions {positions.tolist()} are outside the prompt of {ids.shape[1]} tokens")
        scored = self._scored_tokens(ids, mask, positions, token_mask, exclude_special_tokens)
        logits: list[Tensor] = []

        def run(scale: float = 1.0) -> ScopeForward:
            if forward is not None:
                if scale != 1.0:
                    raise ValueError("a shared forward pass serves scale 1 only; run a path-integrated scope alone")
                if forward.rules != opts.rules:
                    raise ValueError(f"the shared forward pass was run with rules={forward.rules!r}, this scope "
                                     f"asks for rules={opts.rules!r}; run one forward per rules")
                result = forward
            else:
                result = run_forward(self.model, ids, mask, positions, embedding_scale=scale, layers=layers,
                                     rules=opts.rules)
            if scale == 1.0 and not logits:
                logits.append(result.logits)
            # this scope's view: its own reduction on the (possibly shared) graph
            return dataclasses.replace(result, reduce=opts.reduce)

        with preserved_state(self.model):
            if progress and not self.shows_own_progress(opts) and positions.shape[1] > 1:
                scores, error = self._positions_with_progress(run, targets, positions.shape[1], opts)
            else:
                scores, error = self._scores(run, targets, opts, progress=progress)
        scored = scored.to(scores)
        if scores.dim() == 4:  # a layer view: the same tokens are scored at every layer
            scored = scored[:, :, None]
        error = torch.zeros_like(scores) if error is None else error * scored
        return ScopeOutput(scores=scores * scored, error=error, logits=logits[0])

    # -- what a scope defines -------------------------------------------------
    def _scores(
        self, run: RunForward, targets: Optional[Tensor], options: ScopeOptions, *, progress: bool = False
    ) -> tuple[Tensor, Optional[Tensor]]:
        """(batch, P, seq) raw scores and their standard error (None when exact);
        ``run(scale)`` performs the forward pass (scale multiplies the embeddings).
        The default projects on :meth:`directions`: the L2 norm of ``v^T J_t``
        (``|v^T J_t x_t|`` with ``reduce="input"``)."""
        forward = run(1.0)
        return forward.squared_norms(self.directions(forward, targets), self.chunk_size)[0].sqrt(), None

    def _targets(self, target: Any, batch: int) -> Optional[Tensor]:
        """Turn the user's ``target`` into a (batch, 1[, 2]) tensor of ids."""
        if target is not None:
            raise ValueError(f"{type(self).__name__} explains the whole prediction and takes no target; got {target!r}")
        return None

    # -- progress ---------------------------------------------------------------
    def _positions_with_progress(
        self, run: RunForward, targets: Optional[Tensor], n_positions: int, options: ScopeOptions
    ) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`_scores` one explained position at a time, all on ONE forward pass,
        so that a bar can tick per target token. Each position's backward passes
        are independent of the others' (the direction sits at that position only),
        so the scores are those of a single call; what is lost is only the
        batching of the positions' backward passes into one vmap call."""
        if targets is not None and targets.shape[1] != n_positions:
            return self._scores(run, targets, options)  # one target for every position: one step
        forward = run(1.0)
        scores, errors = [], []
        with tqdm(total=n_positions, desc=f"{self.name}: target tokens", unit="token", leave=False) as bar:
            for p in range(n_positions):
                view = _position_view(forward, p)

                def at_position(scale: float = 1.0, view: ScopeForward = view) -> ScopeForward:
                    if scale != 1.0:
                        raise RuntimeError("a scope that rescales the embeddings must show its own progress")
                    return view

                row_targets = None if targets is None else targets[:, p : p + 1]
                score, error = self._scores(at_position, row_targets, options)
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
