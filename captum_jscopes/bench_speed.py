"""Speed benchmark: the cost of every attribution method per explained token,
as ratios to a physical floor and to Captum's Integrated Gradients, measured in
one run on the same prompts.

    python benchmarks/speed.py --n 10            # or: jscopes bench speed --n 10
    python benchmarks/speed.py --fisher-n 50 --skip-speed   # Fisher accuracy vs cost

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

SINGLE_TOKEN_METHODS = [
    "floor",
    "semantic",
    "temperature",
    "fisher",
    "fisher_exact",
    "fisher_eig1",
    "fisher_eig4",
    "fisher_eig16",
    "captum_ig50",
    "captum_gradient",
    "captum_grad_x_input",
    "captum_feature_ablation",
]
LENGTH_METHODS = ["floor", "semantic", "temperature", "fisher", "fisher_eig1", "captum_ig50"]
IG_MAX_LENGTH = 256  # 50 interpolation steps in one batch: beyond this the CPU run takes minutes per call


# -- the methods ---------------------------------------------------------------
def token_input(ids: torch.Tensor, tokenizer: Any):
    """A Captum TextTokenInput holding exactly these token ids (decoding and
    re-encoding text need not give the same ids back)."""
    from captum.attr import TextTokenInput

    inp = TextTokenInput(tokenizer.decode(ids.tolist()), tokenizer)
    inp.inp_tensor = inp.itp_tensor = ids[None].cpu()
    inp.values = tokenizer.convert_ids_to_tokens(ids.tolist())
    inp.n_itp_features = len(inp.values)
    return inp


def make_method(name: str, model: Any, tokenizer: Any) -> Callable[[torch.Tensor, int], Any]:
    """``fn(ids (n,), target_id)`` running one attribution of the last position."""
    from captum.attr import (
        FeatureAblation,
        LayerGradientXActivation,
        LayerIntegratedGradients,
        LLMAttribution,
        LLMGradientAttribution,
    )

    from . import FisherScope, SemanticScope, TemperatureScope
    from .model_state import preserved_state

    emb = model.get_input_embeddings()
    if name == "floor":

        def floor(ids, target):
            with preserved_state(model):
                x = emb(ids[None]).detach().requires_grad_(True)
                logit = model(inputs_embeds=x, logits_to_keep=1, use_cache=False).logits[0, -1, target]
                return torch.autograd.grad(logit, x)[0]

        return floor
    if name == "semantic":
        scope = SemanticScope(model, tokenizer)
        return lambda ids, target: scope.attribute(ids, target=target)
    if name == "temperature":
        scope = TemperatureScope(model, tokenizer)
        return lambda ids, target: scope.attribute(ids)
    if name.startswith("fisher"):
        scope = FisherScope(model, tokenizer)
        options = fisher_options(name)
        return lambda ids, target: scope.attribute(ids, **options)
    if name.startswith("captum_feature_ablation"):
        attr = LLMAttribution(FeatureAblation(model), tokenizer)
        return lambda ids, target: attr.attribute(
            token_input(ids, tokenizer), target=torch.tensor([target]), use_cached_outputs=False
        )
    captum_methods = {
        "captum_ig50": (lambda: LayerIntegratedGradients(model, emb), {"n_steps": 50}),
        "captum_gradient": (lambda: LayerGradientXActivation(model, emb, multiply_by_inputs=False), {}),
        "captum_grad_x_input": (lambda: LayerGradientXActivation(model, emb), {}),
    }
    if name not in captum_methods:
        raise ValueError(f"unknown method {name!r}; choose from {SINGLE_TOKEN_METHODS}")
    build, kwargs = captum_methods[name]
    attr = LLMGradientAttribution(build(), tokenizer)
    return lambda ids, target: attr.attribute(token_input(ids, tokenizer), target=torch.tensor([target]), **kwargs)


def fisher_options(name: str) -> dict:
    """Options of FisherScope for a benchmark method name: fisher (default),
    fisher_exact, fisher_eigK, fisher_deflated_K_M."""
    if name == "fisher":
        return {}
    if name == "fisher_exact":
        return {"method": "exact"}
    if name.startswith("fisher_eig"):
        return {"method": "eig", "k": int(name[len("fisher_eig") :])}
    if name.startswith("fisher_deflated_"):
        k, m = name[len("fisher_deflated_") :].split("_")
        return {"method": "deflated", "k": int(k), "n_probes": int(m)}
    raise ValueError(f"unknown Fisher method {name!r}")


def n_vjps(name: str, hidden_size: int) -> int:
    """Backward passes a Fisher estimator uses (one per probe direction)."""
    options = fisher_options(name)
    method = options.get("method", "deflated")
    if method == "exact":
        return hidden_size
    k = options.get("k", 1 if method == "eig" else 16)
    return k if method == "eig" else k + options.get("n_probes", 24)


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


def _memory_child(spec: str) -> None:
    """Entry of the fresh process: measure one method once, print MiB, exit hard
    (skipping interpreter teardown, which can hang on thread pools)."""
    import sys

    job = json.loads(spec)
    torch.set_num_threads(job["threads"])
    from .models import load_model

    model, tokenizer = load_model(job["model"], dtype=job["dtype"], device=job["device"], progress=False)
    fn = make_method(job["method"], model, tokenizer)
    ids = torch.tensor(job["ids"], device=model.get_input_embeddings().weight.device)
    with torch.no_grad():
        model(ids[None, :4])  # initialise kernels and thread pools outside the measurement
    print(json.dumps(peak_extra_memory(lambda: fn(ids, job["target"]), ids.device)))
    sys.stdout.flush()
    os._exit(0)


def memory_in_fresh_process(args, method: str, ids: torch.Tensor, target: int) -> Optional[float]:
    """CPU allocators keep freed memory, so each method gets a fresh process."""
    import subprocess
    import sys

    spec = json.dumps({"model": args.model, "dtype": args.dtype, "device": args.device, "method": method,
                       "ids": ids.tolist(), "target": target, "threads": args.threads})
    code = "import sys; from captum_jscopes.bench_speed import _memory_child; _memory_child(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.strip().splitlines()
    return float(lines[-1]) if done.returncode == 0 and lines else None


# -- the benchmark -----------------------------------------------------------------
def encode(tokenizer: Any, text: str, max_tokens: int, device: Any) -> torch.Tensor:
    """The passage minus its last token (the target word), its last ``max_tokens`` tokens (0: all)."""
    return torch.tensor(tokenizer(text)["input_ids"][:-1][-max_tokens:], device=device)


def prepare(args):
    from .models import load_model
    from .runner import load_prompts

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    device = model.get_input_embeddings().weight.device
    encoded = [encode(tokenizer, p.text, args.max_tokens, device) for p in load_prompts(args.data, args.n)]
    with torch.no_grad():
        targets = [int(model(ids[None]).logits[0, -1].argmax()) for ids in encoded]
    return model, tokenizer, device, encoded, targets


def bench_single_token(args, model, tokenizer, device, encoded, targets) -> dict:
    rows = {}
    for method in tqdm(args.methods, desc="methods"):
        fn = make_method(method, model, tokenizer)
        repeats = 1 if method in ("captum_ig50", "captum_feature_ablation", "fisher_exact") else args.repeats
        times = [
            median_time(lambda: fn(ids, target), repeats, args.warmup)
            for ids, target in zip(encoded[: args.n_slow if repeats == 1 else None], targets)
        ]
        memory = None if args.skip_memory else memory_in_fresh_process(args, method, encoded[0], targets[0])
        rows[method] = {"seconds": statistics.median(times), "per_prompt": times, "peak_extra_mib": memory}
    return rows


def bench_lengths(args, model, tokenizer, device, encoded, targets) -> dict:
    stream = torch.cat(encoded)
    while stream.numel() < max(args.lengths):
        stream = torch.cat([stream, stream])
    out: dict = {}
    for length in tqdm(args.lengths, desc="lengths"):
        ids = stream[:length]
        with torch.no_grad():
            target = int(model(ids[None]).logits[0, -1].argmax())
        for method in args.length_methods:
            if method == "captum_ig50" and length > IG_MAX_LENGTH:
                continue
            fn = make_method(method, model, tokenizer)
            repeats = args.repeats if length <= 256 else 1
            out.setdefault(method, {})[str(length)] = median_time(lambda: fn(ids, target), repeats, 1)
    return out


def bench_multi_token(args, model, tokenizer, encoded) -> dict:
    """A 16-token target: our wrapper (one forward) against Captum's per-token loop."""
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution

    from . import LLMScopeAttribution, SemanticScope

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

    The prompts run through :func:`captum_jscopes.runner.run_sharded` into
    ``out_dir`` (exact Fisher costs minutes per prompt on a CPU): each record is
    saved as it finishes, a rerun computes only the missing prompts, and a rerun
    with other settings is refused unless ``args.overwrite``.
    """
    from . import FisherScope
    from .runner import load_prompts, read_records, run_sharded

    scope = FisherScope(model, tokenizer)
    hidden = model.get_output_embeddings().weight.shape[1]
    settings = {"methods": args.fisher_methods, "max_tokens": args.max_tokens, "data": str(args.data)}
    device = model.get_input_embeddings().weight.device

    def one_prompt(prompt) -> dict:
        return _fisher_record(scope, encode(tokenizer, prompt.text, args.max_tokens, device), args.fisher_methods)

    path = run_sharded(load_prompts(args.data, args.fisher_n), one_prompt, out_dir, desc="Fisher accuracy",
                       meta=settings, overwrite=args.overwrite)
    records = read_records(path)
    summary = {
        name: {
            "vjps": n_vjps(name, hidden),
            **{f"median_{key}": statistics.median(r[name][key] for r in records) for key in FISHER_STATS},
            "worst_spearman": min(r[name]["spearman"] for r in records),
            "worst_rel_l2": max(r[name]["rel_l2"] for r in records),
            "worst_time_ratio": max(r[name]["time_ratio"] for r in records),
        }
        for name in args.fisher_methods
    }
    exact_row = {"vjps": hidden, "median_spearman": 1.0, "median_rel_l2": 0.0, "median_time_ratio": 1.0}
    exact_row["median_seconds"] = statistics.median(r["exact_seconds"] for r in records)
    return summary | {"fisher_exact": exact_row}


def _fisher_record(scope, ids: torch.Tensor, methods: list[str]) -> dict:
    """One prompt of the Fisher study: each estimator's error and time against exact Fisher."""
    from scipy.stats import spearmanr

    start = time.perf_counter()
    exact = scope.attribute(ids, method="exact")[0]
    exact_time = time.perf_counter() - start
    scored = exact > 0
    record: dict = {"n_tokens": ids.numel(), "exact_seconds": exact_time}
    for name in methods:
        start = time.perf_counter()
        estimate = scope.attribute(ids, **fisher_options(name))[0]
        record[name] = {
            "time_ratio": (time.perf_counter() - start) / exact_time,
            "spearman": float(spearmanr(estimate[scored].cpu(), exact[scored].cpu()).statistic),
            "rel_l2": float((estimate - exact).norm() / exact.norm()),
        }
    return record


FISHER_STATS = ("spearman", "rel_l2", "time_ratio")
#: Subfolder of the speed benchmark's output holding the Fisher study's runner files.
FISHER_DIR = "fisher_accuracy"


# -- reporting ---------------------------------------------------------------------
def environment(args, model) -> dict:
    import captum
    import transformers

    from . import __version__
    from .models import describe_model

    return {
        "model": describe_model(model),
        "dtype": str(next(model.parameters()).dtype),
        "device": str(model.get_input_embeddings().weight.device),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {
            "captum_jscopes": __version__,
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
        ig = single.get("captum_ig50", {}).get("seconds")
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
    accuracy = results.get("fisher_accuracy")
    if accuracy:
        lines += [
            "",
            f"## Fisher estimators against exact, {env['settings']['fisher_n']} prompts (medians; worst prompt)",
            "",
            "| estimator | backward passes | Spearman | rel. L2 error | time / exact |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in sorted(accuracy.items(), key=lambda item: item[1]["vjps"]):
            lines.append(
                f"| {name} | {row['vjps']} | {row['median_spearman']:.4f} ({row.get('worst_spearman', 1.0):.4f}) | "
                f"{row['median_rel_l2']:.4f} ({row.get('worst_rel_l2', 0.0):.4f}) | {row['median_time_ratio']:.3f} |"
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
    parser.add_argument("--data", default=None, help="JSON/JSONL prompts (default: ../shared/data/lambada_1000.json)")
    parser.add_argument("--n", type=int, default=10, help="prompts for the per-token table (default 10)")
    parser.add_argument("--n-slow", type=int, default=3, help="prompts for IG-50, ablation, exact Fisher and multi-token")
    parser.add_argument("--max-tokens", type=int, default=0, help="keep the last L tokens of each prompt (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default=",".join(SINGLE_TOKEN_METHODS))
    parser.add_argument("--lengths", default="64,256,1024,2048", help="comma-separated prompt lengths; '' to skip")
    parser.add_argument("--length-methods", default=",".join(LENGTH_METHODS))
    parser.add_argument("--multi-token", type=int, default=16, help="target length; 0 to skip")
    parser.add_argument("--fisher-n", type=int, default=0, help="prompts for the Fisher accuracy study (0: skip)")
    parser.add_argument(
        "--fisher-methods",
        default="fisher,fisher_eig1,fisher_eig4,fisher_eig16,fisher_eig64,fisher_deflated_8_16,fisher_deflated_16_16,fisher_deflated_16_32",
    )
    parser.add_argument("--skip-speed", action="store_true", help="only the Fisher accuracy study")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the Fisher study's records of a run with other settings (default: refuse)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/speed-<model>-<device>)")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.length_methods = [m for m in args.length_methods.split(",") if m]
    args.fisher_methods = [m for m in args.fisher_methods.split(",") if m]
    args.lengths = [int(n) for n in args.lengths.split(",") if n]
    for name in args.methods + args.length_methods:
        if name not in SINGLE_TOKEN_METHODS:
            parser.error(f"unknown method {name!r}; choose from {', '.join(SINGLE_TOKEN_METHODS)}")
    for name in args.fisher_methods:
        try:
            fisher_options(name)
        except ValueError as err:
            parser.error(str(err))
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    return args


def main(argv=None) -> int:
    import sys

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
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
            results["lengths"] = bench_lengths(args, model, tokenizer, device, encoded, targets)
    from .models import describe_model

    default_name = f"speed-{describe_model(model)}-{device.type}" + ("-fisher" if args.skip_speed else "")
    out = Path(args.out or Path("benchmarks") / "results" / default_name)
    out.mkdir(parents=True, exist_ok=True)
    if args.fisher_n:
        try:
            results["fisher_accuracy"] = fisher_accuracy(args, model, tokenizer, out / FISHER_DIR)
        except ValueError as err:  # e.g. an earlier study with other settings in the same folder
            print(f"speed benchmark: error: {err}", file=sys.stderr)
            return 2
    (out / "speed.json").write_text(json.dumps(results, indent=1))
    (out / "speed.md").write_text(markdown(results))
    plots(results, out)
    print(markdown(results))
    print(f"written to {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
