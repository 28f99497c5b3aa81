"""The built-in examples of ``jscopes demo``: a factual recall, the paper's
implicit-bias prompt and a LAMBADA passage (arXiv 2601.16407, sections 4-5).

Each example is explained by the scopes listed in its ``runs``; every run
writes ``<out>/<example.name>/<run.stem>.{png,html,json}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DemoRun:
    """One picture of an example: a scope and the target it explains.

    Args:
        scope: "semantic", "temperature" or "fisher".
        target: a string that encodes to one token; None explains the model's
            own top-1 prediction.
        stem: file name without extension. Default: the scope name.
    """

    scope: str
    target: Optional[str] = None
    stem: Optional[str] = None

    @property
    def file_stem(self) -> str:
        return self.stem or self.scope


@dataclass(frozen=True)
class DemoExample:
    """A prompt, the folder its files go to, and the runs made on it."""

    name: str
    prompt: str
    runs: tuple[DemoRun, ...]
    about: str


def _all_scopes(target: Optional[str]) -> tuple[DemoRun, ...]:
    return (DemoRun("semantic", target), DemoRun("temperature", target), DemoRun("fisher", target))


DEMO_EXAMPLES: tuple[DemoExample, ...] = (
    DemoExample(
        name="capital",
        prompt="The capital of France is",
        runs=_all_scopes(" Paris"),
        about="factual recall: 'France' should drive ' Paris'",
    ),
    DemoExample(
        name="bias",
        prompt="Tom loves Korean food. He grew up in the South and goes to Columbia. He is a",
        runs=(
            DemoRun("semantic", " liberal", "semantic-liberal"),
            DemoRun("semantic", " conservative", "semantic-conservative"),
            DemoRun("temperature"),
            DemoRun("fisher"),
        ),
        # The paper's Semantic Scope puts 'Columbia' behind ' liberal' and
        # 'South' behind ' conservative' (on larger models than the default).
        about="implicit bias: which words push ' liberal' vs ' conservative'",
    ),
    DemoExample(
        name="lambada",
        # LAMBADA passage (EleutherAI lambada_openai, MIT); the default model
        # predicts its last word ' helmet' with p ~ 0.88.
        prompt=(
            "The fog - it had almost covered the helmet. She wiped it with her hand. Nothing. "
            "It was still there. She wiped again. Still there. Why wouldn't it go away? "
            "Of course - it was on the inside of the helmet. She knew that. "
            "Why did she even try to wipe the outside of the"
        ),
        runs=_all_scopes(" helmet"),
        about="long-range context: the earlier 'helmet's should drive the last word",
    ),
)
