"""The Jacobian Scopes: the base class (:mod:`.base`), one module per scope
(:mod:`.semantic`, :mod:`.temperature`, :mod:`.fisher`) and the one table of
them (:mod:`.registry`), which the CLI, the datasets, the benchmarks and the
Inseq methods read."""

from captum_jscopes.scopes.base import JacobianScope, ScopeOptions
from captum_jscopes.scopes.fisher import FisherScope
from captum_jscopes.scopes.registry import register_scope
from captum_jscopes.scopes.semantic import SemanticScope
from captum_jscopes.scopes.temperature import TemperatureScope

__all__ = ["JacobianScope", "ScopeOptions", "register_scope", "SemanticScope", "TemperatureScope", "FisherScope"]
