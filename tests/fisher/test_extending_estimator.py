"""docs/extending.md's Fisher estimator block runs as written (in a fresh process, an
empty folder, the embedded SmolLM2), as tests/test_docs.py runs its scope block."""

from __future__ import annotations

import pytest
from test_docs import ROOT, python_blocks, run_blocks

EXTENDING = ROOT / "docs" / "extending.md"


def estimator_block() -> tuple[int, str]:
    """(line, code) of the block that registers an estimator."""
    return next((line, code) for line, code in python_blocks(EXTENDING) if "@register_estimator" in code)


def test_the_estimator_block_is_found_after_the_scope_block():
    blocks = python_blocks(EXTENDING)
    line, code = estimator_block()
    assert blocks[0][0] < line and "register_scope" not in code
    assert "--fisher-alpha" in code and "fisher_alpha" in code and "alpha=0.8" in code


@pytest.mark.slow
def test_the_estimator_block_runs(tmp_path):
    out = run_blocks("docs/extending.md", [estimator_block()], tmp_path)
    assert "command line: {'fisher_estimator': 'share', 'fisher_alpha': 0.8}" in out
    assert "dataset: {'fisher_estimator': 'share', 'fisher_alpha': 0.8}" in out
    assert "alpha=0.8: " in out
