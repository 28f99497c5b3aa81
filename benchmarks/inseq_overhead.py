"""What Inseq's per-step loop costs against LLMScopeAttribution's single pass.

Inseq attributes a multi-token target one generated token at a time: for m
target tokens it runs the scope m times, each a forward (and its backward
passes) over a longer prefix. ``LLMScopeAttribution`` explains all m tokens from
one teacher-forced forward over prompt + target. Both are timed here in the same
run, on the same prompt and the same m tokens (the model's own greedy
continuation), and their scores are compared.

    .venv/bin/python benchmarks/inseq_overhead.py                 # default model, 16 tokens
    .venv/bin/python benchmarks/inseq_overhead.py --scopes semantic --repeats 5

Prints a markdown table and writes it to ``--out``
(default ``benchmarks/results/inseq_overhead.md``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import inseq
import torch
import transformers
from captum.attr import TextTokenInput

import captum_jscopes
import captum_jscopes.integrations.inseq  # noqa: F401  (registers the scopes with Inseq)
from captum_jscopes import LLMScopeAttribution
from captum_jscopes.cli.demo_prompts import DEMO_EXAMPLES
from captum_jscopes.scopes.registry import SCOPES

PROMPT = next(e.prompt for e in DEMO_EXAMPLES if e.name == "lambada")
OUT = Path(__file__).resolve().parent / "results" / "inseq_overhead.md"


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def continuation(model, tokenizer, n_tokens: int) -> tuple[torch.Tensor, str]:
    """The model's greedy continuation of PROMPT, as the ids Inseq will see when
    it tokenizes prompt + continuation (which can differ from the generated ids at
    the boundary), and its text."""
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(prompt_ids, max_new_tokens=n_tokens, do_sample=False)
    text = tokenizer.decode(generated[0, prompt_ids.shape[1] :])
    full = tokenizer(PROMPT + text, return_tensors="pt").input_ids[0]
    if not torch.equal(full[: prompt_ids.shape[1]], prompt_ids[0]):
        raise RuntimeError("prompt + continuation re-tokenizes the prompt differently; pick another prompt")
    return full[prompt_ids.shape[1] :], text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded default model)")
    parser.add_argument("--scopes", default="semantic,temperature,fisher", help="comma-separated scope names")
    parser.add_argument("--n-target", type=int, default=16, help="target tokens (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after a warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"markdown file to write (default {OUT})")
    cli = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(cli)
    torch.set_num_threads(args.threads)

    model, tokenizer = captum_jscopes.load_model(args.model)
    target_ids, target_text = continuation(model, tokenizer, args.n_target)
    n_target = target_ids.numel()
    inp = TextTokenInput(PROMPT, tokenizer)
    n_prompt = inp.to_model_input().shape[1]

    rows = []
    for name in args.scopes.split(","):
        scope_cls = SCOPES[name]
        wrapped = inseq.load_model(model, f"{name}_scope", tokenizer=tokenizer, device="cpu")

        def per_step():
            return wrapped.attribute(PROMPT, generated_texts=PROMPT + target_text, show_progress=False)

        def one_pass():
            return LLMScopeAttribution(scope_cls(model, tokenizer), tokenizer).attribute(inp, target=target_ids)

        t_inseq, out = median_seconds(per_step, args.repeats)
        t_ours, ours = median_seconds(one_pass, args.repeats)
        # Inseq's raw scores: (n_prompt + n_target, n_target); the prompt rows hold what ours attributes
        theirs = out.sequence_attributions[0].target_attributions[:n_prompt].T
        if theirs.shape != ours.token_attr.shape:
            raise RuntimeError(f"Inseq attributed {tuple(theirs.shape)}, ours {tuple(ours.token_attr.shape)}")
        diff = float((theirs - ours.token_attr).abs().max() / ours.token_attr.abs().max())
        rows.append((name, t_inseq, t_ours, t_inseq / t_ours, diff))

    name = args.model or captum_jscopes.DEFAULT_MODEL
    lines = [
        f"Inseq per-step loop vs `LLMScopeAttribution` (one forward), {n_target}-token target "
        f"(greedy continuation), {n_prompt}-token prompt (the LAMBADA demo passage).",
        "",
        "| scope | Inseq per-step (s) | LLMScopeAttribution (s) | ratio | max rel. diff of scores |",
        "|---|---:|---:|---:|---:|",
        *(f"| {s} | {a:.3f} | {b:.3f} | {r:.1f}x | {d:.1e} |" for s, a, b, r, d in rows),
        "",
        f"Model {name}, {str(model.dtype).removeprefix('torch.')}, {model.device}; median of {args.repeats} runs after a warm-up; "
        f"torch threads {args.threads}. Torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Inseq {captum_jscopes.integrations.inseq.INSEQ_VERSION}, {platform.processor() or platform.machine()}.",
        "",
        "Command: `" + " ".join([".venv/bin/python benchmarks/inseq_overhead.py", *cli]) + "`",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
