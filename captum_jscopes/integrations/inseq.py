"""The three Jacobian Scopes as `Inseq <https://github.com/inseq-team/inseq>`_ attribution methods.

Importing this module registers ``semantic_scope``, ``temperature_scope`` and
``fisher_scope`` with Inseq (it finds methods by walking the subclasses of its
``FeatureAttribution`` registry, so the import must come before ``inseq.load_model``)::

    import inseq
    import captum_jscopes.integrations.inseq  # noqa: F401  (registers the scopes)

    m = inseq.load_model(model, "fisher_scope", tokenizer=tokenizer)
    out = m.attribute(prompt, generated_texts=prompt + target, k=8, seed=1)
    out.show()                              # Inseq's viewer, raw scope scores
    out.save("fisher.json")

Needs ``pip install captum_jscopes[inseq]`` (Inseq 0.7.1, :data:`INSEQ_VERSION`).

How it is wired, and why:

- Inseq's gradient methods hand a Captum method the input embeddings and a
  forward function that returns the attributed step function (the target's
  probability by default). A scope needs the *final hidden state* at the
  explained position, which that forward function does not expose. So each
  Inseq step runs our own engine (:mod:`captum_jscopes.core.forward`, through the
  scope's public ``attribute``) on ``attribution_model.model`` for the step's
  prefix (``(batch, prefix_len)`` ids and attention mask, left-padded by Inseq)
  and target token. The step's numbers are therefore exactly what
  the scope's own ``attribute(prefix, ...)`` (``SemanticScope(model, tokenizer)``, ...)
  returns.
- The classes are Inseq gradient methods (subclasses of its
  ``GradientAttributionRegistry``) with ``attribute_batch_ids = True``: Inseq
  hands them the step's token ids rather than embeddings, and does not prepare
  interpretable embeddings for them, since our engine does the embedding
  lookup itself. ``self.method`` is the scope, a Captum ``GradientAttribution``.
- Each step returns Inseq's ``CoarseFeatureAttributionStepOutput``, Inseq's type
  for one score per token (occlusion uses it too). Its default aggregator
  pipeline is empty, so ``out.sequence_attributions[i].target_attributions``
  ((prefix_len + target_len, n_steps), NaN after each step's prefix),
  ``.aggregate()``, ``.show()`` and ``.save()`` all carry the raw scope scores;
  Inseq's span/subword aggregators (``aggregate("subwords")``) still apply.
  Inseq's gradient methods instead return one value per embedding dimension and
  by default take its L2 norm, then L1-normalise each generated step's column
  to sum to 1; ``inseq.utils.normalize(scores.clone())`` does that last step
  for the scopes (it writes into its argument, hence the clone). Inseq stores
  step outputs as float32.

Options. Every option of a scope, the fields of its ``Options`` dataclass
(``cls.option_names()``: ``rules`` and ``reduce`` for every scope; Semantic:
``n_steps``; Fisher: ``estimator``, ``k``, ``n_probes``, ``budget``, ``seed``,
``tol``, ``max_passes``, ``path``, ``vocab_chunk``, ``gradient_checkpointing``;
any registered scope's own), its deprecated names (``cls.deprecated_options``)
and ``exclude_special_tokens`` (default True) pass as keyword arguments of
``m.attribute`` or in ``attribution_args={...}`` (:meth:`JacobianScopeRegistry.options`
reads them from the scope, so nothing here names one). A name that ``m.attribute``
itself takes (``method=``, the attribution method's name) must go through
``attribution_args``. An unknown option in ``attribution_args`` raises a TypeError
naming it, a bad value the scope's ValueError; an unknown *keyword* argument is
caught by Inseq before it reaches us and only logged ("Unused arguments during
attribution").

What a scope explains is fixed (Semantic: the target token's logit direction;
Temperature: the hidden-state norm; Fisher: the whole next-token
distribution), so a non-default ``attributed_fn`` raises a ValueError instead
of being silently ignored.

Cost. Inseq attributes one generated token per step, so a target of m tokens
costs m forwards (and m sets of backward passes) over growing prefixes;
:class:`captum_jscopes.LLMScopeAttribution` explains all m tokens from one
teacher-forced forward pass. ``benchmarks/inseq_overhead.py`` measures the
difference (docs/inseq.md).

The model. The scopes run inside :func:`captum_jscopes.core.model_state.preserved_state`
and register no lasting hooks, so attribution leaves the model's parameters,
``requires_grad``, ``.grad``, hooks and train/eval flags as they were. Note that
``inseq.load_model`` itself calls ``model.eval()`` and ``model.zero_grad()``,
moves the model to its default device (CUDA when available; pass ``device=``),
sets ``config.pad_token_id`` when it is None, and sets the tokenizer's padding
and truncation side to "left".
"""

from __future__ import annotations

from typing import Any, Optional

try:
    from inseq.attr.feat import GradientAttributionRegistry
    from inseq.data import CoarseFeatureAttributionStepOutput
    from inseq.utils import Registry
except ImportError as err:  # inseq, or one of its dependencies, is missing
    raise ImportError(
        f"captum_jscopes.integrations.inseq needs Inseq 0.7.1: pip install captum_jscopes[inseq] ({err})"
    ) from err

from captum_jscopes.scopes.base import JacobianScope
from captum_jscopes.scopes.registry import SCOPES, on_register

#: The Inseq release this module was checked against (pinned in pyproject.toml):
#: it reads the step's ids, target ids and mask from the argument layout of
#: Inseq's ``DecoderOnlyInputFormatter.format_attribution_args``.
INSEQ_VERSION = "0.7.1"

# and one ``<ScopeClass>Attribution`` per scope, made at the end of the module
__all__ = ["INSEQ_VERSION", "JacobianScopeRegistry"]

# options of JacobianScope.attribute that make sense per Inseq step (token_mask
# does not: the prefix grows every step; position is always the step's last token)
_COMMON_OPTIONS = ("exclude_special_tokens",)


class JacobianScopeRegistry(GradientAttributionRegistry, Registry):
    """Base of the Inseq methods of the Jacobian Scopes. Not itself a method: as
    with Inseq's own ``GradientAttributionRegistry``, naming ``Registry`` as a
    direct base keeps it out of Inseq's list of methods.

    A subclass sets ``method_name`` (the name ``inseq.load_model`` takes) and
    ``scope_class`` (and ``explains``). ``self.method`` is the scope, built on
    ``attribution_model.model`` and its tokenizer with the scope's defaults
    (``exclude_special_tokens=True``, ``chunk_size=32``).
    """

    scope_class: type[JacobianScope]
    #: what the scope explains, for error messages
    explains: str

    def __init__(self, attribution_model: Any, **kwargs: Any) -> None:
        super().__init__(attribution_model, hook_to_model=False)
        # ids, not embeddings: the scope embeds them itself, inside its guard of the model
        self.attribute_batch_ids = True
        self.hook(**kwargs)
        # raises a TypeError for an encoder-decoder or a model without an LM head
        self.method: JacobianScope = self.scope_class(attribution_model.model, attribution_model.tokenizer)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Names of the options a call may pass: every field of the scope's
        ``Options`` (``rules`` and ``reduce`` included), its deprecated names and
        ``exclude_special_tokens``."""
        scope = cls.scope_class
        return (*scope.option_names(), *scope.deprecated_options, *_COMMON_OPTIONS)

    def get_attribution_args(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``m.attribute``'s extra keyword arguments into this method's
        options and the rest (Inseq routes the rest to the attributed function
        and step scores). Inseq's default routes by the signature of
        ``self.method.attribute``, which does not list the scope's options."""
        names = set(self.options())
        return (
            {k: v for k, v in kwargs.items() if k in names},
            {k: v for k, v in kwargs.items() if k not in names},
        )

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: Optional[dict[str, Any]] = None
    ) -> CoarseFeatureAttributionStepOutput:
        """Score every token of the step's prefix for the prediction of the
        step's target token.

        Args:
            attribute_fn_main_args: what Inseq built for the step
                (``DecoderOnlyInputFormatter.format_attribution_args``):
                ``inputs = (ids,)``, ids (batch, prefix_len), left-padded, and
                ``additional_forward_args = (ids, target_ids, attributed_fn,
                attention_mask, ...)``, target_ids (batch, 1) or (1,) (Inseq
                squeezes a batch of one).
            attribution_args: the scope's options (see :meth:`options`).
        Returns:
            ``CoarseFeatureAttributionStepOutput`` with ``target_attributions``
            (batch, prefix_len): the scope's raw scores for the last token's
            next-token prediction (0 for padding and excluded special tokens).
        """
        attribution_args = attribution_args or {}
        unknown = sorted(set(attribution_args) - set(self.options()))
        if unknown:
            raise TypeError(
                f"{self.method_name}: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"its options are {', '.join(self.options())}"
            )
        (ids,) = attribute_fn_main_args["inputs"]
        _, target_ids, attributed_fn, attention_mask = attribute_fn_main_args["additional_forward_args"][:4]
        if attributed_fn is not self.attribution_model.get_attributed_fn(None):
            name = getattr(attributed_fn, "__name__", attributed_fn)
            raise ValueError(
                f"{self.method_name} does not take attributed_fn (got {name!r}): it always explains {self.explains}"
            )
        target = target_ids.flatten().tolist() if self.method.takes_target else None
        scores = self.method.attribute(ids, target=target, attention_mask=attention_mask, **attribution_args)
        return CoarseFeatureAttributionStepOutput(target_attributions=scores.detach())


def inseq_method(scope_class: type[JacobianScope]) -> type[JacobianScopeRegistry]:
    """The Inseq method of a scope class, ``<name>_scope`` (e.g. ``semantic_scope``),
    made once per class; Inseq finds it by walking its registry's subclasses.
    Every registered scope gets one when this module is imported, and a scope
    registered later gets one at registration."""
    if scope_class in _METHODS:
        return _METHODS[scope_class]
    method = type(
        f"{scope_class.__name__}Attribution",
        (JacobianScopeRegistry,),
        {
            "__doc__": f"``{scope_class.name}_scope``: {scope_class.__name__} as an Inseq method "
                       f"(explains {scope_class.explains}). Options: {', '.join(scope_class.option_names()) or 'none'}.",
            "__module__": __name__,
            "method_name": f"{scope_class.name}_scope",
            "scope_class": scope_class,
            "explains": scope_class.explains,
        },
    )
    _METHODS[scope_class] = method
    return method


_METHODS: dict[type, type[JacobianScopeRegistry]] = {}
# every scope's method, also under its class's name here (SemanticScopeAttribution, ...:
# the names of earlier versions); a scope registered later gets its method on registration
for _cls in list(SCOPES.values()):
    globals()[f"{_cls.__name__}Attribution"] = inseq_method(_cls)
    __all__.append(f"{_cls.__name__}Attribution")
on_register(inseq_method)
