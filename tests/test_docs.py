"""The Python code blocks of the README and the docs run as written.

- README.md: every ```python block, one test each. The blocks run in order in one
  namespace (as a reader pastes them into one session); a block whose first line is the
  marker ``# needs a model hub`` runs on its own, in a fresh namespace (it must carry its
  imports), with the hub offline, and is skipped with that reason when the model is
  not in the local cache;
- docs/extending.md: its first block (it defines and registers a new scope and uses it
  everywhere);
- docs/dataset.md: its Python example(s), in one namespace.

Each document runs in a fresh Python process whose current folder is an empty temporary
one, so a block that reads or writes a file must say where that file comes from. A failure
names the document and its line. They load the embedded SmolLM2 model: ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_MARKER = "# needs a model hub"
# a load_model / from_pretrained call naming a Hub repository ("owner/name")
_HUB_CALL = re.compile(r"""(load_model|from_pretrained)\(\s*["'][\w.-]+/[\w.-]+["']""")
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the block's first code line, code) of every ```python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def runnable(blocks: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(line, code) for line, code in blocks if not needs_hub(code)]


def needs_hub(code: str) -> bool:
    return code.lstrip().splitlines()[0].strip() == HUB_MARKER


def run_blocks(name: str, blocks: list[tuple[int, str]], cwd: Path, timeout: float = 1200) -> str:
    """Run ``blocks`` of document ``name`` in one namespace in a fresh process in ``cwd``;
    the failing block's traceback gives the document's own line numbers."""
    done = _run_blocks(name, blocks, cwd, timeout)
    assert done.returncode == 0, f"{name}: a block failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def _run_blocks(name: str, blocks: list[tuple[int, str]], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    script = cwd / "_run_doc_blocks.py"
    script.write_text(
        "import json, sys\n"
        "namespace = {'__name__': '__main__'}\n"
        f"for line, code in json.loads({json.dumps(json.dumps(blocks))}):\n"
        f"    print(f'--- {name} line {{line}}', flush=True)\n"
        f"    exec(compile('\\n' * (line - 1) + code, {json.dumps(name)}, 'exec'), namespace)\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",            # plots without a display
        "HF_HUB_OFFLINE": "1",          # the blocks that run need no hub
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run([sys.executable, script.name], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ what is extracted (fast)


def test_every_readme_block_that_needs_a_hub_says_so_and_the_others_are_run():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    for line, code in blocks:
        if _HUB_CALL.search(code):
            assert code.lstrip().startswith(HUB_MARKER), (
                f"README.md line {line}: a block that loads a Hub model must start with {HUB_MARKER!r}")
    assert len(runnable(blocks)) >= 2


def test_the_documented_blocks_are_found():
    assert python_blocks(ROOT / "docs" / "extending.md")[0][1].count("register_scope") >= 2
    assert "attribute_dataset(" in "".join(code for _, code in python_blocks(ROOT / "docs" / "dataset.md"))


def test_block_extraction_keeps_line_numbers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n```bash\nls\n```\n```python\n# needs a model hub\ny\n```\n")
    assert python_blocks(doc) == [(4, "x = 1\n"), (12, "# needs a model hub\ny\n")]
    assert runnable(python_blocks(doc)) == [(4, "x = 1\n")]
    with pytest.raises(AssertionError, match="doc.md"):
        run_blocks("doc.md", [(4, "undefined_name\n")], tmp_path, timeout=120)


# ------------------------------------------------------------------ the blocks run (real model)


README_BLOCKS = python_blocks(ROOT / "README.md")
# the last line of a hub block's traceback when the model is neither on disk nor reachable
_NO_HUB = re.compile(r"^(\S+\.)?(ModelNotAvailableError|OSError|LocalEntryNotFoundError|OfflineModeIsEnabled|"
                     r"GatedRepoError|RepositoryNotFoundError|HfHubHTTPError)\b")


_RAISED = re.compile(r"^[A-Za-z_][\w.]*: ")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's blocks that need no hub, run once in order in one namespace: (folder, output)."""
    folder = tmp_path_factory.mktemp("readme")
    return folder, run_blocks("README.md", runnable(README_BLOCKS), folder)


@pytest.mark.parametrize("line, code", [
    pytest.param(line, code, id=f"README.md:{line}", marks=() if needs_hub(code) else pytest.mark.slow)
    for line, code in README_BLOCKS
])  # fmt: skip
def test_every_readme_block_runs(line, code, request, tmp_path):
    if not needs_hub(code):  # it ran, after the blocks above it (slow: the embedded model)
        _, out = request.getfixturevalue("readme_run")
        assert f"--- README.md line {line}\n" in out
        return
    done = _run_blocks("README.md", [(line, code)], tmp_path, timeout=600)
    if done.returncode != 0:
        raised = [text for text in done.stderr.splitlines() if _RAISED.match(text)]  # "Type: message" lines
        error = raised[-1] if raised else ""
        assert _NO_HUB.match(error), f"README.md line {line}: not a missing hub model\n{done.stderr[-6000:]}"
        pytest.skip(f"README.md line {line} needs a model hub: {error[:200]}")


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(readme_run):
    folder, out = readme_run
    assert out.count("--- README.md line") == len(runnable(README_BLOCKS))
    assert (folder / "paris.json").is_file() and (folder / "paris.png").is_file()


@pytest.mark.slow
def test_extending_first_block_runs(tmp_path):
    out = run_blocks("docs/extending.md", python_blocks(ROOT / "docs" / "extending.md")[:1], tmp_path)
    assert "benchmark scores:" in out and "dataset: 1 prompt(s), 0 error(s)" in out


@pytest.mark.slow
def test_dataset_python_example_runs(tmp_path):
    run_blocks("docs/dataset.md", runnable(python_blocks(ROOT / "docs" / "dataset.md")), tmp_path)
    assert (tmp_path / "qa" / "records.jsonl").is_file()


# ------------------------------------------------------------------ what the README cites


def test_the_verdict_command_the_readme_cites_prints_the_verdict():
    assert "python -m captum_jscopes.bench.verdict" in (ROOT / "README.md").read_text(encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "captum_jscopes.bench.verdict"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Verdict") and "faithfulness-verdict.md" in done.stderr


def test_the_verdict_command_says_where_it_wrote(tmp_path, monkeypatch, capsys):
    from captum_jscopes.bench import common, verdict

    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path / "none")  # e.g. an installed wheel
    assert verdict.main([]) == 2
    assert "--run NAME=DIR" in capsys.readouterr().err
    committed = ROOT / "benchmarks" / "results" / "faithfulness-smollm2-135m-instruct-lambada1000-combined"
    out = tmp_path / "v.md"
    assert verdict.main(["--run", f"SmolLM2={committed}", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"verdict written to {out} and {out.with_suffix('.json')}" in err and out.is_file()


def test_the_licence_is_apache_2_in_the_repository_and_declared_for_the_wheel():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright 2026 The captum_jscopes authors" in text
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
