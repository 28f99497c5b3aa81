"""What every tutorial notebook starts with: its size (full, or the reduced run
the test suite asks for), its output folder, and a ``show`` that writes a figure
there and displays it.

    from captum_jscopes.display.notebook import tutorial
    FAST, OUT, show = tutorial("01_quickstart")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["FAST_ENV", "tutorial"]

# tqdm: no ipywidgets in the kernel, and the bars are off anyway (set at import, before tqdm warns)
warnings.filterwarnings("ignore", message="IProgress not found")

#: set to "1" (by tests/tutorials/test_tutorials.py) for the reduced run; the saved outputs are full runs
FAST_ENV = "JSCOPES_TUTORIAL_FAST"


def tutorial(name: str, seed: int = 0) -> tuple[bool, Path, Callable[..., Path]]:
    """Set a notebook up: ``(fast, out, show)``.

    Args:
        name: the notebook's name (``"01_quickstart"``); its figures go to
            ``outputs/<name>/`` under the current folder (created).
        seed: ``torch.manual_seed`` for the notebook. Default 0.
    Returns:
        ``fast``: whether ``JSCOPES_TUTORIAL_FAST=1`` asks for the reduced run;
        ``out``: the output folder; ``show(fig, filename, dpi=80)``: write a
        matplotlib figure to ``out/filename`` and display that PNG (a modest dpi
        keeps the notebook small), returning its path.
    """
    out = Path("outputs") / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    def show(fig: Any, filename: str, dpi: int = 80) -> Path:
        from IPython.display import Image, display

        path = out / filename
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
        display(Image(filename=str(path)))
        return path

    return os.environ.get(FAST_ENV) == "1", out, show
