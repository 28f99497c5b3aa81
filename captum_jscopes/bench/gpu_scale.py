"""GPU scale benchmark: the scopes and Captum's IG-50 on random-weight models of
real shapes (Llama-3.2-1B, Llama-3-8B) at long contexts, as ratios to the floor.

    python benchmarks/gpu_scale.py                     # on a GPU: both shapes, 2048-8192 tokens, bfloat16
    python benchmarks/gpu_scale.py --tiny              # a tiny shape on the CPU in seconds (what CI runs)
    python benchmarks/gpu_scale.py --report-only --out benchmarks/results/gpu-scale   # rebuild gpu_scale.md

Random weights cost the same compute and memory as trained ones, so the model
is built from its config (no download). The floor is the same as in the speed
benchmark: one forward from the input embeddings with logits at the last
position only and one backward of one logit to the embeddings. Every method
explains the last position's prediction. Times are medians over ``--repeats``
after one warm-up, with the device synchronised; peak memory is
``torch.cuda.max_memory_allocated`` above what was in use before (on the CPU,
the process's resident memory, which only grows: read it as an upper bound).
A method that runs out of memory is recorded as "OOM", and the longer lengths of
a method whose last call exceeded ``--max-seconds`` are skipped (recorded as
"skipped").
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from captum_jscopes.core.provenance import package_version
from captum_jscopes.bench.speed import make_method, median_time, peak_extra_memory

#: Llama configurations, without downloading anything: the published shapes.
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
METHODS = ("floor", "semantic", "temperature", "fisher_krylov", "ig50")  # Fisher: the default estimator
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: What ``--tiny`` sets (CPU, seconds).
TINY = dict(shapes=["tiny"], lengths=[32, 64], dtype="float32", device="cpu", repeats=1)
DEFAULT_OUT = Path("benchmarks/results/gpu-scale")


def build_model(shape: str, dtype: torch.dtype, device: str, seed: int = 0) -> torch.nn.Module:
    """A random-weight LlamaForCausalLM of ``SHAPES[shape]``, in eval mode, on ``device``."""
    import transformers

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    config = transformers.LlamaConfig(max_position_embeddings=8192, **SHAPES[shape])
    torch.manual_seed(seed)
    # Built directly on the device in the target dtype: an 8B model never exists in float32.
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _synchronised(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    def run():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower() \
        or "can't allocate memory" in str(error).lower()


def bench_shape(shape: str, args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """{"shape", "config", "lengths": {n: {method: {"seconds", "ratio", "peak_mib"} | {"status"}}}}."""
    model = build_model(shape, DTYPES[args.dtype], args.device, seed=args.seed)
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    out: dict = {"shape": shape, "config": SHAPES[shape], "lengths": {}}
    too_slow: set[str] = set()
    for n in args.lengths:
        ids = torch.randint(0, vocab, (n,), generator=generator).to(device)
        target = int(torch.randint(0, vocab, (1,), generator=generator))
        row: dict = {}
        for name in args.methods:
            if name in too_slow:
                row[name] = {"status": "skipped"}
                continue
            fn = make_method(name, model, None)
            call = _synchronised(lambda: fn(ids, target), device)
            try:
                seconds = median_time(call, repeats=args.repeats, warmup=1)
                peak = peak_extra_memory(call, device)
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not _is_oom(error):
                    raise
                row[name] = {"status": "OOM"}
                too_slow.add(name)
                log(f"{shape} n={n} {name}: out of memory")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            row[name] = {"seconds": seconds, "peak_mib": peak}
            if seconds > args.max_seconds:
                too_slow.add(name)
            log(f"{shape} n={n} {name}: {seconds:.3f} s, peak {peak:.0f} MiB")
        floor = row.get("floor", {}).get("seconds")
        for entry in row.values():
            if floor and "seconds" in entry:
                entry["ratio"] = entry["seconds"] / floor
        out["lengths"][str(n)] = row
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def environment(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "captum_jscopes": package_version(),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "command": args.command,
    }


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# GPU scale: random-weight Llama shapes, last-position attribution",
        "",
        f"Device: {env['device']}; {env['dtype']}; torch {env['torch']}; median of {env['repeats']} after a warm-up.",
        f"Command: `{env['command']}`",
        "",
        "Each cell: seconds (ratio to the floor), peak memory in MiB above the model's weights.",
        "",
    ]
    for shape in results["shapes"]:
        methods = list(next(iter(shape["lengths"].values())).keys()) if shape["lengths"] else []
        lines += [f"## {shape['shape']}", "", "| tokens | " + " | ".join(methods) + " |",
                  "|---:|" + "---:|" * len(methods)]
        for n, row in shape["lengths"].items():
            cells = []
            for name in methods:
                entry = row[name]
                if "seconds" not in entry:
                    cells.append(entry["status"])
                else:
                    ratio = f" ({entry['ratio']:.2f}x)" if "ratio" in entry else ""
                    cells.append(f"{entry['seconds']:.3g} s{ratio}, {entry['peak_mib']:.0f} MiB")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="llama-3.2-1b,llama-3-8b", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--lengths", default="2048,4096,8192", help="comma list of prompt lengths in tokens")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="skip a method's longer lengths after a call slower than this (default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the tiny shape on the CPU at 32 and 64 tokens")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report-only", action="store_true", help="rebuild gpu_scale.md from gpu_scale.json")
    args = parser.parse_args(argv)
    args.command = " ".join(["python benchmarks/gpu_scale.py", *(sys.argv[1:] if argv is None else argv)])
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.lengths = [int(n) for n in str(args.lengths).split(",") if n]
    args.methods = [m for m in args.methods.split(",") if m]
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    unknown = [s for s in args.shapes if s not in SHAPES] + [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown shapes or methods: {', '.join(unknown)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but this torch has no CUDA device; use --tiny on a CPU")
    if args.repeats < 1 or any(n < 2 for n in args.lengths):
        parser.error("--repeats must be >= 1 and every length >= 2")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "gpu_scale.json", args.out / "gpu_scale.md"
    if args.report_only:
        results = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        start = time.time()
        results = {"environment": environment(args), "shapes": [bench_shape(s, args) for s in args.shapes]}
        results["environment"]["seconds"] = time.time() - start
        json_path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    md_path.write_text(markdown(results), encoding="utf-8")
    print(f"wrote {md_path}")
    return 0
