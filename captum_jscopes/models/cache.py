"""The cache of converted checkpoints: one folder per build, written next to its
place and renamed into it, with a manifest (file sizes and sha256, what it was built
from, the build's own check) that lets a later load detect a half-written,
truncated or corrupted copy and rebuild it.

Nothing here knows about models: :func:`cached_folder` takes what a folder is
built from and a function that builds it (the GGUF conversion of
:mod:`captum_jscopes.models.gguf`, or any other).

Cache location (the folder that holds one sub-folder per embedded model): the
``cache_dir`` argument, else ``$CAPTUM_JSCOPES_CACHE``, else
``$XDG_CACHE_HOME/captum_jscopes/models``, else ``~/.cache/captum_jscopes/models``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

__all__ = [
    "MANIFEST_NAME",
    "PathLike",
    "cached_folder",
    "model_cache_dir",
    "quick_sha256",
    "sha256_file",
    "verify_cache",
]

PathLike = Union[str, "os.PathLike[str]"]

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


def cached_folder(target: Path, source: dict, build: Callable[[Path], dict]) -> Path:
    """``target`` once it holds a valid build of ``source`` (a dict: what the
    folder is built from; a folder built from another is rebuilt).

    When it is missing or fails the quick manifest check (with a warning in the
    latter case), ``build(staging)`` writes a fresh copy into a temporary folder
    next to ``target`` and returns a dict kept in the manifest under "check"; the
    manifest is written last and the folder is renamed into place, so a crash
    never leaves a folder that passes the check.
    """
    problem = verify_cache(target, full=False, source=source)
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


def verify_cache(folder: PathLike, *, full: bool = True, source: Optional[dict] = None) -> Optional[str]:
    """What is wrong with a cached folder, checked against its manifest, or None
    when it is fine.

    Args:
        folder: the folder (e.g. ``model_cache_dir() / "smollm2-135m-instruct"``).
        full: re-hash every file whole (~0.5 s for the default model); False: the
            quick check loads use (sizes, and the sha256 of the first and last MiB
            of large files).
        source: what the folder must have been built from (as given to
            :func:`cached_folder`); None: not checked.
    Returns:
        None, or one line saying why the folder cannot be used ("missing",
        "... (truncated?)", "... (corrupted)", "built from ...").
    """
    folder = Path(folder)
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
        key, digest = ("sha256", sha256_file(path)) if full else ("quick_sha256", quick_sha256(path))
        if digest != expected[key]:
            return f"{relative} has the wrong {key} (corrupted)"
    return None


def _move_into_place(staging: Path, target: Path, source: dict) -> None:
    """Rename ``staging`` to ``target``. A broken ``target`` is first renamed aside
    (a directory rename cannot replace a non-empty one); if another process got
    there first with a valid copy, that copy is kept."""
    for _ in range(3):
        try:
            os.rename(staging, target)
            return
        except OSError:
            if verify_cache(target, full=False, source=source) is None:
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
            "sha256": sha256_file(path),
            "quick_sha256": quick_sha256(path),
        }
    manifest = {
        "format": _MANIFEST_FORMAT,
        "source": source,
        "transformers": transformers_version,
        "files": files,
        "check": check,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def sha256_file(path: Path) -> str:
    """sha256 of a whole file, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_MIB):
            digest.update(block)
    return digest.hexdigest()


def quick_sha256(path: Path) -> str:
    """sha256 of a small file, or of the first and last MiB of a large one."""
    size = path.stat().st_size
    if size <= _QUICK_HASH_ABOVE:
        return sha256_file(path)
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(_MIB))
        file.seek(size - _MIB)
        digest.update(file.read(_MIB))
    return digest.hexdigest()
