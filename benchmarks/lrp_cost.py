"""Cost of rules="lrp" (and reduce="input") against the plain scope, per scope, on LAMBADA passages.

Each prompt is timed with every variant interleaved (plain, +lrp, +input, +lrp+input, and
LXT's AttnLRP where installed), after one warm-up call, the best of --repeat rounds (robust to
other jobs on a shared CPU), in CPU seconds of the process; the table gives the median time per prompt and the median ratio to
the plain scope over the prompts, on one thread. Writes
benchmarks/results/lrp_cost.md (or --out).

    .venv/bin/python benchmarks/lrp_cost.py --model smollm2 --n 10
    .venv/bin/python benchmarks/lrp_cost.py --model gemma3-270m --n 10
    .venv/bin/python benchmarks/lrp_cost.py --n 4 --repeat 2 --scopes fisher_krylov   # the Fisher default only
"""
import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from captum_jscopes import FisherScope, SemanticScope, TemperatureScope, load_model
from captum_jscopes.runs.prompts import load_prompts, prepare_prompt

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", default="smollm2", help="smollm2 (default) or gemma3-270m")
parser.add_argument("--n", type=int, default=10, help="LAMBADA prompts (default 10)")
parser.add_argument("--repeat", type=int, default=3, help="rounds per prompt, the fastest kept (default 3)")
parser.add_argument("--scopes", default="semantic,temperature,fisher_eig1,fisher_krylov",
                    help="which rows, comma-separated (default all: semantic,temperature,fisher_eig1,fisher_krylov)")
parser.add_argument("--out", default=None, help="Markdown file to append to, row by row (default benchmarks/results/lrp_cost.md)")
args = parser.parse_args()
VARIANTS = {"plain": {}, "+lrp": {"rules": "lrp"}, "+input": {"reduce": "input"},
            "+lrp+input": {"rules": "lrp", "reduce": "input"}}
SCOPES = {"semantic": (SemanticScope, {}), "temperature": (TemperatureScope, {}),
          "fisher_eig1": (FisherScope, {"estimator": "eig", "k": 1}), "fisher_krylov": (FisherScope, {})}  # the Fisher default
chosen = [name for name in args.scopes.split(",") if name]
if unknown := [name for name in chosen if name not in SCOPES]:
    parser.error(f"unknown --scopes {', '.join(unknown)}; choose from {', '.join(SCOPES)}")

torch.set_num_threads(1)
model, tok = load_model() if args.model == "smollm2" else load_model(args.model)
prompts = [prepare_prompt(tok, p.text).input_ids for p in load_prompts("lambada", args.n)]
try:
    from captum_jscopes.bench.attnlrp import attnlrp_scores

    attnlrp_scores(model, tok, prompts[0], 0)
except ImportError:
    attnlrp_scores = None


def seconds(call):
    # CPU seconds of this process (one thread): unlike wall time, not inflated by other jobs on the machine
    best = float("inf")
    for _ in range(args.repeat):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return best


lengths = [ids.shape[1] for ids in prompts]
out = Path(args.out or Path(__file__).parent / "results" / "lrp_cost.md")


def write(line: str) -> None:
    # row by row: a run cut short (a time limit) keeps what it measured
    print(line, flush=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(line + "\n")


write(f"\n## {args.model}: {args.n} LAMBADA prompts ({min(lengths)}-{max(lengths)} tokens), 1 thread, best of "
      f"{args.repeat}, {platform.processor() or platform.machine()}\n")
write(f"`.venv/bin/python benchmarks/lrp_cost.py --model {args.model} --n {args.n} --repeat {args.repeat} "
      f"--scopes {','.join(chosen)}`\n")
write("| scope | variant | median CPU s per prompt | median ratio to plain |\n|---|---|---|---|")
for name in chosen:
    cls, options = SCOPES[name]
    scope = cls(model, tok)
    times = {v: [] for v in VARIANTS}
    if name == "semantic" and attnlrp_scores is not None:
        times["AttnLRP (LXT)"] = []
    for ids in prompts:
        with torch.no_grad():
            target = int(model(ids).logits[0, -1].argmax())
        extra = {"target": target} if cls.takes_target else {}
        scope.attribute(ids, **extra, **options)  # warm-up
        for v, more in VARIANTS.items():
            times[v].append(seconds(lambda: scope.attribute(ids, **extra, **options, **more)))
        if "AttnLRP (LXT)" in times:
            times["AttnLRP (LXT)"].append(seconds(lambda: attnlrp_scores(model, tok, ids, target)))
    for v, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, times["plain"]))
        write(f"| {name} | {v} | {statistics.median(t):.3f} | {ratio:.2f} |")
