"""Jacobian Scopes (arXiv 2601.16407) for Hugging Face causal LMs, as a Captum extension.

    >>> from captum_jscopes import SemanticScope, TemperatureScope, FisherScope
    >>> scores = SemanticScope(model, tokenizer).attribute(input_ids, target=" Paris")
"""

from captum_jscopes.core.provenance import package_version
from captum_jscopes.runs.dataset import DatasetSettings, attribute_dataset
from captum_jscopes.scopes.fisher import FisherScope
from captum_jscopes.analysis.layers import LayerMap, layer_map
from captum_jscopes.analysis.linearity import LinearityResult, linearity_check
from captum_jscopes.integrations.captum import ChatTokenInput, LLMScopeAttribution, chat_input, chat_prompt
from captum_jscopes.models import DEFAULT_MODEL, ModelNotAvailableError, describe_model, load_model, load_tokenizer
from captum_jscopes.results.result import ScopeResult, sink_share
from captum_jscopes.scopes.base import JacobianScope, ScopeOptions
from captum_jscopes.scopes.registry import register_scope
from captum_jscopes.scopes.semantic import SemanticScope
from captum_jscopes.scopes.temperature import TemperatureScope

__all__ = [
    "JacobianScope",
    "ScopeOptions",
    "register_scope",
    "SemanticScope",
    "TemperatureScope",
    "FisherScope",
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
