"""Where a number came from: the model's name and the versions of the libraries
it depends on, recorded in every JSON file and benchmark record."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import captum
import torch
import transformers

from captum_jscopes.models import describe_model

__all__ = ["model_name", "versions", "package_version"]


def model_name(model: Any) -> str:
    """The model's name for reports and JSON files: a Hub name as given to
    ``from_pretrained`` ("meta-llama/Llama-3.2-1B"), or for a local folder its
    last part, which for the embedded models is their key
    ("smollm2-135m-instruct"): never an absolute cache path, which would tie a
    JSON file to one machine."""
    name = str(getattr(model, "name_or_path", "") or "").rstrip("/\\")
    # Hub names are 'model' or 'org/model' and no folder of that name exists here
    # (the same rule as the CLI's --model); anything else is a path.
    looks_hub = name.count("/") <= 1 and not name.startswith((".", "~", "/")) and "\\" not in name
    if name and looks_hub and not Path(name).expanduser().exists():
        return name
    return describe_model(model)


def versions() -> dict:
    """Versions of this package and of the libraries its numbers depend on."""
    return {
        "captum_jscopes": package_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum.__version__,
    }


def package_version() -> str:
    """The installed version of captum_jscopes ("unknown" in an uninstalled source tree)."""
    try:
        return version("captum_jscopes")
    except PackageNotFoundError:
        return "unknown"
