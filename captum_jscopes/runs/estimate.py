"""What a dataset run will cost, prompt by prompt: the estimate that
``jscopes attribute-dataset`` prints before its first prompt and revises after
each one.

A prompt costs, for each scope, one forward pass and the scope's backward
passes per explained token at the prompt's own length
(:meth:`~captum_jscopes.runs.explain.PassTiming.seconds`, which also prices a
batch of passes on a long prompt), plus what the scope does outside its passes
(the Fisher Scope forms F from the vocabulary, ``V·d²`` per explained token,
whatever the prompt's length). :func:`measure_run` measures both on the model
before the run:

- one forward and one backward pass at the longest prompt's length and at
  lengths a quarter of each other down to the shortest (prefixes of the longest
  prompt), so that a prompt's passes are read off at its own length (the time of
  a pass grows faster than the length on long prompts: interpolating from a
  short prompt would miss it);
- each scope of at most :data:`CALIBRATED_PASSES` passes once on a few tokens,
  for its time outside the passes (the rest, Fisher's 40 to 48 passes, is
  priced by its passes).

:class:`RunEstimate` then prices every prompt (:meth:`~RunEstimate.price`),
names the prompts that dominate (:meth:`~RunEstimate.announce`) and, after each
prompt, compares the seconds it took with its price: the prompts left are
re-priced by the prompts done of about their length (:meth:`~RunEstimate.seconds`).
A long prompt is thus never re-priced from short ones, nor short ones from a
long one.

    estimate = measure_run(model, tokenizer, prompts, settings)
    print(estimate.announce([p.id for p in prompts]))
    ...                                     # after each prompt:
    estimate.update(prompt.id, record)      # record["seconds"]: {scope: seconds}
    left = estimate.total(ids_left)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

from captum_jscopes.core.forward import context_length, prepare_inputs, run_forward
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.core.tokens import encode_target
from captum_jscopes.runs.explain import PassTiming, explain, prompt_input, scope_options
from captum_jscopes.runs.progress import format_duration
from captum_jscopes.scopes.registry import scope_class

__all__ = ["LengthTimings", "RunEstimate", "measure_run", "pass_batch", "CALIBRATED_PASSES"]

#: scopes of at most this many backward passes are run once on a few tokens before the
#: run, for their time outside the passes (a scope of more passes is priced by them)
CALIBRATED_PASSES = 4
#: tokens of the prompt the scopes are calibrated on (a prefix of the shortest prompt)
CALIBRATION_TOKENS = 12
#: lengths measured before the run are at most this factor apart
LENGTH_STEP = 4
#: a done prompt informs the price of a prompt left with the weight
#: exp(-(ln(n / n_done) / ln(SIMILAR_LENGTH))**2 / 2): 1 at the same length, 0.6 at twice or half
SIMILAR_LENGTH = 2.0
#: weight of the measured price itself against the prompts done (a pseudo-prompt of ratio 1)
PRIOR_WEIGHT = 0.5
#: a prompt's ratio of seconds taken to seconds priced is kept within [1 / RATIO_LIMIT, RATIO_LIMIT]
RATIO_LIMIT = 20.0
#: the prompts named as dominating cover at least this share of the time, and are at most MOST_NAMED
DOMINANT_SHARE = 0.5
MOST_NAMED = 3


@dataclass(frozen=True)
class LengthTimings:
    """A forward and one backward pass measured at several prompt lengths.

    Attributes:
        lengths: the lengths (tokens), increasing.
        forward: seconds of the forward pass (with its autograd graph) at each length.
        backward: seconds of ONE vector-Jacobian product through it at each length.
        hidden_size: width d of the final hidden state.
        device_type: ``"cpu"``, ``"cuda"``, ... (None counts as a CPU).
    """

    lengths: tuple[int, ...]
    forward: tuple[float, ...]
    backward: tuple[float, ...]
    hidden_size: int
    device_type: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.lengths or not len(self.lengths) == len(self.forward) == len(self.backward):
            raise ValueError("lengths, forward and backward must be non-empty and of one length")
        if list(self.lengths) != sorted(set(self.lengths)) or self.lengths[0] < 1:
            raise ValueError(f"lengths must be increasing positive ints, got {self.lengths}")

    def at(self, n_tokens: int, n_targets: int = 1) -> PassTiming:
        """The passes at ``n_tokens`` (``n_targets`` explained tokens): between two
        measured lengths on the power law through them (a pass's time grows like
        ``n**a`` there), below the shortest as at the shortest (a short pass costs
        its fixed overhead), above the longest with the last power, at least
        proportional to the length."""
        return PassTiming(n_tokens, max(1, n_targets), self.hidden_size, _interpolate(self.lengths, self.forward, n_tokens),
                          _interpolate(self.lengths, self.backward, n_tokens), self.device_type)


def _interpolate(lengths: Sequence[int], seconds: Sequence[float], n: int) -> float:
    if n <= lengths[0] or len(lengths) == 1:
        if n <= lengths[0]:
            return seconds[0]
        return seconds[0] * n / lengths[0]
    i = next((i for i in range(1, len(lengths)) if n <= lengths[i]), len(lengths) - 1)
    (n0, s0), (n1, s1) = (lengths[i - 1], seconds[i - 1]), (lengths[i], seconds[i])
    power = math.log(max(s1, 1e-9) / max(s0, 1e-9)) / math.log(n1 / n0)
    if n > n1:
        power = max(power, 1.0)
    return max(s0, 1e-9) * (n / n0) ** power


class RunEstimate:
    """The price of every prompt of a run, revised as prompts are done.

    Args:
        timings: the passes measured at several lengths (:class:`LengthTimings`).
        passes: ``{scope: backward passes per explained token}`` (the scopes'
            ``backward_passes``), in the order the scopes run.
        outside: ``{scope: seconds per explained token outside the passes}``
            (measured by :func:`measure_run`; 0 where not measured).
        sizes: ``{prompt id: (tokens of the forward, explained tokens)}``; None
            for a prompt that cannot be explained (it fails at once: priced 0).
        chunk_size: backward passes a scope batches into one (the scopes' default).
        batches: ``{scope: passes it batches into one}`` where a scope's differ
            from ``chunk_size`` (:func:`pass_batch`).
    """

    def __init__(
        self,
        timings: LengthTimings,
        passes: Mapping[str, int],
        outside: Mapping[str, float],
        sizes: Mapping[str, Optional[tuple[int, int]]],
        chunk_size: int = PassTiming.CHUNK_SIZE,
        batches: Optional[Mapping[str, int]] = None,
    ) -> None:
        self.timings = timings
        self.passes = dict(passes)
        self.outside = {scope: max(0.0, float(outside.get(scope, 0.0))) for scope in self.passes}
        self.sizes = dict(sizes)
        self.chunk_size = chunk_size
        self.batches = {scope: int((batches or {}).get(scope, chunk_size)) for scope in self.passes}
        #: per prompt done: (its tokens, {scope: seconds taken / seconds priced})
        self.done: list[tuple[int, dict[str, float]]] = []

    # -- prices --------------------------------------------------------------------
    def price(self, prompt_id: str) -> dict[str, float]:
        """``{scope: seconds}`` of a prompt as measured before the run (not revised):
        its forward and passes at its length (:meth:`LengthTimings.at`, batches
        priced by :meth:`PassTiming.seconds`) plus the scope's time outside the
        passes per explained token. 0 for a prompt that cannot be explained."""
        size = self.sizes.get(prompt_id)
        if size is None:
            return {scope: 0.0 for scope in self.passes}
        n_tokens, n_targets = size
        timing = self.timings.at(n_tokens, n_targets)
        return {scope: timing.seconds(passes, self.batches[scope]) + self.outside[scope] * timing.n_targets
                for scope, passes in self.passes.items()}

    def ratio(self, n_tokens: int) -> dict[str, float]:
        """``{scope: factor}`` the price of a prompt of ``n_tokens`` is revised by:
        the ratios of seconds taken to seconds priced of the prompts done, weighted
        by how close their length is (:data:`SIMILAR_LENGTH`), with the measured
        price itself as a pseudo-prompt of ratio 1 (:data:`PRIOR_WEIGHT`)."""
        weights = [math.exp(-0.5 * (math.log(n_tokens / n) / math.log(SIMILAR_LENGTH)) ** 2) for n, _ in self.done]
        total = PRIOR_WEIGHT + sum(weights)
        return {scope: (PRIOR_WEIGHT + sum(w * ratios.get(scope, 1.0) for w, (_, ratios) in zip(weights, self.done)))
                / total for scope in self.passes}

    def seconds(self, prompt_id: str) -> float:
        """The prompt's revised price: :meth:`price` per scope times :meth:`ratio` at its length."""
        size = self.sizes.get(prompt_id)
        if size is None:
            return 0.0
        ratio = self.ratio(size[0])
        return sum(seconds * ratio[scope] for scope, seconds in self.price(prompt_id).items())

    def total(self, prompt_ids: Iterable[str]) -> float:
        """The revised price of these prompts together."""
        return sum(self.seconds(prompt_id) for prompt_id in prompt_ids)

    def update(self, prompt_id: str, record: Mapping[str, Any]) -> None:
        """Learn from a prompt done: its ``record["seconds"]`` (``{scope: seconds}``,
        as :func:`~captum_jscopes.runs.dataset.attribute_prompt` writes it) against
        its price. A record without seconds (an error) teaches nothing."""
        size = self.sizes.get(prompt_id)
        taken = record.get("seconds")
        if size is None or not isinstance(taken, Mapping):
            return
        priced = self.price(prompt_id)
        ratios = {}
        for scope, seconds in taken.items():
            if scope in priced and priced[scope] > 0 and isinstance(seconds, (int, float)):
                ratios[scope] = min(RATIO_LIMIT, max(1 / RATIO_LIMIT, seconds / priced[scope]))
        if ratios:
            self.done.append((size[0], ratios))

    # -- what is said --------------------------------------------------------------
    def dominant(self, prompt_ids: Sequence[str]) -> list[tuple[str, float]]:
        """The prompts that take most of the time: the most costly first, as
        few as cover :data:`DOMINANT_SHARE` of it, at most :data:`MOST_NAMED`,
        and only when they are less than half of the prompts (else none
        dominates); ``[(id, seconds)]``."""
        priced = sorted(((self.seconds(i), i) for i in prompt_ids if self.seconds(i) > 0), key=lambda item: -item[0])
        total = sum(seconds for seconds, _ in priced)
        named, covered = [], 0.0
        for seconds, prompt_id in priced[:MOST_NAMED]:
            named.append((prompt_id, seconds))
            covered += seconds
            if covered >= DOMINANT_SHARE * total:
                return named if 2 * len(named) < len(priced) else []
        return []

    def announce(self, prompt_ids: Sequence[str], processes: int = 1, label: str = "attribute-dataset",
                 done_before: int = 0) -> str:
        """The line said before the run: the run's time (the slowest process's
        share, prompts dealt round-robin), each scope's part, the prompts that
        dominate with their length, and what was measured.

        'attribute-dataset: 5 prompts, about 2.1 min on this machine (semantic 56 s,
        fisher 1.1 min); prompt '4' (1,502 tokens) takes 1.6 min, 77% of it;
        priced by passes measured at 20 to 1,502 tokens'"""
        ids = list(prompt_ids)
        total = max(self.total(ids[k::processes]) for k in range(max(1, processes))) if ids else 0.0
        everything = self.total(ids)
        per_scope: dict[str, float] = {scope: 0.0 for scope in self.passes}
        for prompt_id in ids:
            size = self.sizes.get(prompt_id)
            if size is None:
                continue
            ratio = self.ratio(size[0])
            for scope, seconds in self.price(prompt_id).items():
                per_scope[scope] += seconds * ratio[scope]
        text = f"{label}: {len(ids) + done_before} prompts"
        if done_before:
            text += f" ({done_before} done before)"
        text += f", about {format_duration(total)}{' more' if done_before else ''} on this machine"
        if processes > 1:
            text += f" with {processes} processes"
        if len(per_scope) > 1:
            text += " (" + ", ".join(f"{scope} {format_duration(s / max(1, processes))}" for scope, s in per_scope.items()) + ")"
        named = self.dominant(ids)
        if named and everything > 0:
            parts = [f"{prompt_id!r} ({self.sizes[prompt_id][0]:,} tokens)" for prompt_id, _ in named]
            share = sum(seconds for _, seconds in named) / everything
            what = ("prompt " if len(parts) == 1 else "prompts ") + ", ".join(parts)
            verb = "takes" if len(parts) == 1 else "take"
            text += f"; {what} {verb} {format_duration(sum(s for _, s in named))}, {share:.0%} of it"
        lengths = self.timings.lengths
        measured = f"{lengths[0]:,}" if len(lengths) == 1 else f"{lengths[0]:,} to {lengths[-1]:,}"
        return text + f"; priced by passes measured at {measured} tokens"


# ----------------------------------------------------------------------------- measuring


def measure_run(model: Any, tokenizer: Any, prompts: Sequence[Any], settings: Any, *,
                calibrate: bool = True) -> RunEstimate:
    """Measure what the prompts of a run will cost on this model and machine.

    Tokenises every prompt as :func:`~captum_jscopes.runs.dataset.attribute_prompt`
    will (chat template, target tokens: teacher forcing runs prompt + target
    tokens but the last), times one forward and one backward pass at the longest
    length and at lengths :data:`LENGTH_STEP` apart down to the shortest (on
    prefixes of the longest prompt), and, with ``calibrate``, runs every scope of
    at most :data:`CALIBRATED_PASSES` passes once on the first
    :data:`CALIBRATION_TOKENS` tokens of the shortest prompt for its time outside
    the passes. That costs about one backward pass more than a Semantic Scope
    call on the longest prompt. The model is not changed.

    Args:
        model, tokenizer: the run's model and tokenizer.
        prompts: the prompts to price (:class:`~captum_jscopes.runs.prompts.Prompt`;
            one with an ``error`` is priced 0).
        settings: the run's :class:`~captum_jscopes.runs.dataset.DatasetSettings`.
        calibrate: run the cheap scopes on a few tokens (default True); False
            prices only the passes.
    """
    sizes: dict[str, Optional[tuple[int, int]]] = {}
    longest: Optional[torch.Tensor] = None
    shortest: Optional[Any] = None
    limit = context_length(model)
    for prompt in prompts:
        ids = _forward_ids(model, tokenizer, prompt, settings)
        if ids is None or (limit is not None and ids[0].shape[1] > limit):
            sizes[prompt.id] = None  # it fails at once
            continue
        sizes[prompt.id] = (int(ids[0].shape[1]), ids[1])
        if longest is None or ids[0].shape[1] > longest.shape[1]:
            longest = ids[0]
        if shortest is None or ids[0].shape[1] < sizes[shortest.id][0]:
            shortest = prompt
    hidden = _hidden_size(model)
    passes, batches = {}, {}
    for scope in settings.scopes:
        cls = scope_class(scope)
        options = cls.make_options(**scope_options(scope, settings.scope_settings))
        passes[scope] = int(cls.backward_passes(options, hidden))
        batches[scope] = pass_batch(cls, options)
    if longest is None:  # nothing can be explained: every prompt is priced 0
        timings = LengthTimings((1,), (0.0,), (0.0,), hidden, _device_type(model))
        return RunEstimate(timings, passes, {}, sizes, batches=batches)
    lengths = _lengths(min(size[0] for size in sizes.values() if size), int(longest.shape[1]))
    timings = _time_lengths(model, longest, lengths)
    outside: dict[str, float] = {}
    if calibrate and shortest is not None:
        outside = _outside_passes(model, tokenizer, shortest, settings, timings, passes, batches)
    return RunEstimate(timings, passes, outside, sizes, batches=batches)


def pass_batch(cls: type, options: Any) -> int:
    """The batch a scope's passes are priced in with these options
    (:meth:`PassTiming.seconds`, whose batches cost more per pass on a long prompt
    on a CPU): :attr:`PassTiming.CHUNK_SIZE`, the scopes' ``chunk_size``, unless
    the scope's estimator (``cls.estimator_of``, the Fisher Scope's) finds its
    directions in blocks (``block_size``: the krylov estimator's JVPs and VJPs, 8
    at a time), whose passes cost about a lone pass each: 1. (SmolLM2, one thread,
    1,500 tokens: 793 s for krylov's 48 passes where a forward and a backward pass
    took 44 s, and 1,386 s where they took 65 s; priced in batches of 32, they
    would be 2.4 times a lone pass.)"""
    estimator_of = getattr(cls, "estimator_of", None)
    if callable(estimator_of):
        try:
            block = getattr(estimator_of(options), "block_size", None)
        except (TypeError, ValueError):
            block = None
        if isinstance(block, int) and not isinstance(block, bool) and block > 0:
            return 1
    return PassTiming.CHUNK_SIZE


def _forward_ids(model: Any, tokenizer: Any, prompt: Any, settings: Any) -> Optional[tuple[torch.Tensor, int]]:
    """(1, n) the ids of the prompt's forward (prompt + target tokens but the last)
    and the number of explained tokens; None when it cannot be explained."""
    if getattr(prompt, "error", None):
        return None
    try:
        ids = prompt_input(model, tokenizer, prompt.text, chat=settings.chat,
                           keep_special=settings.keep_special).to_model_input()
        target_ids = [] if prompt.target is None else encode_target(tokenizer, prompt.target)
    except Exception:  # noqa: BLE001 -- the prompt's own error record will say why
        return None
    if len(target_ids) > 1:
        ids = torch.cat([ids, torch.tensor([target_ids[:-1]], dtype=ids.dtype)], dim=1)
    return ids, max(1, len(target_ids))


def _lengths(shortest: int, longest: int) -> list[int]:
    """The lengths to time: the longest, then a factor LENGTH_STEP shorter each,
    down to the shortest (which is timed too)."""
    lengths = [longest]
    while lengths[-1] > shortest * LENGTH_STEP:
        lengths.append(max(shortest, -(-lengths[-1] // LENGTH_STEP)))  # rounded up: at most LENGTH_STEP apart
    if lengths[-1] != shortest:
        lengths.append(shortest)
    return sorted(set(lengths))


def _time_lengths(model: Any, ids: torch.Tensor, lengths: Sequence[int]) -> LengthTimings:
    forward, backward = [], []
    with preserved_state(model):
        _time_pass(model, ids[:, : lengths[0]])  # the first pass of a process pays for setting up: not counted
        for n in lengths:
            seconds = _time_pass(model, ids[:, :n])
            forward.append(seconds[0])
            backward.append(seconds[1])
    return LengthTimings(tuple(lengths), tuple(forward), tuple(backward), _hidden_size(model), _device_type(model))


def _time_pass(model: Any, ids: torch.Tensor) -> tuple[float, float]:
    ids, mask = prepare_inputs(model, ids, None)
    positions = torch.tensor([[ids.shape[1] - 1]], device=ids.device)
    _synchronise(ids.device)
    began = time.perf_counter()
    forward = run_forward(model, ids, mask, positions)
    _synchronise(ids.device)
    measured = time.perf_counter()
    forward.vjp(forward.hidden.detach()[None])
    _synchronise(ids.device)
    return measured - began, time.perf_counter() - measured


def _outside_passes(model: Any, tokenizer: Any, prompt: Any, settings: Any, timings: LengthTimings,
                    passes: Mapping[str, int], batches: Mapping[str, int]) -> dict[str, float]:
    """``{scope: seconds}`` each cheap scope spends outside its passes, per
    explained token: its time on a few tokens of ``prompt`` (the model's own
    prediction explained) less the price of its passes there."""
    cheap = [scope for scope, count in passes.items() if count <= CALIBRATED_PASSES]
    if not cheap:
        return {}
    ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"][:CALIBRATION_TOKENS]
    text = tokenizer.decode(ids)
    found = _forward_ids(model, tokenizer, type(prompt)(prompt.id, text), settings) if text.strip() else None
    if found is None:
        return {}
    timing = timings.at(int(found[0].shape[1]), 1)
    outside = {}
    for scope in cheap:
        began = time.perf_counter()
        try:
            explain(model, tokenizer, text, scope, chat=settings.chat, keep_special=settings.keep_special,
                    settings=settings.scope_settings)
        except Exception:  # noqa: BLE001 -- no calibration; the prompts' own records will say what fails
            continue
        outside[scope] = max(0.0, time.perf_counter() - began - timing.seconds(passes[scope], batches[scope]))
    return outside


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hidden_size(model: Any) -> int:
    embedding = model.get_input_embeddings()
    return int(getattr(embedding, "embedding_dim", None) or embedding.weight.shape[-1])


def _device_type(model: Any) -> Optional[str]:
    try:
        return next(model.parameters()).device.type
    except StopIteration:
        return None
