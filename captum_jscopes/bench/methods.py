"""The one table of the benchmarks' attribution methods.

Every method either benchmark can run is one :class:`BenchMethod` entry of
:data:`METHODS`, with its options spelled out: a Jacobian Scope of the
registry (:data:`captum_jscopes.scopes.registry.SCOPES`) with the options of its
``attribute``, a Captum baseline with its arguments, or random scores. The
faithfulness and speed benchmarks, their command-line choices and the reports'
labels all read this table; adding a method is adding one entry.

Every method explains the same thing: the prediction of the token ``target``
after the last token of ``input_ids`` (1, n), and returns one non-negative
score per token, (n,) float CPU, higher = more relevant. Gradient baselines
differentiate the LOGIT of ``target`` w.r.t. the input embeddings (the output
of ``model.get_input_embeddings()``) and are reduced to one score per token
with the L2 norm over the embedding dimension, like the scopes.
"""

from __future__ import annotations

import zlib
from collections import abc
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from captum_jscopes.metrics import replacement_token_id
from captum_jscopes.core.model_state import accepts, preserved_state
from captum_jscopes.scopes.registry import SCOPES

__all__ = ["BenchMethod", "METHODS", "DEFAULT_METHODS", "VARIANTS", "method", "parse_methods", "random_scores",
           "scope_variants"]


@dataclass(frozen=True)
class BenchMethod:
    """One attribution method of the benchmarks.

    Attributes:
        name: key in reports, records and ``--methods``.
        label: one line for the reports.
        kind: ``"scope"`` (a Jacobian Scope), ``"captum"`` (a Captum baseline), ``"lrp"``
            (AttnLRP, LXT's efficient mode: :mod:`captum_jscopes.bench.attnlrp`; needs LXT) or ``"random"``.
        scope: the scope's registry name (kind "scope").
        options: keyword arguments of the scope's ``attribute`` (kind "scope") or of
            the baseline (kind "captum": ``algorithm``, and for Integrated Gradients
            ``n_steps`` and ``baseline``: ``"zero"`` embeddings, ``"token"``, every
            position replaced by the tokenizer's pad token, else unk, else eos, or
            ``"mean"``, every position the mean of the embedding matrix).
        in_default: part of ``--methods all`` of the faithfulness benchmark (the
            paper's six methods and three more); the others are asked for by name.
        slow: the speed benchmark times it once, on its ``--n-slow`` prompts.
        same_as: the method this one equals by construction (saliency, the gradient
            norm of the y* logit, IS the Semantic Scope with target y*; ``semantic+lrp+input``
            IS AttnLRP): a baseline that is a scope is no rival in the verdict, a scope
            that is a baseline is paired with the next one, and the report states how
            close their curves are.
        variant_of: for a scope method under other rules or reduction (``semantic+lrp``),
            the method it is a variant of (``semantic``); None for the table's own entries.
    """

    name: str
    label: str
    kind: str
    scope: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    in_default: bool = False
    slow: bool = False
    same_as: Optional[str] = None
    variant_of: Optional[str] = None

    def __post_init__(self) -> None:
        # frozen and hashable-looking entries must not share a mutable dict
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def is_scope(self) -> bool:
        return self.kind == "scope"

    @property
    def randomised(self) -> bool:
        """Whether the scores depend on the seed (a scope whose estimator draws probes)."""
        if self.kind != "scope":
            return False
        scope = SCOPES[self.scope]
        return scope.randomised(scope.make_options(**self.options))

    def backward_passes(self, hidden_size: int) -> Optional[int]:
        """Backward passes per explained token (scopes and gradient baselines); None for the others."""
        if self.kind == "scope":
            scope = SCOPES[self.scope]
            return scope.backward_passes(scope.make_options(**self.options), hidden_size)
        if self.options.get("algorithm") == "integrated_gradients":
            return self.options["n_steps"]
        if self.kind == "lrp":
            return 1  # one forward and one backward pass of the LRP-patched model
        return 1 if self.kind == "captum" and self.options.get("algorithm") != "feature_ablation" else None

    def scores(
        self,
        model: nn.Module,
        tokenizer: Any,
        input_ids: Tensor,
        target: int,
        *,
        prompt_id: str = "0",
        seed: int = 0,
        batch_size: int = 10,
    ) -> Tensor:
        """(n,) float CPU scores of the tokens of ``input_ids`` (1, n) for the
        prediction of ``target`` after its last token.

        Args:
            prompt_id, seed: seed the random method (per prompt) and Fisher's probes.
            batch_size: Integrated Gradients steps / ablated copies per forward.
        """
        if self.kind == "random":
            return random_scores(input_ids.shape[-1], seed, prompt_id)
        if self.kind == "scope":
            options = dict(self.options)
            if self.randomised:
                options.setdefault("seed", seed)
            scope = SCOPES[self.scope](model, tokenizer)
            target_arg = {"target": target} if scope.takes_target else {}
            return scope.attribute(input_ids, **target_arg, **options)[0].detach().float().cpu()
        if self.kind == "lrp":
            # imported here: the table (and every benchmark) must load without LXT installed
            from captum_jscopes.bench.attnlrp import attnlrp_scores

            return attnlrp_scores(model, tokenizer, input_ids, target, **self.options)
        return _captum_scores(model, tokenizer, input_ids, target, dict(self.options), batch_size)


def _scope(name: str, label: str, scope: str, *, default: bool = False, slow: bool = False, **options) -> BenchMethod:
    return BenchMethod(name, label, "scope", scope=scope, options=options, in_default=default, slow=slow)


def _captum(name: str, label: str, *, default: bool = False, slow: bool = False, same_as: Optional[str] = None,
            **options) -> BenchMethod:
    return BenchMethod(name, label, "captum", options=options, in_default=default, slow=slow, same_as=same_as)


_TABLE = (
    _scope("semantic", "Semantic Scope (target y*)", "semantic", default=True),
    _scope("temperature", "Temperature Scope", "temperature", default=True),
    # "fisher" is the estimator of the committed runs (the library's default of 0.1.0), pinned so
    # that resumed and combined runs stay one method; the library's default is fisher_krylov
    _scope("fisher", "Fisher Scope (deflated: top-16 exact + 24 eigen-directions sampled)", "fisher",
           default=True, estimator="deflated"),
    _scope("fisher_hutchinson", "Fisher Scope (hutchinson: top-k exact + random-sign probes, 40 passes)",
           "fisher", estimator="hutchinson"),
    _scope("fisher_krylov", "Fisher Scope (krylov, the default: the tokens' Fisher mass deflated by block Krylov "
           "+ probes, 48 passes)", "fisher", estimator="krylov"),
    _scope("fisher_krylov_tol2", "Fisher Scope (krylov, tol=0.02: probes added to 2% estimated error)",
           "fisher", estimator="krylov", tol=0.02),
    _scope("fisher_exact", "Fisher Scope (exact, d backward passes)", "fisher", slow=True, estimator="exact"),
    _scope("fisher_eig1", "Fisher Scope (eig, k=1)", "fisher", default=True, estimator="eig", k=1),
    _scope("fisher_eig4", "Fisher Scope (eig, k=4)", "fisher", estimator="eig", k=4),
    _scope("fisher_eig16", "Fisher Scope (eig, k=16)", "fisher", estimator="eig", k=16),
    _scope("fisher_eig64", "Fisher Scope (eig, k=64)", "fisher", estimator="eig", k=64),
    _scope("fisher_deflated_8_16", "Fisher Scope (deflated, k=8, 16 probes)", "fisher",
           estimator="deflated", k=8, n_probes=16),
    _scope("fisher_deflated_16_16", "Fisher Scope (deflated, k=16, 16 probes)", "fisher",
           estimator="deflated", k=16, n_probes=16),
    _scope("fisher_deflated_16_32", "Fisher Scope (deflated, k=16, 32 probes)", "fisher",
           estimator="deflated", k=16, n_probes=32),
    _captum("grad_x_input", "gradient x input (Captum InputXGradient)", default=True, algorithm="input_x_gradient"),
    _captum("saliency", "saliency (Captum Saliency)", default=True, same_as="semantic", algorithm="saliency"),
    _captum("ig50", "Integrated Gradients, 50 steps, zero baseline (Captum)", default=True,
            slow=True, algorithm="integrated_gradients", n_steps=50, baseline="zero"),
    _captum("ig5", "Integrated Gradients, 5 steps, zero baseline (Captum)", default=True,
            algorithm="integrated_gradients", n_steps=5, baseline="zero"),
    _captum("ig50_token", "Integrated Gradients, 50 steps, pad-token baseline (Captum)", slow=True,
            algorithm="integrated_gradients", n_steps=50, baseline="token"),
    _captum("ig50_mean", "Integrated Gradients, 50 steps, mean-embedding baseline (Captum)", slow=True,
            algorithm="integrated_gradients", n_steps=50, baseline="mean"),
    _captum("feature_ablation", "leave-one-out on log p(y*) (Captum FeatureAblation, zero embedding)",
            slow=True, algorithm="feature_ablation"),
    # the same budget as a gradient (one forward + one backward); needs LXT's main branch
    BenchMethod("attnlrp", "AttnLRP (LXT efficient mode, |sum over embedding| per token, logit of y*)", "lrp",
                options={"reduction": "abs"}),
    BenchMethod("random", "random", "random", in_default=True),
)

#: scope combinations that ARE a baseline of the table (docs/method.md, section 8): the
#: report says how close their curves are, and the verdict pairs them with the next baseline
_SAME_AS_BASELINE = {"semantic+lrp+input": "attnlrp"}

#: the options every scope takes beside its own, as name suffixes of a scope method: ``+lrp``
#: (``rules="lrp"``) then ``+input`` (``reduce="input"``), e.g. ``semantic+lrp+input``, ``fisher_eig1+lrp``
VARIANTS = (
    ("+lrp", {"rules": "lrp"}, "AttnLRP's rules"),
    ("+input", {"reduce": "input"}, "input reduction |g.x|"),
)


def scope_variants(base: BenchMethod) -> list[BenchMethod]:
    """The scope method ``base`` under every combination of :data:`VARIANTS`
    (``+lrp``, ``+input``, ``+lrp+input``), in that order; none for a baseline."""
    if not base.is_scope:
        return []
    out = []
    for mask in range(1, 2 ** len(VARIANTS)):
        chosen = [v for i, v in enumerate(VARIANTS) if mask >> i & 1]
        options = dict(base.options)
        for _, extra, _ in chosen:
            options.update(extra)
        out.append(BenchMethod(
            base.name + "".join(suffix for suffix, _, _ in chosen),
            f"{base.label}; {', '.join(what for _, _, what in chosen)}",
            "scope", scope=base.scope, options=options, slow=base.slow, variant_of=base.name))
    return sorted(out, key=lambda m: len(m.name))  # +lrp, +input, then +lrp+input


class _MethodTable(abc.Mapping):
    """name -> method, in the order of the reports' tables: the entries above,
    then every scope registered outside the package
    (:func:`captum_jscopes.scopes.registry.register_scope`) under its own name
    with its default options; after each scope method, its :func:`scope_variants`."""

    def _entries(self) -> dict[str, BenchMethod]:
        bases = {m.name: m for m in _TABLE}
        for name, cls in SCOPES.items():
            if name not in bases:
                bases[name] = _scope(name, f"{cls.__name__} (registered)", name)
        table = {}
        for name, entry in bases.items():
            table[name] = entry
            table.update((variant.name, variant) for variant in scope_variants(entry))
        for name, baseline in _SAME_AS_BASELINE.items():
            table[name] = replace(table[name], same_as=baseline)
        return table

    def __getitem__(self, name: str) -> BenchMethod:
        return self._entries()[name]

    def __iter__(self):
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


#: name -> method, in the order of the reports' tables (registered scopes included).
METHODS: Mapping[str, BenchMethod] = _MethodTable()
#: What ``--methods all`` runs in the faithfulness benchmark.
DEFAULT_METHODS: tuple[str, ...] = tuple(m.name for m in _TABLE if m.in_default)


def method(name: str) -> BenchMethod:
    """The method registered under ``name``; a ValueError lists the names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose among {', '.join(METHODS)}")
    return METHODS[name]


def parse_methods(text: str, default: tuple[str, ...] = DEFAULT_METHODS) -> tuple[str, ...]:
    """``"all"`` (the ``default`` methods) or a comma-separated list of names ->
    the names in table order.

    Raises:
        ValueError: an unknown or missing name (the message lists the valid ones).
    """
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if names == ["all"]:
        return default
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        what = f"unknown method(s) {', '.join(map(repr, unknown))}" if unknown else "no method given"
        raise ValueError(f"{what}; choose among {', '.join(METHODS)} (comma-separated) or 'all'")
    return tuple(m for m in METHODS if m in names)


def random_scores(n: int, seed: int, prompt_id: str) -> Tensor:
    """(n,) uniform scores, the same for a given (seed, prompt id) in every run and process."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{prompt_id}".encode()))
    return torch.rand(n, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------- Captum baselines
def target_forward(model: nn.Module, n: int, target: int, log_prob: bool) -> Callable[[Tensor], Tensor]:
    """``embeds (B, n, e) -> (B,)``: the logit (or log-probability) of ``target``
    after the last token, for Captum."""
    kwargs: dict[str, Any] = {"use_cache": False}
    if accepts(model, "logits_to_keep"):
        # the unembedding only for the last column: the vocabulary projection of
        # every other position would cost as much as the layers
        kwargs["logits_to_keep"] = 1

    def forward(embeds: Tensor) -> Tensor:
        logits = model(inputs_embeds=embeds, **kwargs).logits[:, -1]
        return torch.log_softmax(logits.float(), -1)[:, target] if log_prob else logits[:, target]

    return forward


def _captum_scores(model: nn.Module, tokenizer: Any, input_ids: Tensor, target: int, options: dict,
                   batch_size: int) -> Tensor:
    from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients, Saliency

    algorithm = options.pop("algorithm")
    embedding = model.get_input_embeddings()
    ids = input_ids.to(embedding.weight.device)
    n = ids.shape[-1]
    # frozen parameters (restored after): Captum differentiates w.r.t. the inputs only
    with preserved_state(model):
        with torch.no_grad():
            # a leaf that requires grad: Captum would otherwise warn and set it itself
            embeds = embedding(ids).requires_grad_()
        forward = target_forward(model, n, target, log_prob=algorithm == "feature_ablation")
        if algorithm == "input_x_gradient":
            attr = InputXGradient(forward).attribute(embeds)
        elif algorithm == "saliency":
            attr = Saliency(forward).attribute(embeds, abs=True)
        elif algorithm == "integrated_gradients":
            baseline = ig_baseline(model, tokenizer, embeds, ids, options["baseline"])
            attr = IntegratedGradients(forward).attribute(
                embeds, baselines=baseline, n_steps=options["n_steps"], internal_batch_size=batch_size
            )
        elif algorithm == "feature_ablation":
            # one group per token: ablating a token zeroes its whole embedding
            mask = torch.arange(n, device=ids.device)[None, :, None].expand_as(embeds)
            attr = FeatureAblation(forward).attribute(
                embeds.detach(), baselines=0.0, feature_mask=mask, perturbations_per_eval=batch_size
            )
            # log p(y*) intact minus ablated, the same value on every dimension of a token
            return attr[0, :, 0].detach().float().cpu()
        else:
            raise ValueError(f"unknown Captum algorithm {algorithm!r}")
    return attr[0].detach().float().norm(dim=-1).cpu()


def ig_baseline(model: nn.Module, tokenizer: Any, embeds: Tensor, ids: Tensor, baseline: str) -> Tensor:
    """Integrated Gradients' starting point: zero embeddings, every position the
    embedding of the replacement token (pad, else unk, else eos), or every position
    the mean embedding over the whole vocabulary (``"mean"``)."""
    if baseline == "zero":
        return torch.zeros_like(embeds)
    if baseline == "mean":
        return mean_embedding(model.get_input_embeddings()).to(embeds.dtype).expand_as(embeds).clone()
    if baseline == "token":
        token = replacement_token_id(tokenizer, getattr(model, "config", None))
        if token is None:
            raise ValueError("the token baseline needs a pad, unk or eos token; the tokenizer has none")
        with torch.no_grad():
            return model.get_input_embeddings()(torch.full_like(ids, token))
    raise ValueError(f"unknown Integrated Gradients baseline {baseline!r}; use 'zero', 'token' or 'mean'")


def describe_ig_baselines(model: nn.Module, tokenizer: Any) -> dict:
    """What the ``"token"`` and ``"mean"`` baselines are for this model and tokenizer
    (for the reports): the token's id, piece and which rule chose it, and the size of
    the embedding matrix averaged."""
    token = replacement_token_id(tokenizer, getattr(model, "config", None))
    rule = next((kind for kind in ("pad", "unk", "eos") if getattr(tokenizer, f"{kind}_token_id", None) == token),
                "config")
    piece = tokenizer.convert_ids_to_tokens(token) if token is not None else None
    vocab, dim = model.get_input_embeddings().weight.shape
    return {"token": {"id": token, "piece": piece, "rule": rule}, "mean": {"vocab": int(vocab), "dim": int(dim)}}


def mean_embedding(embedding: nn.Module, chunk: int = 8192) -> Tensor:
    """(e,) the mean of the embedding module's OUTPUT over every id of its table (a
    scaled embedding such as Gemma's is averaged scaled), in float64 chunks."""
    vocab = embedding.weight.shape[0]
    device = embedding.weight.device
    total = torch.zeros(embedding.weight.shape[-1], dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, vocab, chunk):
            ids = torch.arange(start, min(start + chunk, vocab), device=device)
            total += embedding(ids).double().sum(0)
    return (total / vocab).to(embedding.weight.dtype)
