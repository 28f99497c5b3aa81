"""Speed benchmark: the cost of every attribution method per explained token,
as ratios to a physical floor and to Captum's Integrated Gradients, measured in
one run on the same prompts.

    python benchmarks/speed.py --n 10            # or: jscopes bench speed --n 10
    python benchmarks/speed.py --fisher-n 50 --skip-speed   # Fisher accuracy vs cost
    python benchmarks/speed.py --skip-speed --max-tokens 64 --fisher-exact FILE --fisher-seeds 3 \
        --fisher-methods fisher_krylov,fisher_hutchinson   # the same against cached exact scores
    python benchmarks/speed.py --report-only --out benchmarks/results/speed-...   # rebuild speed.md

Methods are the floor and the entries of :data:`captum_jscopes.bench.methods.METHODS`
(one implementation each, shared with the faithfulness benchmark).

The floor is the least any input-gradient method can cost: one forward of the
model from its input embeddings with logits only at the explained position
(``logits_to_keep=1``) and one backward of one logit to the embeddings, with the
parameters frozen. Wall times are medians over repeats after a warm-up; peak
memory is the peak extra resident memory of a fresh process running the method
once (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from captum_jscopes.core.provenance import package_version
from captum_jscopes.scopes.fisher import FisherScope
from captum_jscopes.integrations.captum import LLMScopeAttribution
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.models import describe_model, load_model
from captum_jscopes.scopes.semantic import SemanticScope
from captum_jscopes.bench.methods import METHODS, method
from captum_jscopes.runs.prompts import load_prompts, prepare_prompt
from captum_jscopes.bench.common import DEFAULT_RESULTS_FOLDER, cli_message
from captum_jscopes.runs.runner import read_records, run_sharded

#: The per-token table: the floor, then methods of the table (captum_jscopes.bench.methods).
SINGLE_TOKEN_METHODS = [
    "floor",
    "semantic",
    "temperature",
    "fisher",
    "fisher_krylov",
    "fisher_hutchinson",
    "fisher_exact",
    "fisher_eig1",
    "fisher_eig4",
    "fisher_eig16",
    "ig50",
    "saliency",
    "grad_x_input",
    "feature_ablation",
]
LENGTH_METHODS = ["floor", "semantic", "temperature", "fisher_krylov", "fisher_eig1", "ig50"]
FISHER_STUDY_METHODS = ["fisher", "fisher_krylov", "fisher_hutchinson", "fisher_eig1", "fisher_eig4", "fisher_eig16",
                        "fisher_eig64", "fisher_deflated_8_16", "fisher_deflated_16_16", "fisher_deflated_16_32"]
IG_MAX_LENGTH = 256  # 50 interpolation steps in one batch: beyond this the CPU run takes minutes per call
#: The reference every method's time is divided by in the "IG-50 / method" column.
IG_REFERENCE = "ig50"
#: Names of earlier versions of this benchmark (committed speed.json files), read as today's.
LEGACY_NAMES = {"captum_ig50": "ig50", "captum_gradient": "saliency", "captum_grad_x_input": "grad_x_input",
                "captum_feature_ablation": "feature_ablation"}


# -- the methods ---------------------------------------------------------------
def make_method(name: str, model: Any, tokenizer: Any) -> Callable[[torch.Tensor, int], Any]:
    """``fn(ids (n,), target_id)`` running one attribution of the last position:
    the floor, or a method of the table."""
    if name == "floor":
        emb = model.get_input_embeddings()

        def floor(ids, target):
            with preserved_state(model):
                x = emb(ids[None]).detach().requires_grad_(True)
                logit = model(inputs_embeds=x, logits_to_keep=1, use_cache=False).logits[0, -1, target]
                return torch.autograd.grad(logit, x)[0]

        return floor
    entry = method(name)
    return lambda ids, target: entry.scores(model, tokenizer, ids[None], target)


def token_input(ids: torch.Tensor, tokenizer: Any):
    """A Captum TextTokenInput holding exactly these token ids (decoding and
    re-encoding text need not give the same ids back)."""
    from captum.attr import TextTokenInput

    inp = TextTokenInput(tokenizer.decode(ids.tolist()), tokenizer)
    inp.inp_tensor = inp.itp_tensor = ids[None].cpu()
    inp.values = tokenizer.convert_ids_to_tokens(ids.tolist())
    inp.n_itp_features = len(inp.values)
    return inp


# -- measuring -------------------------------------------------------------------
def median_time(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory (MiB) above what was in use before ``fn`` ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], _rss_bytes()) - before) / 2**20


def memory_child(spec: str) -> None:
    """Entry of the fresh process: measure one method once, print MiB, exit hard
    (skipping interpreter teardown, which can hang on thread pools)."""
    import sys

    job = json.loads(spec)
    torch.set_num_threads(job["threads"])

    model, tokenizer = load_model(job["model"], dtype=job["dtype"], device=job["device"], progress=False)
    fn = make_method(job["method"], model, tokenizer)
    ids = torch.tensor(job["ids"], device=model.get_input_embeddings().weight.device)
    with torch.no_grad():
        model(ids[None, :4])  # initialise kernels and thread pools outside the measurement
    start = time.perf_counter()
    mib = peak_extra_memory(lambda: fn(ids, job["target"]), ids.device)
    print(json.dumps({"mib": mib, "seconds": time.perf_counter() - start}))
    sys.stdout.flush()
    os._exit(0)


def memory_in_fresh_process(args, method: str, ids: torch.Tensor, target: int) -> Optional[float]:
    """Peak extra MiB of one call of ``method``: CPU allocators keep freed memory, so
    each method gets a fresh process. None if it failed or ran past 30 minutes."""
    measured = run_in_fresh_process(args, method, ids, target)
    return None if measured is None else measured["mib"]


def run_in_fresh_process(args, method: str, ids: torch.Tensor, target: int,
                         timeout: float = 1800) -> Optional[dict]:
    """``{"mib": peak extra memory, "seconds": wall time}`` of one call of ``method``
    in a fresh process (after a 4-token warm-up forward); None if it failed (out of
    memory, for example) or ran past ``timeout`` seconds."""
    import subprocess
    import sys

    spec = json.dumps({"model": args.model, "dtype": args.dtype, "device": args.device, "method": method,
                       "ids": ids.tolist(), "target": target, "threads": args.threads})
    code = "import sys; from captum_jscopes.bench.speed import memory_child; memory_child(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


# -- the benchmark -----------------------------------------------------------------
def encode(tokenizer: Any, text: str, max_tokens: int, device: Any) -> torch.Tensor:
    """(n,) ids: the passage minus its last token (the target word), its last
    ``max_tokens`` tokens (0: all); :func:`~captum_jscopes.runs.prompts.prepare_prompt`."""
    return prepare_prompt(tokenizer, text, max_tokens).input_ids[0].to(device)


def prepare(args):
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    device = model.get_input_embeddings().weight.device
    encoded = [encode(tokenizer, p.text, args.max_tokens, device) for p in load_prompts(args.data, args.n)]
    with torch.no_grad():
        targets = [int(model(ids[None]).logits[0, -1].argmax()) for ids in encoded]
    return model, tokenizer, device, encoded, targets


def bench_single_token(args, model, tokenizer, device, encoded, targets) -> dict:
    rows = {}
    for name in tqdm(args.methods, desc="methods"):
        fn = make_method(name, model, tokenizer)
        repeats = 1 if name != "floor" and METHODS[name].slow else args.repeats
        times = [
            median_time(lambda: fn(ids, target), repeats, args.warmup)
            for ids, target in zip(encoded[: args.n_slow if repeats == 1 else None], targets)
        ]
        memory = None if args.skip_memory else memory_in_fresh_process(args, name, encoded[0], targets[0])
        rows[name] = {"seconds": statistics.median(times), "per_prompt": times, "peak_extra_mib": memory}
    return rows


def bench_lengths(args, model, tokenizer, device, encoded, targets) -> dict:
    stream = torch.cat(encoded)
    while stream.numel() < max(args.lengths):
        stream = torch.cat([stream, stream])
    out: dict = {}
    memory: dict = {}
    too_slow: set = set()  # methods that ran past --length-max-seconds: longer lengths skipped
    for length in tqdm(args.lengths, desc="lengths"):
        ids = stream[:length]
        with torch.no_grad():
            target = int(model(ids[None]).logits[0, -1].argmax())
        for name in args.length_methods:
            if name == IG_REFERENCE and length > IG_MAX_LENGTH or name in too_slow:
                continue
            if args.length_memory:
                # one call in a fresh process gives both numbers: at thousands of tokens a
                # call takes minutes, and warm-up effects are far below its spread
                measured = run_in_fresh_process(args, name, ids, target, timeout=4 * 3600)
                if measured is None:
                    memory.setdefault(name, {})[str(length)] = None  # failed: out of memory or time
                    too_slow.add(name)
                    continue
                out.setdefault(name, {})[str(length)] = measured["seconds"]
                memory.setdefault(name, {})[str(length)] = measured["mib"]
            else:
                fn = make_method(name, model, tokenizer)
                repeats = args.repeats if length <= 256 else 1
                out.setdefault(name, {})[str(length)] = median_time(lambda: fn(ids, target), repeats, 1)
            if args.length_max_seconds and out[name][str(length)] > args.length_max_seconds:
                too_slow.add(name)
    return out, memory


def bench_multi_token(args, model, tokenizer, encoded) -> dict:
    """A 16-token target: our wrapper (one forward) against Captum's per-token loop."""
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution

    ours = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer)
    theirs = LLMGradientAttribution(LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer)
    k = args.multi_token
    rows = {"ours_semantic": [], "captum_gradient_loop": []}
    for ids in encoded[: args.n_slow]:
        prompt, target = token_input(ids[:-k], tokenizer), ids[-k:].cpu()
        rows["ours_semantic"].append(median_time(lambda: ours.attribute(prompt, target=target), args.repeats, 1) / k)
        rows["captum_gradient_loop"].append(
            median_time(lambda: theirs.attribute(prompt, target=target), args.repeats, 1) / k
        )
    return {name: statistics.median(v) for name, v in rows.items()}


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
    scope = FisherScope(model, tokenizer)
    hidden = model.get_output_embeddings().weight.shape[1]
    seeds, cache_file = args.fisher_seeds, args.fisher_exact
    settings = {"methods": args.fisher_methods, "max_tokens": args.max_tokens, "data": str(args.data)}
    if seeds > 1 or cache_file:  # only then: studies of earlier versions resume as before
        settings |= {"seeds": seeds, "exact_from": cache_file}
    device = model.get_input_embeddings().weight.device
    cached = _read_exact_cache(cache_file) if cache_file else {}
    if cached:
        prompts = [p for p in load_prompts(args.data) if p.id in cached][: args.fisher_n]
    else:
        prompts = load_prompts(args.data, args.fisher_n, offset=args.fisher_offset)

    def one_prompt(prompt) -> dict:
        ids = encode(tokenizer, prompt.text, args.max_tokens, device)
        return _fisher_record(scope, ids, args.fisher_methods, seeds, cached.get(prompt.id))

    path = run_sharded(prompts, one_prompt, out_dir, desc="Fisher accuracy", meta=settings, overwrite=args.overwrite,
                       size_flag="--fisher-n")
    return fisher_summary(read_records(path), args.fisher_methods, hidden)


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
    scope = FisherScope(model, tokenizer)
    device = model.get_input_embeddings().weight.device
    prompts = load_prompts(args.data, args.fisher_n, offset=args.fisher_offset)

    def one_prompt(prompt) -> dict:
        ids = encode(tokenizer, prompt.text, args.max_tokens, device)
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


FISHER_STATS = ("spearman", "rel_l2", "time_ratio")
#: Subfolder of the speed benchmark's output holding the Fisher study's runner files.
FISHER_DIR = "fisher_accuracy"


# -- reporting ---------------------------------------------------------------------
def environment(args, model) -> dict:
    import captum
    import transformers

    return {
        "model": describe_model(model),
        "dtype": str(next(model.parameters()).dtype),
        "device": str(model.get_input_embeddings().weight.device),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {
            "captum_jscopes": package_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "captum": captum.__version__,
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
    }


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# Speed: {env['model']} on {env['device']} ({env['dtype']}, {env['torch_threads']} threads)",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    single = results.get("single_token")
    if single:
        floor = single["floor"]["seconds"]
        ig = single.get(IG_REFERENCE, {}).get("seconds")
        floor_mem = single["floor"].get("peak_extra_mib")
        lines += [
            f"## Per explained token, median over {env['settings']['n']} LAMBADA prompts",
            "",
            "| method | seconds | x floor | IG-50 / method | peak extra MiB | x floor memory |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in single.items():
            mem = row.get("peak_extra_mib")
            lines.append(
                f"| {name} | {row['seconds']:.4f} | {row['seconds'] / floor:.2f} | "
                f"{(ig / row['seconds']) if ig else float('nan'):.1f} | "
                f"{'' if mem is None else f'{mem:.0f}'} | "
                f"{'' if mem is None or not floor_mem else f'{mem / floor_mem:.2f}'} |"
            )
    multi = results.get("multi_token")
    if multi:
        lines += [
            "",
            f"## Multi-token target ({env['settings']['multi_token']} tokens), seconds per target token",
            "",
            "| method | seconds | speed-up |",
            "|---|---:|---:|",
            f"| Captum LLMGradientAttribution(LayerGradientXActivation), per-token loop | "
            f"{multi['captum_gradient_loop']:.4f} | 1.00 |",
            f"| LLMScopeAttribution(SemanticScope), one forward | {multi['ours_semantic']:.4f} | "
            f"{multi['captum_gradient_loop'] / multi['ours_semantic']:.2f} |",
        ]
    lengths = results.get("lengths")
    if lengths:
        columns = sorted({int(n) for row in lengths.values() for n in row})
        lines += ["", "## Seconds per call by prompt length (ratio to the floor)", ""]
        lines += ["| method | " + " | ".join(str(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, row in lengths.items():
            cells = [
                f"{row[str(c)]:.3f} ({row[str(c)] / lengths['floor'][str(c)]:.1f}x)" if str(c) in row else "-"
                for c in columns
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    memory = results.get("lengths_peak_extra_mib")
    if memory:
        lines += ["", "## Peak extra memory by prompt length, MiB (ratio to the floor); one call in a fresh process",
                  "", "| method | " + " | ".join(str(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
        floor = memory.get("floor", {})

        def cell(row, c):
            if str(c) not in row:
                return "-"
            if row[str(c)] is None:
                return "failed"
            ratio = f" ({row[str(c)] / floor[str(c)]:.2f}x)" if floor.get(str(c)) else ""
            return f"{row[str(c)]:,.0f}{ratio}"

        for name, row in memory.items():
            lines.append(f"| {name} | " + " | ".join(cell(row, c) for c in columns) + " |")
        lines += ["", "'failed': the call ran out of memory or past the time limit; '-': skipped after a call "
                  "slower than `--length-max-seconds` (or IG past its maximum length)."]
    accuracy = results.get("fisher_accuracy")
    if accuracy:
        lines += [
            "",
            f"## Fisher estimators against exact, {env['settings']['fisher_n']} prompts (medians; worst prompt"
            + (f"; {env['settings'].get('fisher_seeds')} seeds each" if env["settings"].get("fisher_seeds", 1) > 1
               else "") + ")",
            "",
            "| estimator | passes | Spearman | rel. L2 error | time / exact | top-5 in 95% interval |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in sorted(accuracy.items(), key=lambda item: item[1]["vjps"]):
            # an adaptive estimator (tol=) runs a varying number of passes: median (max)
            passes = (f"{row['median_passes']:g} ({row['max_passes']})" if row.get("median_passes") is not None
                      and row["median_passes"] != row["vjps"] else f"{row['vjps']}")
            coverage = f"{row['top5_coverage']:.1%}" if "top5_coverage" in row else ""
            lines.append(
                f"| {name} | {passes} | {row['median_spearman']:.4f} ({row.get('worst_spearman', 1.0):.4f}) | "
                f"{row['median_rel_l2']:.4f} ({row.get('worst_rel_l2', 0.0):.4f}) | {row['median_time_ratio']:.3f} | "
                f"{coverage} |"
            )
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if results.get("single_token"):
        single = results["single_token"]
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(single)
        ax.barh(names, [single[n]["seconds"] for n in names], color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per explained token (log)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "speed.png", dpi=120)
        written.append(out / "speed.png")
    if results.get("lengths"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, row in results["lengths"].items():
            xs = sorted(int(n) for n in row)
            ax.plot(xs, [row[str(x)] for x in xs], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", ylabel="seconds per call")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "lengths.png", dpi=120)
        written.append(out / "lengths.png")
    if results.get("fisher_accuracy"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for name, row in results["fisher_accuracy"].items():
            axes[0].scatter(row["vjps"], 1 - row["median_spearman"] + 1e-6, label=name)
            axes[1].scatter(row["vjps"], row["median_rel_l2"] + 1e-6, label=name)
        axes[0].set(xscale="log", yscale="log", xlabel="backward passes", ylabel="1 - Spearman (median)")
        axes[1].set(xscale="log", yscale="log", xlabel="backward passes", ylabel="relative L2 error (median)")
        axes[1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(out / "fisher_accuracy.png", dpi=120)
        written.append(out / "fisher_accuracy.png")
    return written


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jscopes bench speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="name or path (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default=None,
                        help="a shipped prompt set (lambada, opus_de_en) or a JSON/JSONL file (default: lambada)")
    parser.add_argument("--n", type=int, default=10, help="prompts for the per-token table (default 10)")
    parser.add_argument("--n-slow", type=int, default=3, help="prompts for IG-50, ablation, exact Fisher and multi-token")
    parser.add_argument("--max-tokens", type=int, default=0, help="keep the last L tokens of each prompt (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default=",".join(SINGLE_TOKEN_METHODS))
    parser.add_argument("--lengths", default="64,256,1024,2048", help="comma-separated prompt lengths; '' to skip")
    parser.add_argument("--length-methods", default=",".join(LENGTH_METHODS))
    parser.add_argument("--length-memory", action="store_true",
                        help="by length: one call per method in a fresh process, recording its time and peak memory")
    parser.add_argument("--length-max-seconds", type=float, default=0,
                        help="by length: skip a method's longer lengths after a call slower than this (0: never)")
    parser.add_argument("--multi-token", type=int, default=16, help="target length; 0 to skip")
    parser.add_argument("--fisher-n", type=int, default=0, help="prompts for the Fisher accuracy study (0: skip)")
    parser.add_argument("--fisher-methods", default=",".join(FISHER_STUDY_METHODS),
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
    parser.add_argument("--skip-speed", action="store_true", help="only the Fisher accuracy study")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the Fisher study's records of a run with other settings (default: refuse)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_RESULTS_FOLDER}/speed-<model>-<device> under the current folder)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild speed.md and the plots from the speed.json in --out")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.length_methods = [m for m in args.length_methods.split(",") if m]
    args.fisher_methods = [m for m in args.fisher_methods.split(",") if m]
    args.lengths = [int(n) for n in args.lengths.split(",") if n]
    for name in args.methods + args.length_methods:
        if name != "floor" and name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from floor, {', '.join(METHODS)}")
    for name in args.fisher_methods:
        # the study compares Fisher estimators: the methods that name one
        if name not in METHODS or "estimator" not in METHODS[name].options:
            fisher = [n for n, m in METHODS.items() if "estimator" in m.options]
            parser.error(f"unknown Fisher method {name!r}; choose from {', '.join(fisher)}")
    if (args.report_only or args.fisher_pool) and not args.out:
        parser.error("--report-only and --fisher-pool need --out (the folder holding speed.json)")
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    return args


def main(argv=None) -> int:
    import sys

    args = parse_args(argv)
    if args.report_only:
        return report_only(Path(args.out))
    if args.fisher_pool:
        folders = [d for d in args.fisher_pool.split(",") if d]
        try:
            pooled = pool_fisher_studies([Path(d) for d in folders])
        except ValueError as err:
            print(f"speed benchmark: error: {cli_message(err)}", file=sys.stderr)
            return 2
        # the machine and model of the first study (pooled studies ran the same model)
        results = {"environment": json.loads((Path(folders[0]) / "speed.json").read_text())["environment"],
                   "command": "jscopes bench speed " + " ".join(sys.argv[1:] if argv is None else argv),
                   "pooled_from": folders, "fisher_accuracy": pooled}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.json").write_text(json.dumps(results, indent=1))
        (out / "speed.md").write_text(markdown(results))
        print(markdown(results))
        return 0
    torch.set_num_threads(args.threads)
    if args.fisher_cache_exact:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
        path = cache_exact_fisher(args, model, tokenizer, Path(args.fisher_cache_exact))
        print(f"exact Fisher scores of {len(read_records(path))} prompts in {path}")
        return 0
    model, tokenizer, device, encoded, targets = prepare(args)
    results: dict = {
        "environment": environment(args, model),
        "command": "jscopes bench speed " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if not args.skip_speed:
        results["single_token"] = bench_single_token(args, model, tokenizer, device, encoded, targets)
        if args.multi_token:
            results["multi_token"] = bench_multi_token(args, model, tokenizer, encoded)
        if args.lengths:
            results["lengths"], memory = bench_lengths(args, model, tokenizer, device, encoded, targets)
            if memory:
                results["lengths_peak_extra_mib"] = memory
    default_name = f"speed-{describe_model(model)}-{device.type}" + ("-fisher" if args.skip_speed else "")
    out = Path(args.out or Path(DEFAULT_RESULTS_FOLDER) / default_name)
    out.mkdir(parents=True, exist_ok=True)
    if args.fisher_n:
        try:
            results["fisher_accuracy"] = fisher_accuracy(args, model, tokenizer, out / FISHER_DIR)
        except ValueError as err:  # e.g. an earlier study with other settings in the same folder
            print(f"speed benchmark: error: {cli_message(err)}", file=sys.stderr)
            return 2
    (out / "speed.json").write_text(json.dumps(results, indent=1))
    (out / "speed.md").write_text(markdown(results))
    plots(results, out)
    print(markdown(results))
    print(f"written to {out}/")
    return 0


def report_only(out: Path) -> int:
    """Rebuild ``speed.md`` and the plots from ``out/speed.json`` (also one written
    with the method names of earlier versions, :data:`LEGACY_NAMES`)."""
    import sys

    path = out / "speed.json"
    if not path.is_file():
        print(f"speed benchmark: error: {path} not found; run the benchmark first", file=sys.stderr)
        return 2
    results = with_current_names(json.loads(path.read_text()))
    (out / "speed.md").write_text(markdown(results))
    plots(results, out)
    print(f"rebuilt {out / 'speed.md'}")
    return 0


def with_current_names(results: dict) -> dict:
    """``results`` with the method names of earlier versions replaced by today's."""
    renamed = dict(results)
    for table in ("single_token", "lengths"):
        if table in results:
            renamed[table] = {LEGACY_NAMES.get(name, name): row for name, row in results[table].items()}
    return renamed


if __name__ == "__main__":
    raise SystemExit(main())
