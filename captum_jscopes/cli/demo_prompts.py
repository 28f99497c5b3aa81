"""The built-in examples of ``jscopes demo``: a factual recall, the paper's
implicit-bias prompt and a LAMBADA passage (arXiv 2601.16407, sections 4-5).

Each example is explained by the scopes listed in its ``runs``; every run
writes ``<out>/<example.name>/<run.stem>.{png,html,json}``. Each title
(``about``) comes with ``claims`` a run can check (:class:`DemoClaim`) and a
``note`` saying plainly what the default model shows, including where a scope
ranks a function word first and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


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
class DemoClaim:
    """What an example's title claims, in a form a run can check: in run
    ``stem``'s ranking of the input tokens, the best-ranked token that reads
    ``token`` (as displayed, e.g. " France") is among the first ``within``.

    The demo prints, per claim, whether it held on the model it ran with; the
    default model's outcome is what the example's ``note`` describes.
    """

    stem: str
    token: str
    within: int = 1

    def rank(self, result: Any) -> Optional[int]:
        """1-based rank of the best-ranked input token whose readable text
        (``result.input_display``) is ``token``, in ``result`` (a ScopeResult),
        or None when the prompt has no such token."""
        display = result.input_display
        ranking = result.top_tokens(len(result.input_tokens))
        return next((r for r, (i, _, _) in enumerate(ranking, start=1) if display[i] == self.token), None)

    def holds(self, result: Any) -> bool:
        rank = self.rank(result)
        return rank is not None and rank <= self.within

    def describe(self, result: Any) -> str:
        """'holds: ' France' is 1st' / 'does not hold: ' France' is 4th (claimed: top 3)'."""
        rank = self.rank(result)
        where = "not in the prompt" if rank is None else f"is {_ordinal(rank)}"
        verdict = "holds" if self.holds(result) else f"does not hold (claimed: top {self.within})"
        return f"{verdict}: {self.token!r} {where}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class DemoExample:
    """A prompt, the folder its files go to, the runs made on it, its title
    (``about``), the checkable form of the title (``claims``) and a plain note
    on what the default model shows, including where a scope ranks a function
    word first and why (``note``)."""

    name: str
    prompt: str
    runs: tuple[DemoRun, ...]
    about: str
    claims: tuple[DemoClaim, ...] = ()
    note: str = ""


def _all_scopes(target: Optional[str]) -> tuple[DemoRun, ...]:
    return (DemoRun("semantic", target), DemoRun("temperature", target), DemoRun("fisher", target))


#: Why the first token often tops a map, said once for the notes below.
_SINK = (
    "The first token is an attention sink: every later token attends to it, so a change of its "
    "embedding moves every later hidden state, whatever the word is."
)

# The outcomes in the notes are those of the default model (SmolLM2-135M-Instruct,
# float32, CPU); `jscopes demo` checks the claims again on whatever model it runs.
DEMO_EXAMPLES: tuple[DemoExample, ...] = (
    DemoExample(
        name="capital",
        # Not "The capital of France is": there all three scopes rank 'The' (the
        # first token) and ' capital' above ' France'.
        prompt="The largest city in France, and its capital, is",
        runs=_all_scopes(" Paris"),
        about="factual recall: ' France' should drive ' Paris'",
        claims=(DemoClaim("semantic", " France"), DemoClaim("temperature", " France"), DemoClaim("fisher", " France", 3)),
        note=(
            "Semantic and Temperature rank ' France' first. Fisher ranks the function word 'The', the "
            "first token, first, and (exact) ' France' second, ' largest' close behind: the default "
            f"48-pass estimator (seed 0) swaps those two, so ' France' shows third. {_SINK} "
            "On 'The capital of France is' all three scopes put 'The' first for that reason."
        ),
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
        about="implicit bias: ' Columbia' drives ' liberal' (and, on this small model, ' conservative' too)",
        claims=(DemoClaim("semantic-liberal", " Columbia"), DemoClaim("semantic-conservative", " Columbia", 2)),
        note=(
            "The paper finds 'Columbia' behind ' liberal' and 'South' behind ' conservative' on larger models. "
            "On SmolLM2-135M, which predicts neither word (' big', p = 0.08), ' Columbia' is first for "
            "' liberal' and second for ' conservative', after the first token 'Tom'; ' South' is only "
            f"sixth for both. {_SINK} The contrastive scope, ' liberal' rather than ' conservative' "
            "(tutorials/03_implicit_bias), separates the two words."
        ),
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
        claims=(
            DemoClaim("fisher", " helmet"),
            DemoClaim("semantic", " helmet", 3),
            DemoClaim("temperature", " helmet", 3),
        ),
        note=(
            "Fisher ranks the two earlier ' helmet's first and second. Semantic and Temperature rank ' fog' "
            f"first and the function word 'The', the first token, second; the ' helmet's come third and "
            f"fourth. {_SINK}"
        ),
    ),
)
