"""The faithfulness metrics' former home: they live in
:mod:`captum_jscopes.metrics` now. This module keeps old imports
(``from captum_jscopes.faithfulness import aopc``) working."""

from captum_jscopes.metrics import *  # noqa: F401,F403
from captum_jscopes.metrics import __all__  # noqa: F401
