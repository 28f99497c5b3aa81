"""Joining faithfulness benchmark runs that computed different methods on the same
prompts into one run (:func:`combine_runs`: ``jscopes bench faithfulness --combine
A,B --out C``), and the check that runs share their settings
(:func:`check_same_settings`, also used when a verdict pools runs).

A long benchmark can be split by method, on different machines or days; the
combined folder has a run's layout (``run.json`` with ``combined_from``,
``records.jsonl``) and its report (:func:`captum_jscopes.bench.report.write_report`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from captum_jscopes.bench.methods import METHODS
from captum_jscopes.bench.report import IG_BASELINES_FILE, read_meta, read_run_records, write_report
from captum_jscopes.runs.runner import RECORDS_FILE, RUN_FILE, write_json_atomic, write_text_atomic

__all__ = ["combine_runs", "check_same_settings"]

#: Settings two runs must share for their records to be combined prompt by prompt.
_SHARED_SETTINGS = ("benchmark", "format", "model", "data", "dtype", "seed", "aopc_fractions", "curve_fractions",
                    "ablation")


def combine_runs(run_dirs: Sequence[Path], out_dir: Path) -> dict:
    """Join runs that computed DIFFERENT methods on the same prompts into one run, and report it.

    A long benchmark can be split by method (``--methods a,b`` into one folder, ``--methods c``
    into another, on different machines or days); the combined records give every table of
    one run, including the paired per-prompt comparisons across the two method sets.
    Unfinished runs can be combined: the result covers the prompts done in every run and its
    report says it is partial.

    Args:
        run_dirs: two or more output folders of this benchmark (each with ``run.json``).
        out_dir: where the combined ``run.json`` (with ``combined_from``), ``records.jsonl``
            and the report go; must not be one of ``run_dirs``.
    Returns:
        the summary of the combined records (see :func:`summarize`).
    Raises:
        ValueError: fewer than two runs, settings that differ (model, data, dtype, seed,
            fractions, ...), a method computed in two runs, a prompt whose intact prediction
            differs between runs (not the same model or prompt), or no prompt done in all runs.
    """
    run_dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out_dir)
    if len(run_dirs) < 2:
        raise ValueError(f"combining needs at least two runs, got {len(run_dirs)}")
    if any(out_dir.resolve() == d.resolve() for d in run_dirs):
        raise ValueError(f"the combined run's folder {out_dir} must differ from the runs combined")
    metas = [read_meta(d) for d in run_dirs]
    _check_combinable(run_dirs, metas)
    runs = [read_run_records(d) for d in run_dirs]
    by_id = [{r["id"]: r for r in records} for records, _ in runs]
    common = [i for i in by_id[0] if all(i in other for other in by_id[1:])]
    if not common:
        raise ValueError("no prompt has a record in every run")
    records = [_combine_records([b[i] for b in by_id]) for i in common]
    methods = [m for m in METHODS if any(m in meta["methods"] for meta in metas)]
    meta = {key: metas[0][key] for key in _SHARED_SETTINGS if key in metas[0]}
    meta.update(
        methods=methods,
        loo_n=min(m.get("loo_n", 0) for m in metas),
        combined_from=[{"run": d.name, "methods": m["methods"], "records": len(r), "partial": p}
                       for d, m, (r, p) in zip(run_dirs, metas, runs)],
        partial_sources=[d.name for d, (_, p) in zip(run_dirs, runs) if p],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # the runner's own writers: the combined folder has a run's layout, written atomically
    write_json_atomic(out_dir / RUN_FILE, meta)
    write_text_atomic(out_dir / RECORDS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    # the same model in every run (checked): the first run's note on its IG baselines holds for all
    notes = [d / IG_BASELINES_FILE for d in run_dirs if (d / IG_BASELINES_FILE).is_file()]
    if notes:
        write_text_atomic(out_dir / IG_BASELINES_FILE, notes[0].read_text(encoding="utf-8"))
    return write_report(out_dir, records)


def check_same_settings(run_dirs: Sequence[Path], metas: Sequence[dict], keys: Sequence[str] = _SHARED_SETTINGS,
                        action: str = "combined") -> None:
    """Raise ValueError naming the first of ``keys`` in which a run's ``run.json`` differs
    from the first run's (runs that are ``action`` together must share them)."""
    for d, meta in zip(run_dirs[1:], metas[1:]):
        for key in keys:
            if meta.get(key) != metas[0].get(key):
                raise ValueError(f"runs {run_dirs[0]} and {d} differ in {key}: "
                                 f"{metas[0].get(key)!r} vs {meta.get(key)!r}; only runs with the same settings "
                                 f"can be {action}")


def _check_combinable(run_dirs: list[Path], metas: list[dict]) -> None:
    check_same_settings(run_dirs, metas)
    seen: dict[str, Path] = {}
    for d, meta in zip(run_dirs, metas):
        for method in meta["methods"]:
            if method in seen:
                raise ValueError(f"method {method!r} is in both {seen[method]} and {d}; combine runs of "
                                 "different methods")
            seen[method] = d


def _combine_records(records: list[dict]) -> dict:
    """One prompt's records from several runs -> one record with all their methods."""
    first = records[0]
    if any(("methods" in r) != ("methods" in first) for r in records):
        raise ValueError(f"prompt {first['id']} is skipped in some runs only")
    if "methods" not in first:
        return dict(first)
    for r in records[1:]:
        # the same model on the same prompt predicts the same y*: anything else means
        # the runs do not explain the same thing and their AOPCs cannot be paired
        same = (r["n_tokens"], r["target"], r["true_token"]) == (first["n_tokens"], first["target"],
                                                                 first["true_token"])
        if not same or not math.isclose(r["log_prob"], first["log_prob"], rel_tol=1e-4, abs_tol=1e-5):
            raise ValueError(f"prompt {first['id']}: the runs disagree on the intact prompt (tokens, y* or "
                             "log p(y*)); they did not run the same model on the same prompt")
    combined = {k: v for k, v in first.items() if k not in ("methods", "time_s", "cpu_s")}
    combined["methods"] = {m: e for r in records for m, e in r["methods"].items()}
    # each run paid its own intact forward and metrics: the combined cost is the sum
    combined["time_s"] = sum(r["time_s"] for r in records)
    combined["cpu_s"] = sum(r.get("cpu_s", float("nan")) for r in records)
    return combined
