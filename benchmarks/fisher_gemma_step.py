"""Fisher Scope on Gemma-3-270m (262k vocabulary): cost of the F side and accuracy per estimator.

Tutorial 04's two translation sentences, explained along the reference translation through
``LLMScopeAttribution`` (one explained position per output token). For each estimator:
median seconds per call, the seconds spent on F outside the backward passes
(``FisherScope.last_info["f_seconds"]``: eigen-directions and probes) and the relative L2
error of each output token's map against ``estimator="exact"`` (median and worst over tokens
and seeds)::

    .venv/bin/python benchmarks/fisher_gemma_step.py --threads 1     # about 25 min on one core
    .venv/bin/python benchmarks/fisher_gemma_step.py --threads 2 --estimators deflated,hutchinson \
        --name fisher_timing_2threads                                   # timing only (no exact): 3 min

Writes ``benchmarks/results/fisher-gemma3-270m-translation/NAME.json`` and ``.md``
(NAME: ``fisher_step`` by default). Without ``exact`` among the estimators the error columns are empty.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from captum.attr import TextTokenInput

from captum_jscopes import FisherScope, LLMScopeAttribution, load_model

SENTENCES = [
    ("French", "Le chat noir dort sur le lit.", " The black cat sleeps on the bed."),
    ("German", "Der Hund spielt im Garten.", " The dog plays in the garden."),
]
ESTIMATORS = {
    "exact": dict(estimator="exact"),
    "deflated": dict(estimator="deflated"),
    "hutchinson-formed": dict(estimator="hutchinson", path="formed"),
    "hutchinson": dict(estimator="hutchinson"),
    "krylov": dict(estimator="krylov"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per randomised estimator")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS),
                        help=f"comma-separated among {', '.join(ESTIMATORS)} (default: all)")
    parser.add_argument("--name", default="fisher_step", help="file name of the results, without suffix")
    parser.add_argument("--out", default="benchmarks/results/fisher-gemma3-270m-translation")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.estimators.split(",") if name.strip()]
    if not chosen or any(name not in ESTIMATORS for name in chosen):
        parser.error(f"--estimators: choose among {', '.join(ESTIMATORS)}")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, progress=False)
    rows = measure(model, tokenizer, args.seeds, estimators={name: ESTIMATORS[name] for name in chosen})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))
    (out / f"{args.name}.md").write_text(_markdown(rows))


def measure(model, tokenizer, seeds: int = 3, sentences=SENTENCES, estimators=ESTIMATORS) -> list[dict]:
    """One row per sentence and estimator (see the module's docstring). ``estimators``: name ->
    FisherScope options; with ``"exact"`` among them, the reference of the errors, the rows hold
    each estimator's errors, else None (timing only)."""
    explain = LLMScopeAttribution(FisherScope(model, tokenizer), tokenizer)
    rows = []
    for language, source, reference in sentences:
        prompt = TextTokenInput(f"{language}: {source}\nEnglish:", tokenizer)
        runs: dict[str, list] = {}
        for name, options in estimators.items():
            for seed in [0] if name == "exact" else range(seeds):
                started = time.perf_counter()
                result = explain.attribute(prompt, target=reference, seed=seed, **options)
                seconds = time.perf_counter() - started
                # Captum's wrapper keeps its own copy of the scope: read what ran from that copy
                runs.setdefault(name, []).append((result.token_attr.double(), seconds, dict(explain.attr_method.last_info)))
        exact = runs["exact"][0][0] if "exact" in runs else None
        for name, calls in runs.items():
            shape = calls[0][0].shape
            errors = None if exact is None else torch.stack(
                [(a - exact).norm(dim=-1) / exact.norm(dim=-1) for a, _, _ in calls])
            info = calls[0][2]
            rows.append(dict(
                language=language, estimator=name, output_tokens=int(shape[0]), input_tokens=int(shape[1]),
                median_rel_l2=None if errors is None else float(errors.median()),
                worst_rel_l2=None if errors is None else float(errors.max()),
                seconds=statistics.median(s for _, s, _ in calls),
                f_seconds=statistics.median(i["f_seconds"] for _, _, i in calls),
                path=info.get("path"), k=info.get("k"), n_probes=info.get("n_probes"),
            ))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = ["| sentence | estimator | path | seconds per call | F side, s | rel. L2 median | worst |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        errors = ("| - | - |" if r["median_rel_l2"] is None
                  else f"| {100 * r['median_rel_l2']:.2f}% | {100 * r['worst_rel_l2']:.2f}% |")
        lines.append(f"| {r['language']} | {r['estimator']} | {r['path']} | {r['seconds']:.1f} | {r['f_seconds']:.2f} "
                     + errors)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
