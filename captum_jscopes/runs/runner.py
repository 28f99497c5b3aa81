"""Dataset runner shared by the benchmarks: run a function over prompts on one or several processes,
keep the results on disk so an interrupted run resumes where it stopped.

Typical use::

    prompts = load_prompts(n=100)                       # captum_jscopes.runs.prompts: LAMBADA by default
    path = run_sharded(prompts, score_one, "out/speed", meta={"model": "smollm2", "n": 100})
    records = read_records(path)                        # one dict per prompt, in prompt order

Several processes share the prompts when launched with accelerate. On a machine without a GPU use
``accelerate launch --multi_gpu --num_processes 2 script.py`` (or ``torchrun --nproc_per_node 2 script.py``):
``accelerate launch --cpu --num_processes 2`` starts a single process unless an MPI host file is given.

Layout of ``out_dir``:

- ``run.json``: the caller's settings (``meta``); a rerun with other settings is refused, naming the settings that
  differ (:func:`settings_difference`).
- ``shard-{index:03d}-of-{num:03d}.jsonl``: the records written by process ``index`` of ``num``, one JSON
  object per line with the prompt ``"id"``; appended and fsync'd after every prompt.
- ``records.jsonl``: all records merged, deduplicated by id, in prompt order (written at the end).

Long runs say how long they will take: after the first prompt the main process prints a one-line estimate of
the whole run on stderr ("faithfulness: 1000 prompts, about 20 h 50 min on this machine at 75 s per prompt;
--n 20 for a look"). A caller that can price each prompt (``pricing``, e.g.
:class:`~captum_jscopes.runs.estimate.RunEstimate`: prompts of very different lengths) has its estimate said
before the first prompt instead, revised after each one. On a terminal a progress bar follows; when stderr is a
file (a batch job's log) each process prints a
line with done/total, the time per prompt and the time left every ``max(1, total // 100)`` prompts or every
60 s, whichever comes later (``JSCOPES_PROGRESS_SECONDS`` changes the 60 s), and a last line when it is done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from captum_jscopes.runs.progress import (  # noqa: F401 -- the progress names, also read from here
    LONG_RUN_SECONDS,
    LOOK_SECONDS,
    PROGRESS_SECONDS_ENV,
    REVISE_SECONDS,
    REVISE_SHARE,
    Pricing,
    Progress,
    format_duration,
)
from captum_jscopes.runs.prompts import Prompt

RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
_SHARD_GLOB = "shard-*-of-*.jsonl"


class PreviousRunError(ValueError):
    """``out_dir`` holds a run that this one must not resume (other settings, an
    unreadable ``run.json``, prompts that changed). ``str(err)`` names the Python
    way out (``overwrite=True``); a command line names its own flags with
    :meth:`describe`."""

    def __init__(self, problem: str) -> None:
        #: what is wrong, without the way out
        self.problem = problem
        super().__init__(self.describe())

    def describe(self, *, elsewhere: str = "another out_dir", overwrite: str = "overwrite=True") -> str:
        """The message, naming ``elsewhere`` (another folder) and ``overwrite``
        (discarding the previous run) the way the caller spells them."""
        return f"{self.problem}; use {elsewhere}, or pass {overwrite} to discard the previous results"


# --------------------------------------------------------------------------------------------------
# Running over prompts, sharded and resumable
# --------------------------------------------------------------------------------------------------


def run_sharded(
    prompts: Sequence[Prompt],
    fn: Callable[[Prompt], dict],
    out_dir: str | os.PathLike,
    *,
    desc: str = "prompts",
    state: Any = None,
    meta: dict | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    upgrade_meta: Callable[[dict], dict] | None = None,
    size_flag: str | None = None,
    pricing: "Pricing | None" = None,
    order: Sequence[str] | None = None,
) -> Path:
    """Run ``fn`` over ``prompts``, sharing them between processes, and merge the results.

    Every process of the launch calls this with the same arguments. Prompts not done yet (no record under
    their id in any ``shard-*.jsonl`` of ``out_dir``, whatever number of processes wrote it) are dealt
    round-robin, in prompt order, to the processes; each appends ``{"id": prompt.id, **fn(prompt)}`` to its
    own shard file and fsyncs it, so an interruption loses at most the prompt in flight, and a rerun
    (with any number of processes) only computes what is missing. A half-written last line left by a crash
    is cut from its shard when the next run starts (that prompt is computed again).

    Args:
        prompts: the prompts (unique ids), e.g. from ``load_prompts``.
        fn: ``fn(prompt) -> dict``, a JSON-serialisable record without an ``"id"`` key of its own
            (or with the prompt's id). An exception stops this process after the records written so far;
            in a multi-process launch the other processes then wait at the final barrier until the
            process-group timeout.
        out_dir: output folder, created if missing.
        desc: label of the estimate, the progress bar and the progress lines (default ``"prompts"``).
        state: object with ``process_index``, ``num_processes``, ``is_main_process`` and
            ``wait_for_everyone()`` (default ``None``: ``accelerate.PartialState()``, which is a single
            process without a launcher). For runs whose processes may wait on each other longer than the
            default 30 minutes, pass ``PartialState(timeout=datetime.timedelta(hours=...))``.
        meta: settings of the run (JSON-serialisable dict, default ``None`` = ``{}``), stored in
            ``run.json``; a rerun into the same folder with different settings raises
            :class:`PreviousRunError` (a ``ValueError``).
        overwrite: delete the shards, ``records.jsonl`` and ``run.json`` of a previous run first
            (default ``False``: resume it).
        progress: the progress report on stderr. ``None`` (default) or ``True``: after the first prompt, the
            main process prints an estimate of the whole run; then a bar when stderr is a terminal, else (a
            batch job's log) a line with done/total, time per prompt and time left every
            ``max(1, total // 100)`` prompts or every 60 s, whichever comes later, and a last one when done.
            ``False``: nothing.
        upgrade_meta: turns a ``run.json`` written by an earlier version into today's form before it is
            compared with ``meta`` (e.g. a renamed key), so that such a run resumes. Default: compared as is.
        size_flag: how the caller's user asks for fewer prompts (e.g. ``"--n"`` for a command line), named
            in the estimate of a long run: "--n 20 for a look". Default: "20 prompts for a look".
        pricing: prices each prompt before it runs (:class:`Pricing`, e.g.
            :class:`~captum_jscopes.runs.estimate.RunEstimate`): then the main process says its estimate
            before the first prompt (``pricing.announce``) instead of after it, learns from each prompt done
            (``pricing.update``), gives the time left as the price of the prompts left, and says a revised
            estimate when it moves by more than a quarter. Default None: every prompt costs what the first
            one took.
        order: the ids ``records.jsonl`` is ordered by; it then holds every record of the shards, also
            those of earlier runs over other prompts (other slices of one source), the ids of ``order``
            first, in its order, then the others in shard order. Default None: the records of
            ``prompts`` only, in their order.

    Returns:
        path of ``out_dir/records.jsonl``: one record per prompt, in prompt order (see ``order``), on
        every process (all return after the main process has written it).
    """
    prompts = _check_prompts(prompts)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    meta = _normalise_meta(meta)
    state = _default_state() if state is None else state
    out_dir = Path(out_dir)
    _start_run(out_dir, meta, overwrite, state, upgrade_meta)

    done_ids = set(read_shard_records(out_dir))
    # Nobody appends before every process has listed what is done, so all see the same pending list and
    # the round-robin deal below is consistent.
    state.wait_for_everyone()

    own_shard = out_dir / f"shard-{state.process_index:03d}-of-{state.num_processes:03d}.jsonl"
    pending = [p for p in prompts if p.id not in done_ids]
    mine = pending[state.process_index :: state.num_processes]
    resumed = _share(len(prompts) - len(pending), state.process_index, state.num_processes)
    report = Progress(
        desc, state, total=_share(len(prompts), state.process_index, state.num_processes), resumed=resumed,
        run_total=len(prompts), run_pending=len(pending), size_flag=size_flag, enabled=progress is not False,
        pricing=pricing, pending=[p.id for p in pending], mine=[p.id for p in mine],
    )
    _run_and_append(mine, fn, own_shard, report)

    state.wait_for_everyone()
    records_path = out_dir / RECORDS_FILE
    if state.is_main_process:
        _merge_shards(out_dir, prompts, records_path, order)
    state.wait_for_everyone()
    return records_path


def _start_run(
    out_dir: Path, meta: dict, overwrite: bool, state: Any, upgrade_meta: Callable[[dict], dict] | None = None
) -> None:
    """Check or reset the previous run in ``out_dir``, record ``meta`` and repair the shards (all processes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every process checks run.json itself so that all of them raise together instead of some of them
    # waiting forever at the barrier below.
    if not overwrite:
        _check_run_settings(out_dir, meta, upgrade_meta)
    if state.is_main_process:
        if overwrite:
            _clear_previous_run(out_dir)
        # An old merged file would look like the result of this run until it is merged again.
        (out_dir / RECORDS_FILE).unlink(missing_ok=True)
        write_json_atomic(out_dir / RUN_FILE, meta)
        # No process writes before the barrier, so the shards can be repaired safely here.
        for shard in out_dir.glob(_SHARD_GLOB):
            _drop_partial_tail(shard)
    state.wait_for_everyone()


def _default_state() -> Any:
    """``accelerate.PartialState``, made to see a multi-process CPU launch (torchrun, accelerate --multi_gpu)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Without cpu=True, PartialState treats a launch of several CPU processes as one single process each
    # (every process would then compute every prompt); cpu=True changes nothing else on a CPU-only machine.
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not has_accelerator)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != world_size:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but accelerate's PartialState sees {state.num_processes} process(es); "
            "it was probably created earlier without cpu=True on a CPU-only launch: create "
            "PartialState(cpu=True) first, or pass state="
        )
    return state


def _check_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    for p in prompts:
        if not isinstance(p, Prompt):
            raise TypeError(f"prompts must hold Prompt objects (see load_prompts), got {type(p).__name__}")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"prompt ids must be unique, duplicated: {duplicates}")
    return prompts


def _normalise_meta(meta: dict | None) -> dict:
    """JSON round trip, so that e.g. a tuple and the list read back from run.json compare equal."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must be JSON-serialisable: {e}") from e


def _check_run_settings(out_dir: Path, meta: dict, upgrade_meta: Callable[[dict], dict] | None = None) -> None:
    run_file = out_dir / RUN_FILE
    if not run_file.exists():
        return
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PreviousRunError(f"{run_file} is unreadable ({e})") from e
    if upgrade_meta is not None:
        previous = _normalise_meta(upgrade_meta(previous))
    if previous != meta:
        raise PreviousRunError(f"{run_file} holds other settings than this run: {settings_difference(previous, meta)}")


def settings_difference(stored: dict, asked: dict) -> str:
    """The settings that differ between a stored ``run.json`` and this run's,
    one ``name: stored value (stored) vs asked value (asked)`` each, joined by
    "; " (``rules: lrp (stored) vs gradient (asked)``). Nested dicts
    are compared key by key and named by their own keys (by the dotted path
    where a name occurs twice); a key only one side has is "not set" on the other."""
    flat_stored, flat_asked = _flatten(stored), _flatten(asked)
    parts = []
    for key in [*flat_stored, *(k for k in flat_asked if k not in flat_stored)]:
        old, new = flat_stored.get(key, _NOT_SET), flat_asked.get(key, _NOT_SET)
        if old != new:
            parts.append(f"{key}: {_shown(old)} (stored) vs {_shown(new)} (asked)")
    return "; ".join(parts) or "the same settings in another form"


_NOT_SET = object()


def _flatten(data: dict) -> dict[str, Any]:
    """``{"settings": {"scopes": [...]}}`` -> ``{"scopes": [...]}``; the dotted path where a leaf name repeats."""
    leaves: list[tuple[tuple[str, ...], Any]] = []

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, dict) and (value or not path):
            for key, inner in value.items():
                walk(inner, (*path, str(key)))
        else:
            leaves.append((path, value))

    walk(data, ())
    names = [path[-1] for path, _ in leaves]
    return {(path[-1] if names.count(path[-1]) == 1 else ".".join(path)): value for path, value in leaves}


def _shown(value: Any) -> str:
    if value is _NOT_SET:
        return "not set"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value) if value else "none"
    return json.dumps(value)


def _clear_previous_run(out_dir: Path) -> None:
    # Only the runner's own files: out_dir may hold other things of the caller's.
    for path in [*out_dir.glob(_SHARD_GLOB), out_dir / RECORDS_FILE, out_dir / RUN_FILE]:
        path.unlink(missing_ok=True)


def _share(count: int, index: int, num: int) -> int:
    """Number of items process ``index`` of ``num`` gets when ``count`` items are dealt round-robin."""
    return count // num + (index < count % num)


def _run_and_append(prompts: list[Prompt], fn: Callable[[Prompt], dict], shard: Path, report: Progress) -> None:
    """Compute and append one record per prompt to ``shard``, durably, reporting progress."""
    with report, shard.open("a", encoding="utf-8") as f:
        for prompt in prompts:
            record = fn(prompt)
            line = _record_line(prompt, record)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            report.update(prompt.id, record)


def _record_line(prompt: Prompt, result: Any) -> str:
    if not isinstance(result, dict):
        raise TypeError(f"fn must return a dict, got {type(result).__name__} for prompt {prompt.id!r}")
    if result.get("id", prompt.id) != prompt.id:
        raise ValueError(f"fn returned id {result['id']!r} for prompt {prompt.id!r}; leave 'id' to the runner")
    record = {"id": prompt.id, **result}
    try:
        # json.dumps escapes newlines inside strings, so one record is always exactly one line.
        return json.dumps(record, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as e:
        raise TypeError(f"record of prompt {prompt.id!r} is not JSON-serialisable: {e}") from e


# --------------------------------------------------------------------------------------------------
# Reading and merging records
# --------------------------------------------------------------------------------------------------


def read_records(out_dir_or_file: str | os.PathLike) -> list[dict]:
    """Records of a finished run.

    Args:
        out_dir_or_file: the ``out_dir`` given to ``run_sharded`` (its ``records.jsonl`` is read) or a
            JSONL file.

    Returns:
        one dict per line, in file order (prompt order for ``records.jsonl``).

    Raises:
        ValueError: missing file, or a line that is not a JSON object (the message gives the line).
    """
    path = Path(out_dir_or_file)
    if path.is_dir():
        path = path / RECORDS_FILE
    if not path.is_file():
        raise ValueError(f"records file {path} not found (has run_sharded finished?)")
    records, partial_tail = _parse_record_lines(path.read_bytes(), path)
    if partial_tail:
        raise ValueError(f"records file {path}: last line is incomplete")
    return records


def _parse_record_lines(data: bytes, path: Path) -> tuple[list[dict], bool]:
    """Parse JSONL bytes; a last line without its newline is reported, not parsed (it may be half-written).

    Returns:
        (records, whether an incomplete last line was found).
    """
    *lines, tail = data.split(b"\n")
    records = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}, line {line_no}: not valid JSON ({e})") from e
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise ValueError(f"{path}, line {line_no}: expected a JSON object with a string 'id'")
        records.append(record)
    return records, bool(tail.strip())


def read_shard_records(out_dir: Path) -> dict[str, dict]:
    """Records of every shard in ``out_dir`` by id (first one kept), skipping half-written last lines."""
    by_id: dict[str, dict] = {}
    for shard in sorted(out_dir.glob(_SHARD_GLOB)):
        records, _ = _parse_record_lines(shard.read_bytes(), shard)
        for record in records:
            by_id.setdefault(record["id"], record)
    return by_id


def _drop_partial_tail(shard: Path) -> None:
    """Cut a half-written last line (a crash mid-write) so that the next append starts on a fresh line."""
    if not shard.exists():
        return
    data = shard.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with shard.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def _merge_shards(out_dir: Path, prompts: list[Prompt], records_path: Path, order: Sequence[str] | None = None) -> None:
    by_id = read_shard_records(out_dir)
    missing = [p.id for p in prompts if p.id not in by_id]
    if missing:
        raise RuntimeError(
            f"{len(missing)} prompt(s) have no record in {out_dir} (first: {missing[:5]}); rerun to complete them"
        )
    if order is None:
        ids = [p.id for p in prompts]
    else:  # every record: those of `order` in its order, then the rest as the shards hold them
        ids = list(dict.fromkeys(i for i in [*order, *by_id] if i in by_id))
    lines = "".join(json.dumps(by_id[i], ensure_ascii=False) + "\n" for i in ids)
    write_text_atomic(records_path, lines)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
