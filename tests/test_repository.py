"""The repository stands on its own and keeps its structure:

- nothing refers to a folder outside the clone (a user's clone has nothing beside it);
- a copy of the tracked files in a folder with nothing beside it runs the data-reading
  tests and a benchmark on the default prompt set;
- no private name (leading underscore) is imported from another module, and Captum's
  private API is used only in ``captum_jscopes/core/captum_compat.py``, whose pinned version
  must be the installed one;
- the package's folders keep their layer order (none imports one to its right at module
  level) and no module is over 600 lines.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import captum
import pytest
from helpers import make_model, make_tokenizer

from captum_jscopes.core import captum_compat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "captum_jscopes"


def tracked_files() -> list[Path]:
    """The files a commit of the working tree would hold: tracked, or new and not ignored."""
    if shutil.which("git") and (ROOT / ".git").exists():
        command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]
    # a source archive without git: every file but the virtual environment and caches
    skip = {".venv", ".git", "__pycache__", ".pytest_cache"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_no_tracked_file_refers_to_a_folder_beside_the_clone():
    outside = "../" + "shared"  # spelled in two parts so this file does not match itself
    hits = []
    for path in tracked_files():
        if path.suffix in {".png", ".jsonl"} or path.stat().st_size > 5_000_000:
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        hits += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1) if outside in line]
    assert not hits, f"these lines point outside the repository: {hits}"


@pytest.fixture(scope="module")
def lone_clone(tmp_path_factory) -> Path:
    """The tracked files, copied into a folder with nothing beside them."""
    copy = tmp_path_factory.mktemp("alone") / "captum_jscopes_clone"
    for path in tracked_files():
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {"benchmarks", "tutorials", "docs"} and relative.suffix in {".png", ".jsonl", ".ipynb"}:
            continue  # results and notebooks: large, and not read by the code
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert not (copy.parent / "shared").exists()
    return copy


def _run_in(copy: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    # the copy's package first on the path: the installed (editable) one must not be used
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), str(copy / "tests")]))
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # clones the repository and builds a fresh virtual environment
def test_a_clone_with_nothing_beside_it_reads_its_data(lone_clone):
    done = _run_in(lone_clone, "-c", "import captum_jscopes, sys; print(captum_jscopes.__file__)")
    assert done.returncode == 0 and done.stdout.strip().startswith(str(lone_clone)), done.stderr
    done = _run_in(lone_clone, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "tests/bench/test_runner.py", "tests/bench/test_prompts.py", "-k", "not processes")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow  # runs the benchmark in the fresh clone
def test_a_clone_with_nothing_beside_it_runs_the_faithfulness_benchmark(lone_clone, tmp_path):
    model_dir = tmp_path / "tiny"
    make_model("llama").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "out"
    done = _run_in(lone_clone, "-m", "captum_jscopes", "bench", "faithfulness", "--model", str(model_dir),
                   "--n", "2", "--methods", "semantic,random", "--curve-fractions", "0,0.1", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["data"] == "lambada"
    assert len((out / "records.jsonl").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- structure
def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_imported_across_modules():
    """A leading underscore means "only this module" for a name, and "only this
    package" for a module (``cli/_common.py`` serves the command modules beside
    it): tests and other packages use public names."""
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        own_package = ".".join(path.relative_to(ROOT).parent.parts)
        for module, level, names in _imports(path):
            if level == 0 and (module == "captum" or module.startswith("captum.")):
                continue  # third-party: checked by the next test
            private = [n for n in names if _private(n)]
            parts = module.split(".")
            hidden = [i for i, part in enumerate(parts) if _private(part)]
            across = any(".".join(parts[:i]) != own_package for i in hidden)
            if private or across:
                offenders.append(f"{path.relative_to(ROOT)}: from {'.' * level}{module} import {names}")
    assert not offenders, "\n".join(offenders)


def test_captums_private_api_is_used_only_in_the_compat_module():
    users = []
    for path in PACKAGE.rglob("*.py"):
        for module, level, names in _imports(path):
            if level == 0 and module.startswith("captum.") and (
                any(p.startswith("_") for p in module.split(".")) or any(n.startswith("_") for n in names)
            ):
                users.append(path.name)
        text = path.read_text(encoding="utf-8")
        if path.name != "captum_compat.py" and ("._get_target_tokens" in text or "._format_model_input" in text):
            users.append(path.name)
    assert set(users) <= {"captum_compat.py"}, users


def test_the_compat_module_was_checked_against_the_installed_captum():
    assert captum.__version__ == captum_compat.CAPTUM_VERSION, (
        f"Captum {captum.__version__} is installed, captum_compat.py was checked against "
        f"{captum_compat.CAPTUM_VERSION}: re-check its private calls, then update the pin and the constant"
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"captum=={captum_compat.CAPTUM_VERSION}"' in pyproject


def test_the_compat_helpers_work_on_a_tiny_model():
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    model, tokenizer = make_model("llama"), make_tokenizer()
    attribution = LLMGradientAttribution(LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer)
    inp = TextTokenInput("the cat sat", tokenizer)
    ids = captum_compat.prompt_token_ids(attribution, inp)
    assert ids.tolist() == [tokenizer("the cat sat")["input_ids"]]
    target = captum_compat.target_token_ids(attribution, inp, "on the mat", None)
    assert target.tolist() == tokenizer.encode("on the mat", add_special_tokens=False)
    assert captum_compat.pretty_tokens(target, tokenizer) == ["on", "the", "mat"]


#: the package's layers, left to right: a module may import its own layer and those to
#: its left at module level, never one to its right (a lazy import inside a function may)
LAYERS = ["core", "fisher", "scopes", "results", ("analysis", "metrics"), "display",
          "integrations", "runs", "cli", "bench"]
LAYER_RANK = {name: rank for rank, layer in enumerate(LAYERS)
              for name in (layer if isinstance(layer, tuple) else (layer,))}
#: below every layer: packages that import nothing of the package but themselves
BASE = {"models"}

#: no module of the package is longer: a longer one holds more than one concern
MAX_MODULE_LINES = 600


def _module_level_imports(path: Path):
    """The absolute names a module imports at module level (relative imports resolved)."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            yield ".".join(base + ([node.module] if node.module else []))


def test_no_package_imports_one_to_its_right():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2 or parts[0] not in LAYER_RANK:
            continue
        for name in _module_level_imports(path):
            target = name.split(".")
            if target[0] == PACKAGE.name and len(target) > 1 and LAYER_RANK.get(target[1], -1) > LAYER_RANK[parts[0]]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name} ({target[1]} sits right of {parts[0]})")
    assert not offenders, "\n".join(offenders)


def test_every_package_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    unplaced = sorted(folders - set(LAYER_RANK) - BASE)
    assert not unplaced, f"give these folders a place in LAYERS (or BASE): {unplaced}"


def test_the_base_packages_import_nothing_of_the_package_but_themselves():
    offenders = []
    for folder in sorted(BASE):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for name in _module_level_imports(path):
                target = name.split(".")
                if target[0] == PACKAGE.name and target[1:2] != [folder]:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them along their concerns): {long}"


#: the test modules that test the repository as a whole, not one package folder
_REPOSITORY_TESTS = {"test_docs.py", "test_repository.py"}
#: test folders for what lives beside the package (the tutorials)
_NON_PACKAGE_TEST_FOLDERS = {"tutorials"}


def test_the_tests_mirror_the_package_folders():
    tests = ROOT / "tests"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    misplaced = sorted(str(p.relative_to(tests)) for p in tests.rglob("test_*.py")
                       if (p.parent == tests and p.name not in _REPOSITORY_TESTS)
                       or (p.parent != tests and p.relative_to(tests).parts[0] not in folders | _NON_PACKAGE_TEST_FOLDERS))
    assert not misplaced, f"put these under tests/<package folder>/: {misplaced}"


# what only a scope (or the Fisher estimators) may name: code elsewhere asks the scope
_SCOPE_OWN_NAMES = ("fisher_estimator", "fisher_tol", "fisher_method", "FisherScope")


def test_no_module_outside_the_scopes_names_a_scopes_options():
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in ("scopes", "fisher")
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if any(name in line for name in _SCOPE_OWN_NAMES)]
    assert not offenders, "\n".join(offenders)
