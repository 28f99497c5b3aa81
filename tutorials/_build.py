"""Update the tutorial notebooks from their sources, and run them.

Each tutorial is a pair (jupytext, https://jupytext.readthedocs.io):

- ``tutorials/NN_name.py``: the source, in jupytext's "percent" format (``# %%``
  starts a code cell, ``# %% [markdown]`` a markdown cell). Edit this one: it
  lints, highlights and gives tracebacks like any Python file, and its last
  markdown cell ("What the model showed") holds the findings of a full-size run.
- ``tutorials/NN_name.ipynb``: the same cells with the outputs of a full-size
  run, which is what Jupyter and the forge show.

    python tutorials/_build.py               # update every notebook from its source and execute it (full size)
    python tutorials/_build.py 03 05         # only the notebooks whose name starts so
    python tutorials/_build.py --no-execute  # copy the sources' cells into the notebooks, keeping outputs

``--no-execute`` keeps the outputs of cells whose code did not change (jupytext
matches cells by content), so a markdown edit needs no re-run. The notebooks read
``JSCOPES_TUTORIAL_FAST=1`` (set by tests/tutorials/test_tutorials.py) to run a
reduced size; commit only full-size runs. Execution happens in a temporary
folder, so the files the notebooks write (``outputs/NN_name/``) stay out of the
repository; the figures are embedded in the notebooks as images.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
FORMAT = "py:percent"
TIMEOUT_S = 1800  # per cell; the full-size runs of 04 (Gemma, Fisher) take minutes on a CPU


def sources() -> dict[str, Path]:
    """Notebook name -> its percent source, in order."""
    return {path.stem: path for path in sorted(HERE.glob("[0-9][0-9]_*.py"))}


def paired_notebook(source: Path) -> nbformat.NotebookNode:
    """The source's cells, with the committed notebook's outputs wherever a cell
    is unchanged, and stable cell ids (a rebuild diffs cleanly)."""
    nb = jupytext.read(source, fmt=FORMAT)
    committed = source.with_suffix(".ipynb")
    if committed.exists():
        nb = combine_inputs_with_outputs(nb, nbformat.read(committed, as_version=4), fmt=FORMAT)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb


def execute(nb: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell in ``workdir`` (the kernel's working directory); raises
    nbclient's CellExecutionError on the first failing cell."""
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
        resources={"metadata": {"path": str(workdir)}},
        record_timing=False,  # no timestamps: re-running gives a clean diff
    )
    return client.execute()


def build(source: Path, run: bool) -> Path:
    nb = paired_notebook(source)
    if run:
        start = time.time()
        with tempfile.TemporaryDirectory(prefix=f"jscopes-{source.stem}-") as workdir:
            nb = execute(nb, Path(workdir))
        print(f"{source.stem}: executed in {time.time() - start:.0f} s", file=sys.stderr)
    path = source.with_suffix(".ipynb")
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{source.stem}: wrote {path} ({path.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 01 05 (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="update the notebooks' cells without running them")
    args = parser.parse_args(argv)
    if os.environ.get("JSCOPES_TUTORIAL_FAST") == "1" and not args.no_execute:
        parser.error("JSCOPES_TUTORIAL_FAST=1 is set: the committed notebooks must be full-size runs")
    found = sources()
    chosen = [name for name in found if not args.only or any(name.startswith(p) for p in args.only)]
    if not chosen:
        parser.error(f"no notebook matches {args.only}; names: {', '.join(found)}")
    for name in chosen:
        build(found[name], run=not args.no_execute)


if __name__ == "__main__":
    main()
