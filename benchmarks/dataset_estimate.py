"""Does `jscopes attribute-dataset`'s estimate hold? Its price against the measured time on a file
that mixes short and long prompts.

Writes a JSONL file of --short prompts of about --short-tokens tokens and one of about
--long-tokens tokens (LAMBADA passages, cut or joined), prices it the way the command does before
its first prompt (captum_jscopes.runs.estimate.measure_run: passes timed at the prompts' lengths,
the cheap scopes calibrated on a few tokens), then runs it (attribute_dataset, one thread) and
compares, per prompt and in all: priced seconds, measured seconds (each scope's explain() call, as
summary.json records them) and the ratio. Also shows what the estimate of earlier versions said
(the first prompt's time times the number of prompts). Appends a table to
benchmarks/results/dataset_estimate.md (or --out).

    .venv/bin/python benchmarks/dataset_estimate.py --fisher-estimator eig      # a few minutes
    .venv/bin/python benchmarks/dataset_estimate.py                             # default krylov: longer
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from captum_jscopes import load_model
from captum_jscopes.runs.dataset import DatasetSettings, attribute_dataset, select_prompts
from captum_jscopes.runs.estimate import measure_run
from captum_jscopes.runs.prompts import load_prompts
from captum_jscopes.runs.progress import format_duration

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2-135M-Instruct)")
parser.add_argument("--scope", action="append", help="scopes (default: semantic and fisher)")
parser.add_argument("--fisher-estimator", default=None, help="Fisher estimator (default: the scope's, krylov)")
parser.add_argument("--short", type=int, default=4, help="short prompts (default 4)")
parser.add_argument("--short-tokens", type=int, default=20, help="tokens of a short prompt (default 20)")
parser.add_argument("--long-tokens", type=int, default=1500, help="tokens of the long prompt (default 1500)")
parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
parser.add_argument("--out", default=None, help="Markdown file to append to (default benchmarks/results/dataset_estimate.md)")
args = parser.parse_args()
torch.set_num_threads(args.threads)

model, tokenizer = load_model(args.model)
passages = [p.text for p in load_prompts("lambada", 200)]


def cut(text: str, n: int) -> str:
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:n])


texts = [cut(passages[i], args.short_tokens) for i in range(args.short)]
joined, i = "", args.short
while len(tokenizer(joined, add_special_tokens=False)["input_ids"]) < args.long_tokens:
    joined += passages[i] + "\n"
    i += 1
texts.insert(args.short // 2, cut(joined, args.long_tokens))  # the long one in the middle: not first, not last

folder = Path(tempfile.mkdtemp(prefix="jscopes-estimate-"))
source = folder / "mixed.jsonl"
source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
options = {} if args.fisher_estimator is None else {"fisher_estimator": args.fisher_estimator}
settings = DatasetSettings(scopes=tuple(args.scope or ("semantic", "fisher")), **options)
prompts = select_prompts(source, settings)

began = time.perf_counter()
estimate = measure_run(model, tokenizer, prompts, settings)
measuring = time.perf_counter() - began
ids = [p.id for p in prompts]
priced = {i: estimate.seconds(i) for i in ids}
announced = sum(priced.values())
print(estimate.announce(ids))
print(f"(measuring took {format_duration(measuring)})")

began = time.perf_counter()
summary = attribute_dataset(model, tokenizer, source, folder / "out", settings, overwrite=True)
wall = time.perf_counter() - began
measured = {e["id"]: e["seconds"] for e in summary["prompts"]}
total = sum(measured.values())
earlier = measured[ids[0]] * len(ids)  # what the estimate of earlier versions said: the first prompt x n

rows = ["| prompt | tokens | priced | measured | measured / priced |", "|---|---|---|---|---|"]
for i in ids:
    rows.append(f"| {i} | {estimate.sizes[i][0]:,} | {priced[i]:.1f} s | {measured[i]:.1f} s | "
                f"{measured[i] / priced[i]:.2f} |")
rows.append(f"| all | | {announced:.1f} s | {total:.1f} s | {total / announced:.2f} |")
scopes = ", ".join(settings.scopes) + (f" (--fisher-estimator {args.fisher_estimator})" if args.fisher_estimator else "")
lines = [
    f"## {summary['model']}, {scopes}, {args.threads} thread(s), {platform.processor() or platform.machine()}",
    "",
    f"Announced before the first prompt: about {format_duration(announced)}; measured: {format_duration(total)} "
    f"(the scopes' calls; {format_duration(wall)} wall time with the records and reports); ratio "
    f"{total / announced:.2f}. Measuring for the estimate took {format_duration(measuring)}. The estimate of "
    f"earlier versions (first prompt x {len(ids)}) would have said {format_duration(earlier)}.",
    "",
    *rows,
    "",
]
print("\n".join(lines))
out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "dataset_estimate.md"
with out.open("a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
print(f"appended to {out}")
