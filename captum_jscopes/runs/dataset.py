"""Attribute a whole dataset: every prompt, every chosen scope, sharded over
processes and resumable (what ``jscopes attribute-dataset`` runs).

    from captum_jscopes import load_model
    from captum_jscopes.runs.dataset import attribute_dataset, read_results

    model, tokenizer = load_model()
    summary = attribute_dataset(model, tokenizer, "prompts.jsonl", "out/", scopes=("semantic",), stop=100)
    results = read_results("out/")          # {prompt id: {scope: ScopeResult}}

Each prompt is explained with :func:`captum_jscopes.runs.explain.explain` (the same
call as ``jscopes attribute``), and the prompts go through the benchmarks'
runner (:func:`captum_jscopes.runs.runner.run_sharded`): every process of a
launch (torchrun, accelerate launch) takes its share, each finished prompt is one
fsync'd line of its process's shard file, so a killed run loses at most the
prompt in flight and a rerun computes only what is missing, and ``run.json``
refuses a rerun with other settings. The settings are
:class:`~captum_jscopes.runs.dataset_settings.DatasetSettings`, the reports are
made by :mod:`captum_jscopes.runs.dataset_reports`, and with ``progress=True`` the
run is priced first (:mod:`captum_jscopes.runs.estimate`).

Layout of ``out_dir``::

    run.json                 the settings (model, dtype, scopes, fields, chat, ...)
    shard-000-of-001.jsonl   one record per finished prompt, per process (the resumable state)
    records.jsonl            all records of the folder (every slice run into it), in prompt order
    summary.json summary.md  top tokens per prompt and scope, seconds per prompt
    index.html               one row per prompt, linking pages/<prompt>.html
    pages/<prompt>.html      the prompt's token map for every scope

A record is ``{"id", "text", "target", "seconds": {scope: s}, "results": {scope:
ScopeResult.to_dict()}}``, or ``{"id", "text", "target", "error"}`` for a prompt
that cannot be explained (too long for the model, a target outside the
vocabulary, ...): it is kept so that a rerun does not retry it forever.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from captum_jscopes.runs.dataset_reports import page_name, read_results, write_reports
from captum_jscopes.runs.dataset_settings import ALL_SCOPES, DatasetSettings
from captum_jscopes.runs.estimate import measure_run
from captum_jscopes.runs.explain import explain, model_name, settings_of
from captum_jscopes.runs.prompts import Prompt, load_prompts
from captum_jscopes.runs.runner import (
    RUN_FILE,
    PreviousRunError,
    read_records,
    read_shard_records,
    run_sharded,
    settings_difference,
)

__all__ = [
    "DatasetSettings",
    "ALL_SCOPES",
    "PreviousRunError",
    "RECORD_FORMAT",
    "attribute_dataset",
    "attribute_prompt",
    "select_prompts",
    "upgrade_run_meta",
    "read_results",
    "write_reports",
    "page_name",
    "device_for_process",
    "is_main_process",
]

#: Version of the record layout, stored in run.json: a folder written by another
#: layout is refused instead of being resumed.
RECORD_FORMAT = 1
#: the run's label in its estimate and progress lines
DESC = "attribute-dataset"

#: Where prompts come from: a file, a shipped set or hub name, or the prompts themselves.
Source = Union[str, os.PathLike, Sequence[Prompt]]


# ----------------------------------------------------------------------------- running


def select_prompts(
    source: Source, settings: Optional[DatasetSettings] = None, *, start: int = 0, stop: Optional[int] = None
) -> list[Prompt]:
    """The prompts ``source[start:stop]``, read and checked (cheap: no model needed,
    so a command can report bad input before it loads one).

    Args:
        source: a ``.json`` file (list of objects), a ``.jsonl`` file (one object per
            line), a shipped set ("lambada", "opus_de_en"), ``"hf:NAME[:SPLIT]"`` (needs
            the ``datasets`` package), or a list of :class:`Prompt` (used as given).
            See :func:`captum_jscopes.runs.prompts.load_prompts`.
        settings: its ``text_field`` and ``target_field`` say which fields are read.
            Default: :class:`DatasetSettings` defaults.
        start, stop: positions in the source, as in ``prompts[start:stop]``
            (0 <= start < stop); default all. A ``stop`` past the end is allowed.
    Returns:
        list of Prompt; ids are the source's "id" field, else the position in the
        whole source (so slices of one source never share an id). An entry that
        is no prompt (an empty text, no text or target field, a JSONL line that is
        not JSON) is a Prompt with its ``error`` set (``"p.jsonl, line 2: empty
        text"``): the run records it as that prompt's error and goes on.
    Raises:
        ValueError: a bad slice, a missing / empty / unreadable source, duplicate
            ids, no prompt in the slice, or no entry of the slice that is a prompt
            (a wrong ``text_field``, say: the message gives the first entry's problem).
        ImportError: a hub dataset without the ``datasets`` package.
    """
    settings = DatasetSettings.of(settings)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop <= start):
        raise ValueError(f"stop must be None or an integer > start ({start}), got {stop!r}")
    if isinstance(source, (list, tuple)):
        prompts = list(source)
        if not all(isinstance(p, Prompt) for p in prompts):
            raise TypeError("a list source must hold Prompt objects (see captum_jscopes.runs.prompts.load_prompts)")
        selected = prompts[start:stop]
        if not selected:
            raise ValueError(f"no prompt in [{start}:{'' if stop is None else stop}] of {len(prompts)} prompts")
        return _some_valid(selected)
    n = None if stop is None else stop - start
    return _some_valid(load_prompts(source, n, offset=start, text_field=settings.text_field,
                                    target_field=settings.target_field, invalid="keep"))


def _some_valid(prompts: list[Prompt]) -> list[Prompt]:
    """``prompts``, unless none of them is a prompt: then a ValueError with the first one's problem."""
    invalid = [p for p in prompts if getattr(p, "error", None)]
    if invalid and len(invalid) == len(prompts):
        every = f" (and so is every other entry, {len(prompts)} in all)" if len(prompts) > 1 else ""
        raise ValueError(f"{invalid[0].error}{every}")
    return prompts


def _source_order(source: Source, settings: DatasetSettings, prompts: list[Prompt], out_dir: Path) -> list[str]:
    """The order of records.jsonl, which also holds the records of earlier runs over
    other slices: the ids of the whole source in its order. A list of prompts is
    the whole source it knows; the ids of the records in ``out_dir`` that it lacks
    are then put in numeric order with it when every id is a whole number (the
    positions of one file), else after it."""
    if not isinstance(source, (list, tuple)):
        try:
            every = load_prompts(source, text_field=settings.text_field, target_field=settings.target_field,
                                 invalid="keep")
            return [p.id for p in every]
        except Exception:  # noqa: BLE001 -- read a moment ago; ordered as a list of prompts then
            source = prompts
    ids = list(dict.fromkeys([*(p.id for p in source), *(read_shard_records(out_dir) if out_dir.is_dir() else {})]))
    if all(i.isdecimal() for i in ids):
        return sorted(ids, key=int)
    return ids


def attribute_prompt(
    model: Any, tokenizer: Any, prompt: Prompt, settings: DatasetSettings, *, progress: bool = False
) -> dict:
    """The record of one prompt: every scope of ``settings`` on ``prompt.text``,
    explaining ``prompt.target`` or, when it is None, the model's prediction.
    ``progress`` shows :func:`~captum_jscopes.runs.explain.explain`'s bars (a long
    target's tokens, the Fisher probes) while the prompt is worked on.

    Returns:
        ``{"text", "target", "seconds": {scope: wall seconds of explain()},
        "results": {scope: ScopeResult.to_dict()}}``, or ``{"text", "target",
        "error": "ValueError: ..."}`` when the prompt cannot be explained (too
        long for the model, a target outside the vocabulary, only special
        tokens, or any other exception raised while it was worked on), or
        ``{"text", "target", "error": "invalid prompt: p.jsonl, line 2: empty
        text", "invalid": true}`` for an entry of the source that is no prompt
        (``prompt.error``): one prompt that fails does not stop the run. Only an interruption
        (KeyboardInterrupt, SystemExit) does; a rerun resumes after the last
        finished prompt.
    """
    record: dict = {"text": prompt.text, "target": prompt.target}
    if getattr(prompt, "error", None):  # the source's entry is no prompt: its problem is the record
        return {**record, "error": f"invalid prompt: {prompt.error}", "invalid": True}
    seconds, results = {}, {}
    try:
        for scope in settings.scopes:
            began = time.perf_counter()
            result = explain(
                model,
                tokenizer,
                prompt.text,
                scope,
                prompt.target,
                chat=settings.chat,
                keep_special=settings.keep_special,
                next=settings.next,
                progress=progress,
                settings=settings.scope_settings,
            )
            seconds[scope] = time.perf_counter() - began
            results[scope] = result.to_dict()  # a NaN score is a ValueError here, recorded like the others
    except Exception as err:  # noqa: BLE001 -- any failure is this prompt's record, not the end of the run
        return {**record, "error": f"{type(err).__name__}: {err}"}
    return {**record, "seconds": seconds, "results": results}


def attribute_dataset(
    model: Any,
    tokenizer: Any,
    source: Source,
    out_dir: Union[str, os.PathLike],
    settings: Optional[DatasetSettings] = None,
    *,
    start: int = 0,
    stop: Optional[int] = None,
    overwrite: bool = False,
    state: Any = None,
    progress: bool = False,
    **options: Any,
) -> Optional[dict]:
    """Attribute every prompt of ``source[start:stop]`` with every chosen scope.

    Every process of a launch calls this with the same arguments; the prompts are
    shared between them, and an interrupted run (even a SIGKILL) resumes where it
    stopped when called again with the same settings.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer (not modified).
        source: prompts file, shipped set, ``"hf:NAME[:SPLIT]"`` or list of Prompt
            (see :func:`select_prompts`).
        out_dir: output folder (created); see the module docstring for its layout.
        settings: a :class:`DatasetSettings`; ``options`` override its fields, e.g.
            ``scopes=("semantic",), target_field="answer"``. Default: the defaults.
        start, stop: the slice of the source (default: all).
        overwrite: discard a previous run in ``out_dir`` (its shards, records and
            run.json) instead of resuming it. Default False.
        state: accelerate-like process state for the runner (default: from the
            launch environment; see ``run_sharded``).
        progress: tqdm bars on stderr: one over the prompts and, inside each
            prompt, the tokens of a multi-token target and the Fisher probes
            (they close when the prompt is done). Default False, as everywhere
            in the library; ``jscopes attribute-dataset`` turns them on.
    Returns:
        on the main process, the summary also written to ``summary.json``:
        ``{"model", "dtype", "settings", "n_prompts", "n_errors", "n_invalid"
        (entries of the source that are no prompt, counted in n_errors too),
        "n_hints", "computed" (prompts of this call computed), "resumed"
        (prompts of this call found done), "seconds": {"total", "per_prompt",
        "per_scope": {scope: mean}}, "prompts": [per prompt: "id", "page", "text",
        "target", and "explains", "prob", "prediction", "hint", "seconds",
        "seconds_per_scope", "top_tokens" {scope: [[index, token text, score],
        ...]} (top 5), or "error" (and "invalid")]}``; None on the other
        processes. The summary, like ``records.jsonl``, covers every record in
        ``out_dir``: those of earlier calls over other slices of the source too,
        in the source's order.
    Raises:
        ValueError: bad settings or input.
        PreviousRunError (a ValueError): other settings than the run already in
            ``out_dir`` (a ``run.json`` of an earlier version is read in today's
            form, :meth:`DatasetSettings.upgrade_dict`), or prompts whose text or
            target differ from the ones that run attributed under the same ids
            (the source changed).
    """
    settings = DatasetSettings.of(settings, **options)
    prompts = select_prompts(source, settings, start=start, stop=stop)
    out_dir = Path(out_dir)
    meta = {
        "command": "attribute-dataset",
        "format": RECORD_FORMAT,
        "model": model_name(model),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "settings": settings.to_dict(),
    }
    done = set() if overwrite else _check_previous_run(out_dir, prompts, meta)
    resumed = sum(prompt.id in done for prompt in prompts)
    pricing = None
    pending = [prompt for prompt in prompts if prompt.id not in done]
    if progress and pending and is_main_process(state):
        # priced before the first prompt: each prompt by its length, each scope by its measured passes
        print(f"{DESC}: timing the model's passes for an estimate ...", file=sys.stderr, flush=True)
        pricing = measure_run(model, tokenizer, pending, settings)
    records_path = run_sharded(
        prompts,
        lambda prompt: attribute_prompt(model, tokenizer, prompt, settings, progress=progress),
        out_dir,
        desc=DESC,
        state=state,
        meta=meta,
        overwrite=overwrite,
        progress=progress,
        upgrade_meta=upgrade_run_meta,
        pricing=pricing,
        order=_source_order(source, settings, prompts, out_dir),
    )
    if not is_main_process(state):
        return None  # one process writes the reports
    return write_reports(out_dir, read_records(records_path), meta, resumed=resumed, computed=len(pending))


def upgrade_run_meta(meta: dict) -> dict:
    """A ``run.json`` of an attribute-dataset run in today's form (its settings
    through :meth:`DatasetSettings.upgrade_dict`), so that a run started by an
    earlier version resumes; anything else is returned unchanged."""
    if not isinstance(meta, dict) or meta.get("command") != "attribute-dataset":
        return meta
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        return meta
    return {**meta, "settings": DatasetSettings.upgrade_dict(settings)}


def _check_previous_run(out_dir: Path, prompts: list[Prompt], meta: dict) -> set[str]:
    """The ids of ``prompts`` that a previous run in ``out_dir`` already did. A
    PreviousRunError when that run had other settings (naming only the settings
    that differ, :func:`settings_difference`, the scopes' defaults filled in) or
    one of the prompts had another text or target under the same id (run.json only
    holds the settings, not the data, so a changed file would otherwise be mixed
    silently with the old results)."""
    run_file = out_dir / RUN_FILE
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        previous = None
    except (OSError, ValueError):
        return set()  # run_sharded reports the unreadable run.json
    # The JSON round trip makes meta comparable with what run.json reads back.
    asked = json.loads(json.dumps(meta))
    if previous is not None:
        stored = upgrade_run_meta(previous)
        if stored != asked:
            stored, asked = _with_defaults(stored, asked)
            raise PreviousRunError(f"{run_file} holds other settings than this run: "
                                   f"{settings_difference(stored, asked)}")
    done = read_shard_records(out_dir) if out_dir.is_dir() else {}
    for prompt in prompts:
        record = done.get(prompt.id)
        if record is not None and (record.get("text"), record.get("target")) != (prompt.text, prompt.target):
            raise PreviousRunError(
                f"{out_dir} holds a result for prompt {prompt.id!r} with another text or target than the "
                "source gives now (the source changed since that run)"
            )
    return {prompt.id for prompt in prompts if prompt.id in done}


def _with_defaults(stored: dict, asked: dict) -> tuple[dict, dict]:
    """Two run.json contents with the options of the scopes both run filled in with
    the scopes' defaults (run.json keeps only the others), so that a difference reads
    ``rules: lrp (stored) vs gradient (asked)``, not "not set"."""
    sides = [stored.get("settings"), asked.get("settings")]
    if not all(isinstance(side, dict) and isinstance(side.get("scopes"), list) for side in sides):
        return stored, asked
    filled = [dict(side) for side in sides]
    for scope in [name for name in sides[0]["scopes"] if name in sides[1]["scopes"]]:
        try:
            defaults = {setting.key: setting.default for setting in settings_of(scope)}
        except ValueError:  # a scope that is not registered now
            continue
        for side in filled:
            for key, value in defaults.items():
                side.setdefault(key, value)
    return {**stored, "settings": filled[0]}, {**asked, "settings": filled[1]}


def is_main_process(state: Any = None) -> bool:
    """Whether this is the process that writes reports and prints: ``state.is_main_process``,
    or without a state the launch's ``RANK`` (0 or unset). The runner makes its default
    state inside ``run_sharded``, and that state agrees with ``RANK``."""
    return os.environ.get("RANK", "0") == "0" if state is None else bool(state.is_main_process)


def device_for_process(device: Optional[str]) -> Optional[str]:
    """``"cuda"`` becomes ``"cuda:LOCAL_RANK"`` inside a multi-process launch
    (torchrun / accelerate set ``LOCAL_RANK``), so that each process takes its own
    GPU; anything else is returned unchanged."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None:
        return f"cuda:{int(local_rank)}"
    return device
