"""Jacobian Scopes (arXiv 2601.16407) for Hugging Face causal LMs, as a Captum extension.

    >>> from captum_jscopes import SemanticScope, TemperatureScope, FisherScope
    >>> scores = SemanticScope(model, tokenizer).attribute(input_ids, target=" Paris")
"""

from .dataset import DatasetSettings, attribute_dataset
from .fisher_scope import FisherScope
from .linearity import LinearityResult, linearity_check
from .llm_attribution import ChatTokenInput, LLMScopeAttribution, chat_input, chat_prompt
from .models import DEFAULT_MODEL, ModelNotAvailableError, describe_model, load_model, load_tokenizer
from .result import ScopeResult, sink_share
from .scope import JacobianScope
from .semantic_scope import SemanticScope
from .temperature_scope import TemperatureScope

__all__ = [
    "JacobianScope",
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
    "attribute_dataset",
    "DatasetSettings",
    "LinearityResult",
    "load_model",
    "load_tokenizer",
    "describe_model",
    "DEFAULT_MODEL",
    "ModelNotAvailableError",
]
__version__ = "0.2.0"
