"""Scopes from other packages: the entry-point group ``captum_jscopes.scopes``.

A stand-in for an installed package: a folder on ``sys.path`` holding a
``*.dist-info`` (METADATA, entry_points.txt) and the package's modules, found by
the real ``importlib.metadata`` lookup. Its entry points name a scope class, a
module that registers a scope, a module that does not exist and something that
is no scope; the last two are left out with one warning line each, and the
command line runs the others like the built-in scopes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from helpers import BOS, make_model, make_tokenizer, random_ids

from captum_jscopes.scopes import registry
from captum_jscopes.scopes.registry import SCOPES, ScopePluginWarning, load_plugins, scope_class

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "the cat sat on the"

ENTRY_POINTS = """\
[captum_jscopes.scopes]
logit_mean = jscopes_demo_plugin:LogitMeanScope
twin = jscopes_demo_registers
broken = jscopes_demo_missing:NoScope
not_a_scope = jscopes_demo_plugin:helper
"""

# a scope class, named by the entry point; it imports the package's top level like a user would
PLUGIN = '''\
import torch
from captum_jscopes import JacobianScope


class LogitMeanScope(JacobianScope):
    """v = the mean row of the unembedding: which tokens drive the mean logit."""

    name = "logit_mean"
    explains = "the mean logit"

    def directions(self, forward, targets):
        y = forward.hidden.detach().to(forward.compute_dtype)      # (B, P, d)
        return forward.weight.to(y).mean(0).expand_as(y)[None]       # (1, B, P, d)

    def readout(self, hidden, logits, targets):
        return logits.mean(-1)


def helper():
    return 1
'''

# a module that registers its scope when imported, named by the entry point
REGISTERS = '''\
from captum_jscopes import TemperatureScope, register_scope


@register_scope
class TwinScope(TemperatureScope):
    name = "temperature_twin"
'''

PLUGIN_SCOPES = ("logit_mean", "temperature_twin")


@pytest.fixture
def plugin_dir(tmp_path):
    """The stand-in for ``pip install jscopes-demo``: its modules and its dist-info."""
    folder = tmp_path / "site"
    info = folder / "jscopes_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jscopes-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (folder / "jscopes_demo_plugin.py").write_text(PLUGIN)
    (folder / "jscopes_demo_registers.py").write_text(REGISTERS)
    return folder


@pytest.fixture
def installed(plugin_dir, monkeypatch):
    """The stand-in on sys.path in this process, the registry as if never read; undone after."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setattr(registry, "_plugins_pending", True)
    monkeypatch.setattr(registry, "_loaded_entry_points", set())
    yield plugin_dir
    for name in PLUGIN_SCOPES:
        dict.pop(SCOPES, name, None)
    for module in ("jscopes_demo_plugin", "jscopes_demo_registers"):
        sys.modules.pop(module, None)


def _one_line_each(messages: list[str]) -> None:
    assert all("\n" not in m for m in messages), messages


def test_the_first_read_of_the_registry_loads_the_plugins(installed):
    with pytest.warns(ScopePluginWarning) as caught:
        assert "logit_mean" in SCOPES  # the first read
    assert list(SCOPES)[:3] == ["semantic", "temperature", "fisher"]
    assert list(SCOPES)[3:5] == ["logit_mean", "temperature_twin"]  # by entry-point name
    plugin = sys.modules["jscopes_demo_plugin"]
    assert scope_class("logit_mean") is plugin.LogitMeanScope
    assert scope_class("temperature_twin").__module__ == "jscopes_demo_registers"
    # the failing plugins: one warning line each, naming the entry point, its target and its package
    messages = sorted(str(w.message) for w in caught)
    _one_line_each(messages)
    assert len(messages) == 2
    assert messages[0].startswith("scope plugin 'broken' (jscopes_demo_missing:NoScope, from jscopes-demo 0.1) "
                                  "not loaded: ModuleNotFoundError")
    assert messages[1].startswith("scope plugin 'not_a_scope' (jscopes_demo_plugin:helper, from jscopes-demo 0.1)")
    assert "neither a JacobianScope subclass nor a module" in messages[1]
    # loaded once: later reads and calls load nothing again, and warn nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_plugins() == [] and len(SCOPES) == 5


def test_a_plugin_scope_scores_like_its_definition(installed):
    with pytest.warns(ScopePluginWarning):
        names = load_plugins()
    assert names == list(PLUGIN_SCOPES)
    model = make_model("llama", torch.float64)
    ids = random_ids(1, 6, seed=2)
    ids[0, 0] = BOS
    scores = scope_class("logit_mean")(model, exclude_special_tokens=False).attribute(ids)[0]
    # brute force: the gradient of the mean logit at the last position, per input embedding
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs_embeds=x).logits[0, -1].mean(), x)
    torch.testing.assert_close(scores, grad[0].norm(dim=-1), rtol=1e-8, atol=1e-12)


def test_a_module_that_registers_nothing_is_named(installed):
    (installed / "jscopes_demo_empty.py").write_text("X = 1\n")
    info = installed / "jscopes_demo-0.1.dist-info" / "entry_points.txt"
    info.write_text(ENTRY_POINTS + "empty = jscopes_demo_empty\n")
    with pytest.warns(ScopePluginWarning) as caught:
        load_plugins()
    assert any("scope plugin 'empty' (jscopes_demo_empty" in str(w.message) and "registered no scope"
               in str(w.message) for w in caught)
    sys.modules.pop("jscopes_demo_empty", None)


@pytest.mark.slow  # installs a package and starts the console script
def test_the_command_line_runs_an_installed_plugin_scope(plugin_dir, tmp_path):
    """In a fresh process, as after ``pip install``: ``--scope logit_mean`` is a choice
    and runs; the broken plugins cost one warning line each and nothing else."""
    model_dir = tmp_path / "tiny-llama"  # a tiny Llama checkpoint with the test tokenizer
    for part in (make_model("llama"), make_tokenizer()):
        part.save_pretrained(model_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)]), "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "captum_jscopes", "attribute", PROMPT, "--scope", "logit_mean", "--model",
         str(model_dir), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "logit_mean.json").read_text(encoding="utf-8"))
    assert record["metadata"]["scope"] == "logit_mean"
    assert (out / "logit_mean.png").is_file() and (out / "logit_mean.html").is_file()
    warned = [line for line in done.stderr.splitlines() if "ScopePluginWarning" in line]
    assert len(warned) == 2 and "scope plugin 'broken'" in warned[0] and "scope plugin 'not_a_scope'" in warned[1]
    assert not [line for line in done.stderr.splitlines() if line.startswith("  ")]  # no source line under them
    # --help lists it among the choices
    helped = subprocess.run([sys.executable, "-m", "captum_jscopes", "attribute", "--help"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert helped.returncode == 0 and "logit_mean" in helped.stdout and "temperature_twin" in helped.stdout


def test_without_plugins_the_registry_is_the_built_in_three():
    code = textwrap.dedent("""
        from captum_jscopes.scopes.registry import SCOPES
        print(",".join(SCOPES))
    """)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(",")[:3] == ["semantic", "temperature", "fisher"]


def test_the_documented_declaration_is_the_group_the_registry_reads():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    declared = tomllib.loads(block)["project"]["entry-points"]
    assert list(declared) == [registry.ENTRY_POINT_GROUP]
    assert declared[registry.ENTRY_POINT_GROUP] == {"entropy": "my_scope:EntropyScope", "more": "my_scope.extra"}
