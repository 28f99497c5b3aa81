"""The tutorial notebooks (tutorials/NN_*.ipynb).

- Every notebook is executed with nbclient on the default model, in the reduced
  size the notebooks switch to when JSCOPES_TUTORIAL_FAST=1, in a temporary copy
  (the committed notebooks are never rewritten). It must run without an error,
  its assert cells must have run, and its figures must have been written and shown.
- The committed notebooks must carry the outputs of a run, stay small, and hold
  exactly the cells of their paired jupytext source tutorials/NN_name.py
  (nobody hand-edits the JSON and forgets the source).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_NOTEBOOK_BYTES = 1_000_000
# a guard against a hung kernel, not a speed check: the benchmark cells of 06 take
# ~1-2 min alone and over 4 min on a 2-core CPU shared with a benchmark run
CELL_TIMEOUT_S = 900
KERNEL_NAME = "jscopes-tutorial-test"

# Figures our notebooks write into outputs/<notebook>/ (a notebook not listed here,
# e.g. one added later, must show at least one image).
EXPECTED_FIGURES = {
    "01_quickstart": [
        "captum_plot_token_attr.png",
        "semantic_heatmap.png",
        *(f"scope_{i}.png" for i in range(4)),
    ],
    "02_instructions": ["answer_matrix.png", "key_word.png", *(f"scope_{i}.png" for i in range(3))],
    "03_implicit_bias": [f"semantic_{i}.png" for i in range(3)],
    "04_translation": ["fisher_alignment.png", "fisher_vs_semantic.png"],
    "05_forecasting": ["series_influence.png"],
    "06_benchmarks": [
        "speed_ratios.png",
        "metrics_one_prompt.png",
        "speed/speed.png",  # written by the speed benchmark itself
        "faithfulness/deletion_curves.png",  # written by the faithfulness benchmark
    ],
    "07_trust": ["linearity_semantic.png"],
    "08_fisher_components": ["components_lambada.png", "components_translation.png"],
    "09_layers": [
        "capital.png",
        *(f"lambada_{scope}.png" for scope in ("semantic", "temperature", "fisher")),
        "lambada_shares.png",
        "translation_cat.png",
    ],
    "10_rules": ["two_by_two.png", "deletion.png"],
}


def _ids(paths):
    return [p.stem for p in paths]


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _is_assert_cell(cell) -> bool:
    return any(line.strip().startswith("assert ") for line in cell.source.splitlines())


def _png_outputs(nb) -> list[str]:
    return [
        out["data"]["image/png"]
        for cell in _code_cells(nb)
        for out in cell.outputs
        if out.get("output_type") in ("display_data", "execute_result") and "image/png" in out.get("data", {})
    ]


def _errors(nb) -> list[str]:
    return [
        f"{out.get('ename')}: {out.get('evalue')}"
        for cell in _code_cells(nb)
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A private kernelspec that runs this interpreter (so the kernel sees the same
    packages as pytest whatever kernels are installed), the fast switch, and the
    repository on PYTHONPATH (for a checkout that is not pip-installed). Returns
    the kernel's working directory."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "captum_jscopes tutorial test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JSCOPES_TUTORIAL_FAST", "1")
    # One intra-op thread unless the caller chose: on a shared CPU, torch's threads
    # wait on each other at every small op and a notebook runs up to 10x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    workdir = tmp_path / "run"
    workdir.mkdir()
    return workdir


def test_there_are_tutorials():
    assert [p.stem for p in NOTEBOOKS][: len(EXPECTED_FIGURES)] == list(EXPECTED_FIGURES)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    for cell in _code_cells(nb):  # start clean: nothing below may come from the committed run
        cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(kernel_env)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    code = _code_cells(nb)
    assert all(cell.execution_count is not None for cell in code), "a code cell did not run"
    assert not _errors(nb)
    assert_cells = [cell for cell in code if _is_assert_cell(cell)]
    assert len(assert_cells) >= 1, f"{path.name} has no assert cell"
    assert all(cell.execution_count is not None for cell in assert_cells)

    pngs = _png_outputs(nb)
    assert pngs, f"{path.name} showed no image"
    written = kernel_env / "outputs" / path.stem
    for name in EXPECTED_FIGURES.get(path.stem, []):
        figure = written / name
        assert figure.is_file(), f"{path.name} did not write {figure.name}"
        assert figure.read_bytes()[:8] == PNG_SIGNATURE, f"{figure.name} is not a PNG"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_outputs_and_is_small(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    code = _code_cells(nb)
    assert code and all(cell.execution_count is not None for cell in code), f"{path.name} was not executed"
    assert not _errors(nb), f"{path.name} was saved with an error"
    assert _png_outputs(nb), f"{path.name} has no figure"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and "TODO" not in last.source, "the findings are missing"


def test_every_notebook_is_paired_with_a_percent_source():
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_matches_its_source(path):
    source = jupytext.read(path.with_suffix(".py"), fmt="py:percent")
    committed = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], f"{path.name} differs from {path.stem}.py: run `python tutorials/_build.py {path.stem[:2]}`"
