"""Prompt sets of the benchmarks: where they are, how they are read, and how a
passage becomes a prompt.

- :data:`DATASETS`: the prompt sets shipped with the package (``data/``, with
  their provenance in ``data/README.md``): ``"lambada"`` (LAMBADA-1000, the
  default) and ``"opus_de_en"`` (500 German-English translation prompts).
- :func:`load_prompts`: a shipped set, a JSON/JSONL file or a Hugging Face
  dataset as a list of :class:`Prompt`.
- :func:`prepare_prompt`: the paper's protocol, "the passage minus its last
  token": the last token is the target, the prediction at the token before it
  is explained. Both benchmarks use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

DATA_DIR = Path(__file__).resolve().parent / "data"
#: name -> file of the prompt sets shipped with the package.
DATASETS: dict[str, Path] = {
    "lambada": DATA_DIR / "lambada_1000.json",
    "opus_de_en": DATA_DIR / "opus_de_en_500.json",
}
DEFAULT_DATASET = "lambada"

__all__ = ["DATASETS", "DEFAULT_DATASET", "Prompt", "load_prompts", "PreparedPrompt", "prepare_prompt"]


@dataclass(frozen=True)
class Prompt:
    """One prompt of a dataset.

    Attributes:
        id: stable identifier (the index in the source as a string, or the source's "id" field); the key
            under which results are stored and resumed.
        text: the prompt text (non-empty).
        target: the continuation to explain (e.g. ``" Paris"``), read from ``load_prompts``'s
            ``target_field``; default None: none given (the model's own prediction is explained).
        error: why the source's entry is no prompt (``"p.jsonl, line 2: empty text"``), set only by
            ``load_prompts(..., invalid="keep")``; then ``text`` is the entry's text if it is a string,
            else ``""``. Default None: a valid prompt.
    """

    id: str
    text: str
    target: Optional[str] = None
    error: Optional[str] = None


# --------------------------------------------------------------------------------------------------
# Loading prompts
# --------------------------------------------------------------------------------------------------


def load_prompts(
    source: str | os.PathLike | None = None,
    n: int | None = None,
    *,
    offset: int = 0,
    text_field: str = "text",
    target_field: str | None = None,
    invalid: str = "raise",
) -> list[Prompt]:
    """Load prompts from a file or a Hugging Face dataset.

    Args:
        source: where the prompts come from (default ``None``):

            - ``None`` or ``"lambada"``: the LAMBADA-1000 set shipped in ``captum_jscopes/runs/data``;
            - a name of :data:`DATASETS` (``"opus_de_en"``: 500 German-English translation prompts);
            - a ``.json`` file holding a list of ``{"text": ...}`` objects;
            - a ``.jsonl`` file with one ``{"text": ...}`` object per line (blank lines are skipped);
            - ``"hf:NAME[:SPLIT[:FIELD]]"``, or any string that is not an existing path and does not end in
              ``.json``/``.jsonl``: ``datasets.load_dataset(NAME, split=SPLIT)``, text taken from column
              FIELD (default: ``text_field``); without SPLIT the dataset must have a single split.

            Ids are the entry's ``"id"`` field (string or integer) when present, else its 0-based index.
        n: keep only the first ``n`` prompts after ``offset`` (default ``None``: all). Like slicing, fewer are
            returned when the source is shorter.
        offset: number of prompts skipped at the start (default 0).
        text_field: the field (column) holding the prompt text (default ``"text"``).
        target_field: a field holding each prompt's target, a non-empty string stored as ``Prompt.target``
            (default ``None``: no target is read and ``Prompt.target`` is None).
        invalid: what an entry that is no prompt does (not an object, no string text or target, an empty
            text or target, a JSONL line that is not JSON, a bad ``"id"``): ``"raise"`` (default) a
            ValueError; ``"keep"`` a :class:`Prompt` with its ``error`` set (id: its position), so that a
            run can record it and go on. Duplicate ids, an unreadable or empty source raise either way.

    Returns:
        list of ``Prompt``, in source order.

    Raises:
        ValueError: a missing or unreadable source, an entry without a non-empty string text (or target, with
            ``target_field``), an empty source, duplicate ids, or no prompt left after ``offset``; the message
            names the file (and the line for JSONL).
        ImportError: a hub dataset was asked for but ``datasets`` is not installed.
    """
    _check_slice(n, offset)
    if invalid not in ("raise", "keep"):
        raise ValueError(f"invalid must be 'raise' or 'keep', got {invalid!r}")
    _check_field(text_field, "text_field")
    if target_field is not None:
        _check_field(target_field, "target_field")
    if source is None:
        source = DEFAULT_DATASET
    if isinstance(source, str) and source in DATASETS:
        source = DATASETS[source]
    if isinstance(source, os.PathLike):
        source = Path(source)
    elif isinstance(source, str):
        source = _path_or_hub_name(source)
    else:
        raise TypeError(f"source must be None, a path or a dataset name, got {type(source).__name__}")

    if isinstance(source, Path):
        entries = _read_prompt_file(source, keep_bad_lines=invalid == "keep")
        origin = str(source)
    else:
        name, split, field = source
        text_field = field or text_field  # a FIELD in the spec names the text column
        entries = _read_hub_dataset(name, split, text_field, target_field)
        origin = f"hub dataset {name!r}"
    prompts = _prompts_from_entries(entries, origin, text_field, target_field, keep_invalid=invalid == "keep")
    end = None if n is None else offset + n
    selected = prompts[offset:end]
    if not selected:
        raise ValueError(f"{origin}: no prompt left after offset={offset} (it holds {len(prompts)})")
    return selected


def _check_slice(n: int | None, offset: int) -> None:
    # bool is an int subclass; load_prompts(path, True) is almost surely a mistake.
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


def _check_field(field: Any, name: str) -> None:
    if not isinstance(field, str) or not field:
        raise ValueError(f"{name} must be a non-empty string, got {field!r}")


def _path_or_hub_name(source: str) -> Path | tuple[str, str | None, str | None]:
    """Tell a local file from a hub dataset name; hub names are returned as (name, split, field)."""
    if source.startswith("hf:"):
        return _parse_hub_name(source[len("hf:"):])
    path = Path(source).expanduser()
    # A name ending in .json(l) is meant as a file: report it missing rather than asking the hub for it.
    if path.exists() or path.suffix.lower() in (".json", ".jsonl"):
        return path
    return _parse_hub_name(source)


def _parse_hub_name(spec: str) -> tuple[str, str | None, str | None]:
    """``"NAME[:SPLIT[:FIELD]]"`` -> (name, split or None, field or None)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"hub dataset must be given as 'hf:NAME[:SPLIT[:FIELD]]', got {spec!r}")
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else None
    field = parts[2] if len(parts) > 2 and parts[2] else None
    return name, split, field


def _read_prompt_file(path: Path, keep_bad_lines: bool = False) -> list[tuple[str, Any]]:
    """Raw entries of a JSON or JSONL file as (location for messages, entry) pairs; with
    ``keep_bad_lines`` a JSONL line that is not JSON is an entry :class:`_BadLine`."""
    if not path.exists():
        raise ValueError(f"prompts file {path} not found")
    if not path.is_file():
        raise ValueError(f"prompts file {path} is not a file")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"prompts file {path} cannot be read: {e}") from e
    if path.suffix.lower() == ".jsonl":
        return _parse_jsonl(content, path, keep_bad_lines)
    return _parse_json_list(content, path)


def _parse_json_list(content: str, path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise ValueError(f"prompts file {path} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"prompts file {path} must hold a JSON list of objects, got {type(data).__name__}")
    return [(f"entry {i}", entry) for i, entry in enumerate(data)]


@dataclass(frozen=True)
class _BadLine:
    """A JSONL line that is not JSON, kept as an entry (``load_prompts(..., invalid="keep")``)."""

    problem: str


def _parse_jsonl(content: str, path: Path, keep_bad_lines: bool = False) -> list[tuple[str, Any]]:
    entries: list[tuple[str, Any]] = []
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {line_no}", json.loads(line)))
        except json.JSONDecodeError as e:
            if not keep_bad_lines:
                raise ValueError(f"prompts file {path}, line {line_no}: not valid JSON: {e}") from e
            entries.append((f"line {line_no}", _BadLine(f"not valid JSON: {e}")))
    return entries


def _read_hub_dataset(
    name: str, split: str | None, text_field: str, target_field: str | None
) -> list[tuple[str, Any]]:
    """Rows of a Hugging Face dataset as (location, {text_field, target_field?, "id"?}) pairs, the same
    entries a JSON file gives; ``datasets`` is imported lazily."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading the hub dataset {name!r} needs the 'datasets' package: pip install datasets"
        ) from e
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, unknown name, bad split: all mean "this source is not usable"
        raise ValueError(
            f"could not load hub dataset {name!r} (split={split!r}) with datasets.load_dataset; is the "
            f"name right and the hub reachable? {type(e).__name__}: {e}"
        ) from e
    if split is None:
        loaded = _single_split(loaded, name)
    wanted = [text_field] + ([target_field] if target_field else [])
    for column in wanted:
        if column not in loaded.column_names:
            raise ValueError(f"hub dataset {name!r} has no column {column!r}; columns: {loaded.column_names}")
    columns = wanted + (["id"] if "id" in loaded.column_names else [])
    # Column by column: indexing a datasets.Dataset row by row is much slower.
    values = {column: loaded[column] for column in columns}
    return [(f"row {i}", {column: values[column][i] for column in columns}) for i in range(len(loaded))]


def _single_split(dataset_dict: Any, name: str) -> Any:
    splits = list(dataset_dict.keys())
    if len(splits) != 1:
        raise ValueError(f"hub dataset {name!r} has splits {splits}; choose one with 'hf:{name}:SPLIT'")
    return dataset_dict[splits[0]]


def _prompts_from_entries(
    entries: list[tuple[str, Any]], origin: str, text_field: str = "text", target_field: str | None = None,
    keep_invalid: bool = False,
) -> list[Prompt]:
    """Validate raw entries and turn them into prompts with unique ids; with
    ``keep_invalid`` an entry that is no prompt is a Prompt with its ``error``."""
    if not entries:
        raise ValueError(f"{origin}: holds no prompt (empty list)")
    prompts, seen = [], set()
    for index, (where, entry) in enumerate(entries):
        problem = _entry_problem(entry, text_field, target_field)
        if problem is not None and not keep_invalid:
            raise ValueError(f"{origin}, {where}: {problem}")
        if problem is None:
            prompt_id = _entry_id(entry, index, origin, where)
            prompt = Prompt(id=prompt_id, text=entry[text_field],
                            target=None if target_field is None else entry[target_field])
        else:
            try:
                prompt_id = _entry_id(entry, index, origin, where) if isinstance(entry, dict) else str(index)
            except ValueError:
                prompt_id = str(index)
            text = entry.get(text_field) if isinstance(entry, dict) else None
            target = entry.get(target_field) if isinstance(entry, dict) and target_field is not None else None
            prompt = Prompt(id=prompt_id, text=text if isinstance(text, str) else "",
                            target=target if isinstance(target, str) else None, error=f"{origin}, {where}: {problem}")
        if prompt_id in seen:
            raise ValueError(f"{origin}, {where}: duplicate id {prompt_id!r}")
        seen.add(prompt_id)
        prompts.append(prompt)
    return prompts


def _entry_problem(entry: Any, text_field: str, target_field: str | None) -> str | None:
    """Why a raw entry is no prompt, or None."""
    if isinstance(entry, _BadLine):
        return entry.problem
    if not isinstance(entry, dict):
        return f"expected an object with a {text_field!r} field, got {type(entry).__name__}"
    text = entry.get(text_field)
    if not isinstance(text, str):
        return f"missing a string {text_field!r} field"
    if not text.strip():
        return "empty text"
    if target_field is not None:
        target = entry.get(target_field)
        if not isinstance(target, str):
            return f"missing a string {target_field!r} field (the target)"
        # Only "" is refused: a lone space can be a real token to explain.
        if not target:
            return f"empty target in {target_field!r}"
    if "id" in entry:
        value = entry["id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            return f"'id' must be a non-empty string or an integer, got {value!r}"
    return None


def _entry_id(entry: dict, index: int, origin: str, where: str) -> str:
    if "id" not in entry:
        return str(index)
    value = entry["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{origin}, {where}: 'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


# --------------------------------------------------------------------------------------------------
# A passage as a prompt
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedPrompt:
    """A passage ready to explain.

    Attributes:
        input_ids: (1, n) int64 ids, the passage without its last token (with the
            tokenizer's BOS if it adds one).
        true_token: id of the dropped last token (the passage's real continuation).
        has_bos: whether the prompt starts with a special token.
    """

    input_ids: Tensor
    true_token: int
    has_bos: bool


def prepare_prompt(tokenizer: Any, text: str, max_tokens: Optional[int] = None) -> PreparedPrompt:
    """Tokenise a passage with the tokenizer's special tokens and split off its
    last token as the target.

    Special tokens the tokenizer appends (an EOS, for some) are removed first, so
    the target is always the text's own last token.

    Args:
        tokenizer: the model's tokenizer.
        text: the passage.
        max_tokens: keep only the last ``max_tokens`` tokens of the prompt (the
            speed benchmark's fixed lengths); None or 0 (default) keeps all.
    Raises:
        ValueError: fewer than one non-special token would remain to explain from.
    """
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    while ids and ids[-1] in special:
        ids.pop()
    if len(ids) < 2 or all(i in special for i in ids[:-1]):
        raise ValueError(f"passage too short: {len(ids)} token(s) after tokenisation, need at least 2")
    prompt = ids[:-1][-max_tokens:] if max_tokens else ids[:-1]
    return PreparedPrompt(torch.tensor([prompt], dtype=torch.long), int(ids[-1]), prompt[0] in special)
