"""Jacobian Scopes (arXiv 2601.16407) for Hugging Face causal LMs, as a Captum extension.

    >>> from captum_jscopes import SemanticScope
    >>> scores = SemanticScope(model, tokenizer).attribute(input_ids, target=" Paris")

The scope classes (the base, the built-in three, ``register_scope``) are those of
:mod:`captum_jscopes.scopes`.
"""

from captum_jscopes.core.provenance import package_version
from captum_jscopes.runs.dataset import DatasetSettings, attribute_dataset
from captum_jscopes.analysis.layers import LayerMap, layer_map
from captum_jscopes.analysis.linearity import LinearityResult, linearity_check
from captum_jscopes.integrations.captum import ChatTokenInput, LLMScopeAttribution, chat_input, chat_prompt
from captum_jscopes.models import DEFAULT_MODEL, ModelNotAvailableError, describe_model, load_model, load_tokenizer
from captum_jscopes.results.result import ScopeResult, sink_share
from captum_jscopes.scopes import *  # noqa: F403 (the scope classes)
from captum_jscopes.scopes import __all__ as _scope_names

__all__ = [
    *_scope_names,
    "LLMScopeAttribution",
    "ScopeResult",
    "ChatTokenInput",
    "chat_input",
    "chat_prompt",
    "sink_share",
    "linearity_check",
    "layer_map",
    "LayerMap",
    "attribute_dataset",
    "DatasetSettings",
    "LinearityResult",
    "load_model",
    "load_tokenizer",
    "describe_model",
    "DEFAULT_MODEL",
    "ModelNotAvailableError",
]
__version__ = package_version()
