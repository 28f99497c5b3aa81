"""Speed benchmark: the cost of every attribution method per explained token,
as ratios to a physical floor and to Captum's Integrated Gradients, measured in
one run on the same prompts.

    python benchmarks/speed.py --n 10            # or: jscopes bench speed --n 10
    python benchmarks/speed.py --fisher-n 50 --skip-speed   # Fisher accuracy vs cost
    python benchmarks/speed.py --report-only --out benchmarks/results/speed-...   # rebuild speed.md

The Fisher study (``--fisher-*`` flags) is :mod:`captum_jscopes.bench.fisher_study`;
the report (``speed.md``, the plots) :mod:`captum_jscopes.bench.speed_report`.

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
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from captum_jscopes.bench import fisher_study
from captum_jscopes.bench.common import DEFAULT_RESULTS_FOLDER, cli_message
from captum_jscopes.bench.fisher_study import FISHER_DIR, fisher_accuracy
from captum_jscopes.bench.methods import METHODS, method
from captum_jscopes.bench.speed_report import IG_REFERENCE, environment, markdown, plots, report_only
from captum_jscopes.core.model_state import preserved_state
from captum_jscopes.integrations.captum import LLMScopeAttribution
from captum_jscopes.models import describe_model, load_model
from captum_jscopes.runs.prompts import load_prompts, prepare_prompt
from captum_jscopes.scopes.semantic import SemanticScope

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
IG_MAX_LENGTH = 256  # 50 interpolation steps in one batch: beyond this the CPU run takes minutes per call


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
    fisher_study.add_arguments(parser)
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
    args.lengths = [int(n) for n in args.lengths.split(",") if n]
    for name in args.methods + args.length_methods:
        if name != "floor" and name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from floor, {', '.join(METHODS)}")
    fisher_study.check_arguments(parser, args)
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
    command = "jscopes bench speed " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.fisher_pool:
        return fisher_study.pool_main(args, command)
    torch.set_num_threads(args.threads)
    if args.fisher_cache_exact:
        return fisher_study.cache_main(args)
    model, tokenizer, device, encoded, targets = prepare(args)
    results: dict = {
        "environment": environment(args, model),
        "command": command,
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


if __name__ == "__main__":
    raise SystemExit(main())
