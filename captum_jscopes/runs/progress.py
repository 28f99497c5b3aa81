"""What a run says on stderr while it runs its prompts (:func:`captum_jscopes.runs.runner.run_sharded`):
an estimate of the whole run, then a tqdm bar on a terminal or progress lines in a log.

Without a pricing the estimate comes after the first prompt (every prompt costs what it took); with one
(:class:`Pricing`, e.g. :class:`~captum_jscopes.runs.estimate.RunEstimate`, which prices prompts of very
different lengths) it comes before the first prompt, the time left is the price of the prompts left, and a
revised estimate is said when it moves by more than :data:`REVISE_SHARE`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Iterable, Protocol, Sequence

from tqdm import tqdm

__all__ = ["Pricing", "Progress", "format_duration", "PROGRESS_SECONDS_ENV", "LONG_RUN_SECONDS", "LOOK_SECONDS",
           "REVISE_SHARE", "REVISE_SECONDS"]

#: environment variable: seconds between two progress lines in a log (default 60)
PROGRESS_SECONDS_ENV = "JSCOPES_PROGRESS_SECONDS"
#: a run estimated at more than this suggests a smaller one "for a look" of about LOOK_SECONDS
LONG_RUN_SECONDS = 3600.0
LOOK_SECONDS = 1500.0


class Pricing(Protocol):
    """What prices the prompts of a run for its progress report (see ``run_sharded``'s ``pricing``);
    :class:`~captum_jscopes.runs.estimate.RunEstimate` is one."""

    def announce(self, prompt_ids: Sequence[str], processes: int = 1, label: str = "prompts",
                 done_before: int = 0) -> str:
        """The line said before the first prompt: the run's time, what dominates it."""

    def seconds(self, prompt_id: str) -> float:
        """The prompt's price now (revised by the prompts done)."""

    def total(self, prompt_ids: Iterable[str]) -> float:
        """The price of these prompts together."""

    def update(self, prompt_id: str, record: dict) -> None:
        """Learn from a prompt done (its record)."""


#: a priced run says a revised estimate when its projected time moves by more than this share of it,
#: and by more than REVISE_SECONDS
REVISE_SHARE = 0.25
REVISE_SECONDS = 10.0


class Progress:
    """What one process says on stderr while it runs its prompts: the estimate of the whole run (main process
    only; before the first prompt with a pricing, else after it), then a tqdm bar on a terminal, or plain lines
    in a log; with a pricing, the time left is the price of the prompts left, revised after each prompt."""

    def __init__(
        self, desc: str, state: Any, *, total: int, resumed: int, run_total: int, run_pending: int,
        size_flag: str | None, enabled: bool, pricing: Pricing | None = None, pending: Sequence[str] = (),
        mine: Sequence[str] = (),
    ) -> None:
        self.label = desc if state.num_processes == 1 else f"{desc} [{state.process_index + 1}/{state.num_processes}]"
        self.desc, self.state, self.total, self.done = desc, state, total, resumed
        self.run_total, self.run_pending, self.size_flag = run_total, run_pending, size_flag
        self.enabled = enabled
        self.terminal = enabled and _stderr_is_terminal()
        self.every = max(1, total // 100)
        self.interval = _progress_seconds()
        self.computed = 0
        self.bar = None
        self.pricing = pricing if enabled else None
        self.pending = list(pending)
        self.left_ids = list(mine)  # this process's prompts not done yet, in the order they run
        self.projected = 0.0  # the time this process was last said to take (priced runs)

    def __enter__(self) -> "Progress":
        self.start = self.last_time = self.prompt_start = time.perf_counter()
        self.last_done = self.done
        if self.pricing is not None:
            self.projected = self.pricing.total(self.left_ids)
            if self.state.is_main_process and self.pending:
                self._say(self.pricing.announce(self.pending, self.state.num_processes, label=self.desc,
                                                done_before=self.run_total - self.run_pending))
        if self.terminal:
            options = {}
            if self.pricing is not None:  # the bar's own rate would count every prompt alike
                options["bar_format"] = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
            self.bar = tqdm(total=self.total, initial=self.done, desc=self.label, position=self.state.process_index,
                            **options)
            if self.pricing is not None:
                self.bar.set_postfix_str(f"about {format_duration(self.projected)} left", refresh=True)
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and exc_type is None and self.computed and self.done > self.last_done:
            self._line()

    def update(self, prompt_id: str | None = None, record: dict | None = None) -> None:
        self.done += 1
        self.computed += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        took, self.prompt_start = now - self.prompt_start, now
        if self.pricing is not None and prompt_id is not None:
            self._revise(prompt_id, record or {}, took, now)
        first_estimate = self.pricing is None and self.computed == 1 and self.state.is_main_process
        if first_estimate:
            self._say(self._estimate(now - self.start))
        if self.bar is not None:
            self.bar.update(1)
        elif first_estimate:
            self.last_time, self.last_done = now, self.done  # the estimate was this prompt's line
        elif self.computed == 1 or (self.done - self.last_done >= self.every and now - self.last_time >= self.interval):
            self._line(now)

    def _revise(self, prompt_id: str, record: dict, took: float, now: float) -> None:
        """Re-price what is left from the prompt just done; say so when the projection moves a lot."""
        priced = self.pricing.seconds(prompt_id)
        self.pricing.update(prompt_id, record)
        if prompt_id in self.left_ids:
            self.left_ids.remove(prompt_id)
        left = self._left()
        projected = now - self.start + left
        if self.bar is not None:
            self.bar.set_postfix_str(f"about {format_duration(left)} left", refresh=False)
        moved = abs(projected - self.projected)
        if self.state.is_main_process and left > 0 and moved > max(REVISE_SHARE * self.projected, REVISE_SECONDS):
            self._say(f"{self.label}: revised after prompt {prompt_id!r} ({format_duration(took)}, priced at "
                      f"{format_duration(priced)}): about {format_duration(left)} left")
            self.projected = projected

    def _left(self) -> float:
        return self.pricing.total(self.left_ids) if self.pricing is not None else 0.0

    def _estimate(self, seconds: float) -> str:
        """The whole run's time (this machine, every process at this process's pace), from its first prompt."""
        processes = self.state.num_processes
        rest = math.ceil(self.run_pending / processes) * seconds
        before = self.run_total - self.run_pending
        text = f"{self.desc}: {self.run_total} prompts"
        if before:
            text += f" ({before} done before)"
        text += f", about {format_duration(rest)}{' more' if before else ''} on this machine at "
        text += f"{format_duration(seconds)} per prompt" + (f" on each of {processes} processes" if processes > 1 else "")
        look = max(1, int(LOOK_SECONDS * processes / seconds)) if seconds > 0 else self.run_total
        if rest > LONG_RUN_SECONDS and look < self.run_total:
            text += f"; {self.size_flag} {look}" if self.size_flag else f"; {look} prompts"
            text += " for a look"
        return text

    def _line(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        per_prompt = elapsed / self.computed
        text = f"{self.label}: {self.done}/{self.total} prompts, {format_duration(per_prompt)} per prompt, "
        if self.done >= self.total:
            text += f"done in {format_duration(elapsed)}"
        elif self.pricing is not None:
            text += f"about {format_duration(self._left())} left"
        else:
            text += f"about {format_duration(per_prompt * (self.total - self.done))} left"
        self._say(text)
        self.last_time, self.last_done = now, self.done

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _progress_seconds() -> float:
    value = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else 60.0
    except ValueError:
        return 60.0


def format_duration(seconds: float) -> str:
    """``0.42 s``, ``75 s``, ``12 min``, ``20 h 50 min``: a duration as people read it."""
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours >= 24:
        return f"{hours} h"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
