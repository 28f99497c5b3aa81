"""Cost of the ablation metrics with the intact prompt's key/value cache reused, against whole forwards.

On each LAMBADA prompt, the same ablated variants run two ways, interleaved, after one warm-up:
through ``AblatedPrompt`` (each batch starts at its earliest ablated token from the intact
prompt's states: what leave_one_out, the deletion curves and the sink report do) and through
``ablated_log_probs`` (every variant whole, the reference). Two workloads: leave-one-out (every
token alone) and the deletion points of the study (the top 5/10/20% of five score vectors: the
drop of log p(y*) when each token alone is zeroed (leave-one-out's ranking), the embedding norms
and three random vectors; the curves of a real attribution sit between the first and the random ones). CPU seconds of the
process on one thread, best of --repeat rounds; the table gives the median per prompt and the
median ratio whole / reused, and the largest difference of the log-probabilities. Appends to
benchmarks/results/ablation_reuse.md (or --out).

    .venv/bin/python benchmarks/ablation_reuse.py --n 5
    .venv/bin/python benchmarks/ablation_reuse.py --model gemma3-270m --n 5
"""
import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from captum_jscopes import load_model
from captum_jscopes.metrics import AblatedPrompt, AblationSettings, ablated_log_probs, n_tokens_for_fraction, rank_tokens
from captum_jscopes.runs.prompts import load_prompts, prepare_prompt

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", default="smollm2", help="smollm2 (default) or gemma3-270m")
parser.add_argument("--n", type=int, default=5, help="LAMBADA prompts (default 5)")
parser.add_argument("--repeat", type=int, default=2, help="rounds per prompt, the fastest kept (default 2)")
parser.add_argument("--out", default=None,
                    help="Markdown file to append to (default benchmarks/results/ablation_reuse.md)")
args = parser.parse_args()

torch.set_num_threads(1)
model, tok = load_model() if args.model == "smollm2" else load_model(args.model)
prompts = [prepare_prompt(tok, p.text).input_ids[0] for p in load_prompts("lambada", args.n)]
settings = AblationSettings(tokenizer=tok)
FRACTIONS = (0.05, 0.1, 0.2)


def workloads(prepared: AblatedPrompt) -> dict[str, torch.Tensor]:
    """(V, n) ablation rows of each workload, duplicates removed (as the metrics do)."""
    positions = prepared.rankable.nonzero().flatten()
    loo = prepared.masks([t.view(1) for t in positions])
    drop = -ablated_log_probs(model, prepared.ids, loo, settings=settings)[:, prepared.target]
    scores = [torch.zeros(prepared.n).index_put_((positions,), drop.float()),
              model.get_input_embeddings().weight[prepared.ids].norm(dim=-1).detach()]
    scores += [torch.randn(prepared.n, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    counts = [n_tokens_for_fraction(f, prepared.m) for f in FRACTIONS]
    tops = [rank_tokens(s, prepared.rankable)[:k] for s in scores for k in counts]
    return {"leave-one-out": loo, "deletion points": torch.unique(prepared.masks(tops), dim=0)}


def seconds(call):
    # CPU seconds of this process (one thread): unlike wall time, not inflated by other jobs on the machine
    best, result = float("inf"), None
    for _ in range(args.repeat):
        start = time.process_time()
        result = call()
        best = min(best, time.process_time() - start)
    return best, result


out = Path(args.out or Path(__file__).parent / "results" / "ablation_reuse.md")
lengths = [ids.shape[0] for ids in prompts]
rows = {}
with torch.no_grad():
    for ids in prompts:
        prepared = AblatedPrompt.prepare(model, ids, -1, settings)
        assert prepared.intact is not None, "this model's cache cannot be reused"
        for name, ablate in workloads(prepared).items():
            prepared.run(ablate[:2])  # warm-up
            reused, fast = seconds(lambda: prepared.run(ablate))
            whole, slow = seconds(lambda: ablated_log_probs(model, ids, ablate, settings=settings))
            rows.setdefault(name, []).append((reused, whole, float((fast - slow).abs().max()), ablate.shape[0]))

lines = [f"\n## {args.model}: {args.n} LAMBADA prompts ({min(lengths)}-{max(lengths)} tokens), 1 thread, best of "
         f"{args.repeat}, {platform.processor() or platform.machine()}\n",
         f"`.venv/bin/python benchmarks/ablation_reuse.py --model {args.model} --n {args.n} --repeat {args.repeat}`\n",
         "| workload | variants per prompt (median) | reused: median CPU s | whole: median CPU s "
         "| median ratio whole / reused | largest log-prob difference |",
         "|---|---|---|---|---|---|"]
for name, r in rows.items():
    lines.append(f"| {name} | {statistics.median(x[3] for x in r):.0f} | {statistics.median(x[0] for x in r):.2f} "
                 f"| {statistics.median(x[1] for x in r):.2f} | {statistics.median(x[1] / x[0] for x in r):.2f} "
                 f"| {max(x[2] for x in r):.1e} |")
print("\n".join(lines))
with open(out, "a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
