"""The Fisher study of the speed benchmark: every Fisher estimator of the method
table against exact Fisher on the same prompts (Spearman and relative L2 error per
prompt, backward passes, time relative to exact, top-5 coverage of the 95%
intervals), a cache of exact scores that later studies read, and one table pooled
from several studies.

    jscopes bench speed --fisher-n 50 --skip-speed   # Fisher accuracy vs cost
    jscopes bench speed --fisher-cache-exact DIR --fisher-n 64 --max-tokens 64   # exact scores, once
    jscopes bench speed --skip-speed --max-tokens 64 --fisher-exact DIR --fisher-seeds 3 \
        --fisher-methods fisher_krylov,fisher_hutchinson   # the same against the cached exact scores
    jscopes bench speed --fisher-pool DIR,DIR --out DIR   # one table over disjoint studies

Exact Fisher costs minutes per prompt on a CPU: every study runs through
:func:`captum_jscopes.runs.runner.run_sharded` (resumable, one record per prompt).
The command line is :mod:`captum_jscopes.bench.speed`'s; its flags for the study are
:func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from captum_jscopes.bench.common import cli_message
from captum_jscopes.bench.methods import METHODS
from captum_jscopes.bench.speed_report import markdown
from captum_jscopes.models import load_model
from captum_jscopes.runs.prompts import load_prompts, prepare_prompt
from captum_jscopes.runs.runner import read_records, run_sharded
from captum_jscopes.scopes.registry import SCOPES

#: The estimators the study compares with exact Fisher (entries of the method table).
FISHER_STUDY_METHODS = ["fisher", "fisher_krylov", "fisher_hutchinson", "fisher_eig1", "fisher_eig4", "fisher_eig16",
                        "fisher_eig64", "fisher_deflated_8_16", "fisher_deflated_16_16", "fisher_deflated_16_32"]
FISHER_STATS = ("spearman", "rel_l2", "time_ratio")
#: The scope whose estimators the study compares (the method table's entries name it).
STUDY_SCOPE = METHODS[FISHER_STUDY_METHODS[0]].scope
#: Subfolder of the speed benchmark's output holding the Fisher study's runner files.
FISHER_DIR = "fisher_accuracy"


# -- the command line ------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The study's flags, on the speed benchmark's parser."""
    parser.add_argument("--fisher-n", type=int, default=0, help="prompts for the Fisher accuracy study (0: skip)")
    parser.add_argument("--fisher-methods", dest="study_methods", default=",".join(FISHER_STUDY_METHODS),
                        help="Fisher entries of the method table compared with exact Fisher")
    parser.add_argument("--fisher-seeds", type=int, default=1,
                        help="seeds per randomised Fisher estimator in the accuracy study (default 1)")
    parser.add_argument("--fisher-exact", default=None, metavar="FILE",
                        help="JSONL of cached exact Fisher scores ({id, seconds, exact}): the study runs on "
                             "those prompts without recomputing exact")
    parser.add_argument("--fisher-offset", type=int, default=0,
                        help="prompts skipped before the Fisher study's (or cache's) --fisher-n (default 0)")
    parser.add_argument("--fisher-cache-exact", default=None, metavar="DIR",
                        help="only compute exact Fisher scores of --fisher-n prompts after --fisher-offset into "
                             "DIR (resumable), the cache --fisher-exact DIR reads")
    parser.add_argument("--fisher-pool", default=None, metavar="DIR,DIR[,...]",
                        help="only pool the Fisher studies in these --out folders (disjoint prompts) into one "
                             "table in --out")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.study_methods`` (``--fisher-methods``) as a list of entries of the method
    table that name a Fisher estimator, else a parser error."""
    args.study_methods = [m for m in args.study_methods.split(",") if m]
    for name in args.study_methods:
        # the study compares Fisher estimators: the methods that name one
        if name not in METHODS or "estimator" not in METHODS[name].options:
            fisher = [n for n, m in METHODS.items() if "estimator" in m.options and m.variant_of is None]
            parser.error(f"unknown Fisher method {name!r}; choose from {', '.join(fisher)}")


def pool_main(args: argparse.Namespace, command: str) -> int:
    """``--fisher-pool``: one table over the studies in the folders named, written to
    ``args.out`` (speed.json, speed.md); 2 when they cannot be pooled."""
    folders = [d for d in args.fisher_pool.split(",") if d]
    try:
        pooled = pool_fisher_studies([Path(d) for d in folders])
    except ValueError as err:
        print(f"speed benchmark: error: {cli_message(err)}", file=sys.stderr)
        return 2
    # the machine and model of the first study (pooled studies ran the same model)
    results = {"environment": json.loads((Path(folders[0]) / "speed.json").read_text())["environment"],
               "command": command, "pooled_from": folders, "fisher_accuracy": pooled}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(results, indent=1))
    (out / "speed.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def cache_main(args: argparse.Namespace) -> int:
    """``--fisher-cache-exact DIR``: only the exact scores, into DIR."""
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    path = cache_exact_fisher(args, model, tokenizer, Path(args.fisher_cache_exact))
    print(f"exact Fisher scores of {len(read_records(path))} prompts in {path}")
    return 0


# -- the study -------------------------------------------------------------------------
def fisher_accuracy(args, model, tokenizer, out_dir: Path) -> dict:
    """Every Fisher estimator against the exact one: Spearman and relative L2
    error per prompt (medians), backward passes, and time relative to exact.

    The prompts run through :func:`captum_jscopes.runs.runner.run_sharded` into
    ``out_dir`` (exact Fisher costs minutes per prompt on a CPU): each record is
    saved as it finishes, a rerun computes only the missing prompts, and a rerun
    with other settings is refused unless ``args.overwrite``.

    With ``args.fisher_exact`` (a JSONL file of ``{"id", "seconds", "exact": [scores]}``, e.g.
    ``benchmarks/results/fisher-estimators-smollm2-lambada64/exact.jsonl``) the study runs on the
    prompts of those ids and reads exact Fisher from the file instead of recomputing it; the time
    ratio is then against the stored seconds. ``args.fisher_seeds`` seeds per randomised estimator:
    the medians and the worst case are over every (prompt, seed).
    """
    scope = SCOPES[STUDY_SCOPE](model, tokenizer)
    hidden = model.get_output_embeddings().weight.shape[1]
    seeds, cache_file = args.fisher_seeds, args.fisher_exact
    settings = {"methods": args.study_methods, "max_tokens": args.max_tokens, "data": str(args.data)}
    if seeds > 1 or cache_file:  # only then: studies of earlier versions resume as before
        settings |= {"seeds": seeds, "exact_from": cache_file}
    device = model.get_input_embeddings().weight.device
    cached = _read_exact_cache(cache_file) if cache_file else {}
    if cached:
        prompts = [p for p in load_prompts(args.data) if p.id in cached][: args.fisher_n]
    else:
        prompts = load_prompts(args.data, args.fisher_n, offset=args.fisher_offset)

    def one_prompt(prompt) -> dict:
        ids = _prompt_ids(tokenizer, prompt.text, args.max_tokens, device)
        return _fisher_record(scope, ids, args.study_methods, seeds, cached.get(prompt.id))

    path = run_sharded(prompts, one_prompt, out_dir, desc="Fisher accuracy", meta=settings, overwrite=args.overwrite,
                       size_flag="--fisher-n")
    return fisher_summary(read_records(path), args.study_methods, hidden)


def fisher_summary(records: list[dict], methods: list[str], hidden: int) -> dict:
    """The Fisher study's table from its per-prompt records (:func:`_fisher_record`): per
    estimator the median and worst Spearman, relative L2 error and time ratio over every
    (prompt, seed), the pooled top-5 coverage and passes; ``hidden`` = d, exact's passes."""
    def values(name: str, key: str) -> list[float]:
        return [v for r in records for v in _per_seed(r[name], key)]

    summary = {
        name: {
            "vjps": METHODS[name].backward_passes(hidden),
            **{f"median_{key}": statistics.median(values(name, key)) for key in FISHER_STATS},
            "worst_spearman": min(values(name, "spearman")),
            "worst_rel_l2": max(values(name, "rel_l2")),
            "worst_time_ratio": max(values(name, "time_ratio")),
            # pooled over every (prompt, seed): the share of the five largest tokens inside their 95% interval
            **({"top5_coverage": sum(values(name, "top5_covered")) / (5 * len(values(name, "top5_covered"))),
                "median_passes": statistics.median(values(name, "passes")),
                "max_passes": max(values(name, "passes"))}
               if all("top5_covered" in r[name] for r in records) else {}),
            "n_values": len(values(name, "rel_l2")),
        }
        for name in methods
    }
    exact_row = {"vjps": hidden, "median_spearman": 1.0, "median_rel_l2": 0.0, "median_time_ratio": 1.0}
    exact_row["median_seconds"] = statistics.median(r["exact_seconds"] for r in records)
    return summary | {"fisher_exact": exact_row}


def _fisher_record(scope, ids: torch.Tensor, methods: list[str], seeds: int = 1,
                   cached: Optional[dict] = None) -> dict:
    """One prompt of the Fisher study: each estimator's error and time against exact Fisher
    (computed, or ``cached``: a record of :func:`_read_exact_cache`). A randomised estimator
    with ``seeds > 1`` stores lists, one value per seed 0, 1, ..."""
    from scipy.stats import spearmanr

    if cached is None:
        start = time.perf_counter()
        exact = scope.attribute(ids, estimator="exact")[0]
        exact_time = time.perf_counter() - start
    else:
        exact, exact_time = torch.tensor(cached["exact"], dtype=torch.float32), cached["seconds"]
        if exact.numel() != ids.numel():
            raise ValueError(f"cached exact scores have {exact.numel()} tokens, the prompt {ids.numel()}: "
                             "run with the --max-tokens of the cache")
    exact = exact.cpu()
    scored = exact > 0
    record: dict = {"n_tokens": ids.numel(), "exact_seconds": exact_time}
    for name in methods:
        options = dict(METHODS[name].options)
        runs = []
        for seed in range(seeds if METHODS[name].randomised else 1):
            start = time.perf_counter()
            estimate, error = scope.attribute(ids, **options, seed=seed, return_error=True)
            elapsed = time.perf_counter() - start
            estimate, error = estimate[0].cpu().double(), error[0].cpu().double()
            # the five largest exact scores: is each inside its 95% interval (+-1.96 standard errors)?
            top = exact.double().argsort(descending=True)[:5]
            inside = (estimate[top] - exact.double()[top]).abs() <= 1.959963984540054 * error[top]
            runs.append({
                "time_ratio": elapsed / exact_time,
                "spearman": float(spearmanr(estimate[scored], exact[scored]).statistic),
                "rel_l2": float((estimate - exact).norm() / exact.norm()),
                "passes": int(scope.last_info.get("passes", 0)),
                # NaN error (a biased estimator) covers nothing: the comparison is False
                "top5_covered": int(inside.sum()),
            })
        record[name] = runs[0] if len(runs) == 1 else {key: [r[key] for r in runs] for key in runs[0]}
    return record


def cache_exact_fisher(args, model, tokenizer, out_dir: Path) -> Path:
    """Exact Fisher scores of ``args.fisher_n`` prompts after ``args.fisher_offset`` (the
    passage minus its last token, its last ``args.max_tokens`` tokens) into ``out_dir``:
    one record ``{"id", "n_tokens", "seconds", "exact": [scores]}`` per prompt, the cache
    that ``--fisher-exact`` reads (give it ``out_dir``). Minutes per prompt on a CPU, so
    it runs through :func:`~captum_jscopes.runs.runner.run_sharded`: resumable, and
    shared between the processes of a ``torchrun`` launch."""
    scope = SCOPES[STUDY_SCOPE](model, tokenizer)
    device = model.get_input_embeddings().weight.device
    prompts = load_prompts(args.data, args.fisher_n, offset=args.fisher_offset)

    def one_prompt(prompt) -> dict:
        ids = _prompt_ids(tokenizer, prompt.text, args.max_tokens, device)
        start = time.perf_counter()
        exact = scope.attribute(ids, estimator="exact")[0]
        return {"n_tokens": ids.numel(), "seconds": time.perf_counter() - start, "exact": exact.cpu().tolist()}

    settings = {"cache": "exact_fisher", "max_tokens": args.max_tokens, "data": str(args.data)}
    return run_sharded(prompts, one_prompt, out_dir, desc="exact Fisher", meta=settings, overwrite=args.overwrite,
                       size_flag="--fisher-n")


def pool_fisher_studies(study_dirs: list[Path]) -> dict:
    """One Fisher table over several studies' prompts (e.g. held-out passages run in two halves,
    each against its own exact cache): the records of every ``DIR/fisher_accuracy``, the
    estimators they all ran. Raises ValueError for a folder without a study or a prompt in two."""
    records: dict[str, dict] = {}
    methods: Optional[list[str]] = None
    hidden = None
    for folder in study_dirs:
        study = Path(folder) / FISHER_DIR
        speed = Path(folder) / "speed.json"
        if not study.is_dir() or not speed.is_file():
            raise ValueError(f"{folder} holds no Fisher study (no {FISHER_DIR}/ and speed.json); run "
                             "jscopes bench speed --fisher-n N --out DIR first")
        table = json.loads(speed.read_text())["fisher_accuracy"]
        hidden = table["fisher_exact"]["vjps"]
        names = [n for n in table if n != "fisher_exact"]
        methods = names if methods is None else [n for n in methods if n in names]
        for record in read_records(study):
            if record["id"] in records:
                raise ValueError(f"prompt {record['id']} is in two of the studies pooled")
            records[record["id"]] = record
    if not methods:
        raise ValueError("the studies share no Fisher estimator")
    return fisher_summary(list(records.values()), methods, hidden)


def _per_seed(row: dict, key: str) -> list[float]:
    value = row[key]
    return value if isinstance(value, list) else [value]


def _read_exact_cache(path: str) -> dict[str, dict]:
    """prompt id -> {"seconds", "exact": [scores]} from a JSONL file of exact Fisher scores."""
    return {str(r["id"]): r for r in read_records(path)}


def _prompt_ids(tokenizer: Any, text: str, max_tokens: int, device: Any) -> torch.Tensor:
    """(n,) ids of a passage minus its last token, its last ``max_tokens`` (0: all)."""
    return prepare_prompt(tokenizer, text, max_tokens).input_ids[0].to(device)
