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
refuses a rerun with other settings.

Layout of ``out_dir``::

    run.json                 the settings (model, dtype, scopes, fields, chat, ...)
    shard-000-of-001.jsonl   one record per finished prompt, per process (the resumable state)
    records.jsonl            all records, in prompt order (merged at the end)
    summary.json summary.md  top tokens per prompt and scope, seconds per prompt
    index.html               one row per prompt, linking pages/<prompt>.html
    pages/<prompt>.html      the prompt's token map for every scope

A record is ``{"id", "text", "target", "seconds": {scope: s}, "results": {scope:
ScopeResult.to_dict()}}``, or ``{"id", "text", "target", "error"}`` for a prompt
that cannot be explained (too long for the model, a target outside the
vocabulary, ...): it is kept so that a rerun does not retry it forever.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from captum_jscopes.core.continuation import NEXT_UNITS, check_next
from captum_jscopes.core.settings import Settings
from captum_jscopes.runs.estimate import measure_run
from captum_jscopes.runs.prompts import Prompt, load_prompts
from captum_jscopes.runs.runner import (
    RUN_FILE,
    PreviousRunError,
    read_records,
    read_shard_records,
    run_sharded,
    settings_difference,
    write_json_atomic,
    write_text_atomic,
)
from captum_jscopes.runs.explain import (
    explain,
    find_setting,
    model_name,
    resolve_scope_settings,
    scope_options,
    settings_of,
)
from captum_jscopes.scopes.registry import SCOPES, scope_class
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.display.html import render_html
from captum_jscopes.core.text import display_token

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
TOP_K = 5
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
INDEX_HTML = "index.html"
PAGES_DIR = "pages"

#: the ``scopes`` value (and ``--scope`` choice) that stands for every scope
ALL_SCOPES = "all"
#: the run's label in its estimate and progress lines
DESC = "attribute-dataset"

#: Where prompts come from: a file, a shipped set or hub name, or the prompts themselves.
Source = Union[str, os.PathLike, Sequence[Prompt]]


# ----------------------------------------------------------------------------- settings


class _ScopeChoices:
    """The ``--scope`` choices: the registry's names and "all", read when a parser
    is built, so that a scope registered after this module's import is offered too."""

    def __iter__(self) -> Iterator[str]:
        return iter((*SCOPES, ALL_SCOPES))


@dataclass(frozen=True, init=False)
class DatasetSettings(Settings):
    """What is computed for every prompt; stored in ``run.json``, so a rerun into
    the same folder with other settings is refused.

    Each field's ``metadata`` holds its command-line flag and help text:
    ``jscopes attribute-dataset`` makes its options from them
    (:func:`captum_jscopes.cli.flags.add_dataclass_flags`), so a new setting is
    one field here. The scopes' own options have their flags made from the
    scopes' ``Options`` (:mod:`captum_jscopes.cli.scope_flags`).

    Attributes:
        scopes: scope names of :data:`captum_jscopes.scopes.registry.SCOPES` (a single name
            is accepted, and "all" means every scope); kept in the registry's order,
            duplicates dropped. Default: all of them.
        text_field: field (column) of the source holding the prompt. Default "text".
        target_field: field holding the continuation to explain (e.g. " Paris").
            Default None: the model's top-1 next token is explained.
        chat: wrap each prompt in the chat template; only the user's tokens are
            scored. Default False.
        keep_special: also show and score special tokens (BOS, chat markers).
            Default False.
        next: for prompts without a target, what of the model's greedy
            continuation is explained: "token" (default), "char" or "word"
            (:func:`captum_jscopes.core.continuation.continuation`).
        scope_settings: the scopes' own options as settings ``{"<scope>_<option>":
            value}`` (e.g. ``{"fisher_k": 4, "semantic_rules": "lrp"}``),
            every option of every registered scope's ``Options`` included. Checked
            and kept in today's names, and only where they differ from the scope's
            default (:func:`~captum_jscopes.runs.explain.resolve_scope_settings`).
            They can also be given as keywords, ``DatasetSettings(fisher_k=4)``
            (a scope's deprecated option name, ``<scope>_<old name>``, with a
            DeprecationWarning), and read as attributes, ``settings.fisher_k``
            (the scope's default when not set). Stored flat in ``run.json``, only
            for the chosen scopes, so that they do not block other reruns. Default: none.
    """

    scopes: tuple[str, ...] = field(
        default=tuple(SCOPES),
        metadata={
            "flag": "--scope",
            "choices": _ScopeChoices(),
            "help": "a scope to run; repeat for several (default: all)",
        },
    )
    text_field: str = field(
        default="text", metadata={"flag": "--text-field", "metavar": "NAME", "help": "field holding the prompt (default: text)"}
    )
    target_field: Optional[str] = field(
        default=None,
        metadata={
            "flag": "--target-field",
            "metavar": "NAME",
            "help": "field holding the continuation to explain, with its leading space (e.g. ' Paris'); "
            "default: the model's top-1 prediction",
        },
    )
    chat: bool = field(
        default=False,
        metadata={"flag": "--chat", "help": "wrap each prompt in the chat template; only the user's tokens are scored"},
    )
    keep_special: bool = field(
        default=False,
        metadata={
            "flag": "--keep-special",
            "help": "also show and score special tokens (BOS, chat markers); by default they are left out, "
            "as attention sinks they would dominate the map",
        },
    )
    next: str = field(
        default="token",
        metadata={
            "flag": "--next",
            "choices": NEXT_UNITS,
            "help": "without a target, explain the model's next token (default), or its greedy continuation "
            "on to the end of a character (char: no byte fragment) or of a word (word: to the next space or "
            "punctuation, at most 8 tokens)",
        },
    )
    scope_settings: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, *args: Any, **settings: Any) -> None:
        """The fields, by position or keyword, and the scopes' settings as
        keywords (``semantic_rules="lrp"``): merged into ``scope_settings``."""
        fields = dataclasses.fields(self)
        if len(args) > len(fields):
            raise TypeError(f"DatasetSettings takes at most {len(fields)} positional arguments, got {len(args)}")
        given = dict(zip((f.name for f in fields), args))
        twice = sorted(set(given) & set(settings))
        if twice:
            raise TypeError(f"DatasetSettings got several values for {', '.join(twice)}")
        given.update(settings)
        names = {f.name for f in fields}
        scoped = {**dict(given.pop("scope_settings", None) or {}),
                  **{key: given.pop(key) for key in list(given) if key not in names}}
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, given.get(f.name, default))
        # stacklevel 3: a warning points at the caller of DatasetSettings(...)
        object.__setattr__(self, "scope_settings", resolve_scope_settings(scoped, stacklevel=3))
        self._check()

    def _check(self) -> None:
        chosen = (self.scopes,) if isinstance(self.scopes, str) else tuple(self.scopes)
        if not chosen:
            raise ValueError("scopes is empty: choose at least one of " + ", ".join(SCOPES))
        if ALL_SCOPES in chosen:
            chosen = tuple(SCOPES)
        for name in chosen:
            scope_class(name)  # ValueError naming the known scopes
        # Registry order, so that the same choice in another order is the same run.json.
        object.__setattr__(self, "scopes", tuple(name for name in SCOPES if name in chosen))
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"text_field must be a non-empty string, got {self.text_field!r}")
        if self.target_field is not None and (not isinstance(self.target_field, str) or not self.target_field):
            raise ValueError(f"target_field must be None or a non-empty string, got {self.target_field!r}")
        for name in ("chat", "keep_special"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        for name in self.scopes:
            _check_scope_options(name, self.scope_settings)
        check_next(self.next)

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are no field: a scope's setting, <scope>_<option>
        if not name.startswith("_"):
            try:
                setting, _ = find_setting(name)
            except KeyError:
                pass
            else:
                return vars(self).get("scope_settings", {}).get(setting.key, setting.default)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "scope_settings")
                    + tuple(sorted(self.scope_settings.items())))

    @classmethod
    def of(cls, settings: Optional["DatasetSettings"] = None, **overrides: Any) -> "DatasetSettings":
        """``settings`` (default: the defaults) with ``overrides`` applied: fields,
        and scopes' settings (``semantic_rules="lrp"``), which replace the ones
        ``settings`` holds; a TypeError names a keyword that is neither."""
        names = {f.name for f in dataclasses.fields(cls)}
        scoped = {key: overrides.pop(key) for key in list(overrides) if key not in names and _names_a_setting(key)}
        made = super().of(settings, **overrides)
        if not scoped:
            return made
        # stacklevel 3: a warning points at the caller of of()
        changed = resolve_scope_settings(scoped, drop_defaults=False, stacklevel=3)
        return dataclasses.replace(made, scope_settings={**made.scope_settings, **changed})

    def to_dict(self) -> dict:
        """The settings as stored in ``run.json`` (JSON types): the fields, and the
        scopes' settings flat, ``<scope>_<option>``, only those of the chosen scopes
        (so that they do not block other reruns)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                if f.name != "scope_settings"}
        data["scopes"] = list(self.scopes)
        for key, value in self.scope_settings.items():
            if find_setting(key)[0].scope.name in self.scopes:
                data[key] = value
        return data

    @staticmethod
    def upgrade_dict(data: dict) -> dict:
        """Settings as an earlier version stored them (``to_dict``) in today's
        form: a scope's deprecated option name (``<scope>_<old name>``; the Fisher
        Scope's estimator was stored under its former name) read as its option's,
        and values equal to the scope's default (earlier versions stored the Fisher
        Scope's estimator also when it was the default) left out, as
        :meth:`to_dict` leaves them out now. ``data`` is not changed; settings that
        cannot be read are returned as they are (and then differ from any run's)."""
        names = {f.name for f in dataclasses.fields(DatasetSettings)}
        scoped = {key: value for key, value in data.items() if key not in names}
        try:
            upgraded = resolve_scope_settings(scoped, strict=False, warn=False)
        except (TypeError, ValueError):
            return data
        # runs from before "next" existed explained the next token
        return {"next": "token", **{key: value for key, value in data.items() if key in names}, **upgraded}


#: the model width the scopes' options are checked at before any model is loaded
_CHECK_WIDTH = 4096


def _check_scope_options(scope: str, settings: Mapping[str, Any]) -> None:
    """The scope's options from ``settings`` checked as far as they can be without
    a model (the scope's ``make_options`` and its pass count, which builds the
    Fisher Scope's estimator from k, n_probes, budget, and that estimator's
    ``check_tol`` of tol and max_passes): a bad one is a ValueError or TypeError
    naming the scope, before any model loads (not once per prompt)."""
    cls = scope_class(scope)
    try:
        options = cls.make_options(**scope_options(scope, settings))
        cls.backward_passes(options, _CHECK_WIDTH)
        estimator_of = getattr(cls, "estimator_of", None)
        check_tol = getattr(estimator_of(options), "check_tol", None) if callable(estimator_of) else None
        if callable(check_tol):
            check_tol(getattr(options, "tol", None), getattr(options, "max_passes", None))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{scope} scope: {err}") from None


def _names_a_setting(key: str) -> bool:
    try:
        find_setting(key)
    except KeyError:
        return False
    return True


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
    ``fisher_estimator: krylov (stored) vs eig (asked)``, not "not set"."""
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


# ----------------------------------------------------------------------------- reading back


def read_results(out_dir_or_file: Union[str, os.PathLike]) -> dict[str, dict[str, ScopeResult]]:
    """The results of a finished run: ``{prompt id: {scope: ScopeResult}}`` in
    prompt order, read from ``records.jsonl`` (or the given JSONL file). Prompts
    recorded with an ``"error"`` are left out (``summary.json`` lists them)."""
    return {
        record["id"]: {scope: ScopeResult.from_dict(data) for scope, data in record["results"].items()}
        for record in read_records(out_dir_or_file)
        if "error" not in record
    }


def page_name(prompt_id: str) -> str:
    """File name of a prompt's page: the id itself when it is a plain lower-case
    name (``"17"``, ``"q-3.a"``), else a readable part and a hash of the id, so
    that no id (``"a/b"``, ``"<x>"``, ``"A"`` vs ``"a"`` on a case-insensitive
    disk) can escape ``pages/`` or collide with another."""
    if re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,79}", prompt_id):
        return f"{prompt_id}.html"
    # "~" never appears in the plain names above, so the two kinds cannot collide.
    # No dots in this part: a name starting with "." would be hidden, and ".." is never formed.
    readable = re.sub(r"[^a-z0-9_-]+", "_", prompt_id.lower())[:40]
    return f"{readable}~{hashlib.sha1(prompt_id.encode('utf-8')).hexdigest()[:12]}.html"


# ----------------------------------------------------------------------------- reports


def write_reports(out_dir: Union[str, os.PathLike], records: list[dict], meta: dict, *, resumed: int = 0,
                  computed: Optional[int] = None) -> dict:
    """Write ``summary.json``, ``summary.md``, ``index.html`` and one page per
    prompt under ``pages/`` from the run's ``records`` (``read_records``: every
    record of the folder) and its ``meta`` (run.json), each file atomically;
    return the summary (see :func:`attribute_dataset`). ``resumed`` and
    ``computed`` say how many prompts of this call were found done and were
    computed (default: the records not resumed)."""
    out_dir = Path(out_dir)
    (out_dir / PAGES_DIR).mkdir(parents=True, exist_ok=True)
    entries = []
    for record in records:
        entry, results = _summary_entry(record)
        if results:
            write_text_atomic(out_dir / PAGES_DIR / entry["page"], _prompt_page(entry, results, meta))
        entries.append(entry)
    summary = _summary(entries, meta, resumed, len(entries) - resumed if computed is None else computed)
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    write_text_atomic(out_dir / SUMMARY_MD, _summary_markdown(summary))
    write_text_atomic(out_dir / INDEX_HTML, _index_page(summary))
    return summary


def _summary_entry(record: dict) -> tuple[dict, dict[str, ScopeResult]]:
    """One prompt's line of the summary, and its results by scope (empty for an error)."""
    entry = {"id": record["id"], "page": page_name(record["id"]), "text": record["text"], "target": record["target"]}
    if "error" in record:
        return {**entry, "error": record["error"], **({"invalid": True} if record.get("invalid") else {})}, {}
    results = {scope: ScopeResult.from_dict(data) for scope, data in record["results"].items()}
    first = next(iter(results.values()))  # the target and the prediction are the same for every scope
    entry.update(
        explains=first.metadata["target"],
        prob=_target_prob(first),
        prediction=first.metadata["prediction"],
        hint=first.metadata.get("target_hint"),
        seconds=sum(record["seconds"].values()),
        seconds_per_scope=record["seconds"],
        top_tokens={
            scope: [[index, display_token(token), score] for index, token, score in result.top_tokens(TOP_K)]
            for scope, result in results.items()
        },
    )
    return entry, results


def _target_prob(result: ScopeResult) -> float:
    """p(target | prompt): the product over its tokens (teacher-forced)."""
    return float(result.output_probs.double().prod())


def _summary(entries: list[dict], meta: dict, resumed: int, computed: int) -> dict:
    done = [e for e in entries if "error" not in e]
    scopes = meta["settings"]["scopes"]
    total = sum(e["seconds"] for e in done)
    return {
        "model": meta["model"],
        "dtype": meta["dtype"],
        "settings": meta["settings"],
        "n_prompts": len(entries),
        "n_errors": len(entries) - len(done),
        "n_invalid": sum(bool(e.get("invalid")) for e in entries),
        "n_hints": sum(bool(e["hint"]) for e in done),
        "computed": computed,
        "resumed": resumed,
        "seconds": {
            "total": total,
            "per_prompt": total / len(done) if done else None,
            "per_scope": {s: sum(e["seconds_per_scope"][s] for e in done) / len(done) if done else None for s in scopes},
        },
        "prompts": entries,
    }


def _tail(text: str, limit: int = 80) -> str:
    """The end of a prompt (what the next token depends on most), on one line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _tokens_text(top: list) -> str:
    return ", ".join(repr(token) for _, token, _ in top)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _seconds_line(summary: dict) -> str:
    seconds = summary["seconds"]
    if seconds["per_prompt"] is None:
        return "no prompt could be explained"
    per_scope = ", ".join(f"{s} {v:.3g} s" for s, v in seconds["per_scope"].items())
    return f"{seconds['per_prompt']:.3g} s per prompt ({per_scope}), {seconds['total']:.3g} s in all"


def _summary_markdown(summary: dict) -> str:
    scopes = summary["settings"]["scopes"]
    lines = [
        f"# Token attributions: {summary['n_prompts']} prompts",
        "",
        f"- model: {summary['model']} ({summary['dtype']})",
        f"- scopes: {', '.join(scopes)}; settings: `{json.dumps(summary['settings'])}`",
        f"- time: {_seconds_line(summary)}",
        f"- prompts that could not be explained: {summary['n_errors']}"
        + (f" ({summary['n_invalid']} entries of the source that are no prompt)" if summary.get("n_invalid") else ""),
    ]
    if summary["n_hints"]:
        lines.append(f"- targets that lack their leading space (see each page's hint): {summary['n_hints']}")
    lines += [
        "",
        f"Top {TOP_K} tokens per scope, best first; 'explains' is the target (or the model's prediction) "
        "and its probability. Pages: index.html.",
        "",
        "| id | prompt (end) | explains | " + " | ".join(f"{s} top tokens" for s in scopes) + " | s |",
        "|---|---|---|" + "---|" * len(scopes) + "---|",
    ]
    for e in summary["prompts"]:
        head = f"| {_md_cell(e['id'])} | {_md_cell(_tail(e['text']))} | "
        if "error" in e:
            lines.append(head + f"error: {_md_cell(e['error'])} |" + " |" * len(scopes) + " |")
            continue
        tops = " | ".join(_md_cell(_tokens_text(e["top_tokens"][s])) for s in scopes)
        lines.append(head + f"{_md_cell(repr(e['explains']))} (p = {e['prob']:.3g}) | {tops} | {e['seconds']:.3g} |")
    return "\n".join(lines) + "\n"


def _page(title: str, body: list[str]) -> str:
    """A self-contained HTML page (no script, no external asset)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        '<body style="font-family: sans-serif; font-size: 14px;">\n' + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _prompt_page(entry: dict, results: dict[str, ScopeResult], meta: dict) -> str:
    esc = html.escape
    body = [
        f'<p><a href="../{INDEX_HTML}">← all prompts</a></p>',
        f"<h2>Prompt {esc(entry['id'])}</h2>",
        f"<p>{esc(meta['model'])}: explains {esc(repr(entry['explains']))} (p = {entry['prob']:.4g}); "
        f"the model's prediction is {esc(repr(entry['prediction']['token']))} (p = {entry['prediction']['prob']:.4g})</p>",
    ]
    if entry["hint"]:
        body.append(f"<p><b>hint:</b> {esc(entry['hint'])}</p>")
    for scope, result in results.items():
        title = f"{scope.title()} Scope · {entry['seconds_per_scope'][scope]:.3g} s"
        body.append(render_html(result, title))  # escapes every token and metadata string
    return _page(f"Prompt {entry['id']}", body)


def _index_page(summary: dict) -> str:
    esc = html.escape
    scopes = summary["settings"]["scopes"]
    cell = 'style="border-bottom: 1px solid #ddd; padding: 3px 8px; vertical-align: top;"'
    header = ["id", "prompt (end)", "explains", *(f"{s} top tokens" for s in scopes), "s"]
    rows = ["<tr>" + "".join(f"<th {cell}>{esc(h)}</th>" for h in header) + "</tr>"]
    for e in summary["prompts"]:
        href = quote(f"{PAGES_DIR}/{e['page']}")
        link = f'<a href="{esc(href)}">{esc(e["id"])}</a>'
        cells = [link if "error" not in e else esc(e["id"]), esc(_tail(e["text"]))]
        if "error" in e:
            cells += [f"error: {esc(e['error'])}", *([""] * len(scopes)), ""]
        else:
            cells.append(f"{esc(repr(e['explains']))} (p = {e['prob']:.3g})")
            cells += [esc(_tokens_text(e["top_tokens"][s])) for s in scopes]
            cells.append(f"{e['seconds']:.3g}")
        rows.append("<tr>" + "".join(f"<td {cell}>{c}</td>" for c in cells) + "</tr>")
    body = [
        f"<h2>{summary['n_prompts']} prompts · {esc(summary['model'])} · {esc(', '.join(scopes))}</h2>",
        f"<p>{esc(_seconds_line(summary))}; could not be explained: {summary['n_errors']}</p>",
        '<table style="border-collapse: collapse;">',
        *rows,
        "</table>",
    ]
    return _page(f"Token attributions: {summary['n_prompts']} prompts", body)
