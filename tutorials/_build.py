"""Write the tutorial notebooks from the Python sources in this file, and run them.

Nobody edits the notebooks' JSON by hand: each notebook is written below in
"percent" format (a line ``# %%`` starts a code cell, ``# %% [markdown]`` a
markdown cell), turned into ``tutorials/NN_name.ipynb`` with nbformat and
executed with nbclient, so the committed notebooks carry their outputs.

    python tutorials/_build.py               # write and execute every notebook (full size)
    python tutorials/_build.py 03 05         # only the notebooks whose name starts so
    python tutorials/_build.py --no-execute  # write them without outputs

The notebooks read ``JSCOPES_TUTORIAL_FAST=1`` (set by tests/test_tutorials.py)
to run a reduced size; commit only full-size runs. Execution happens in a
temporary folder, so the files the notebooks write (``outputs/NN_name/``) stay
out of the repository; the figures are embedded in the notebooks as images.

Each notebook's source is one string below; its last markdown cell ("What the
model showed") comes from ``FINDINGS``, written after reading a full-size run:
update it when a change moves the numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CELL_MARK = re.compile(r"^# %%(?P<markdown> \[markdown\])?[ \t]*$", re.MULTILINE)
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
TIMEOUT_S = 1800  # per cell; the full-size runs of 04 (Gemma, Fisher) take minutes on a CPU


def cells_from_percent(source: str) -> list:
    """nbformat cells from percent-format text (markdown cells are written raw,
    not commented out, since the whole source is a string anyway)."""
    marks = list(CELL_MARK.finditer(source))
    if not marks or source[: marks[0].start()].strip():
        raise ValueError("a notebook source must start with a '# %%' cell mark")
    cells = []
    for mark, following in zip(marks, marks[1:] + [None]):
        body = source[mark.end() : following.start() if following else len(source)].strip("\n")
        if mark.group("markdown"):
            cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            cells.append(nbformat.v4.new_code_cell(body))
    return cells


def make_notebook(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells_from_percent(source))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids (nbformat's are random): a rebuild diffs cleanly
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell in ``workdir`` (the kernel's working directory); raises
    nbclient's CellExecutionError on the first failing cell."""
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name=KERNELSPEC["name"],
        resources={"metadata": {"path": str(workdir)}},
        record_timing=False,  # no timestamps: re-running gives a clean diff
    )
    return client.execute()


def build(name: str, source: str, run: bool) -> Path:
    nb = make_notebook(source)
    if run:
        start = time.time()
        with tempfile.TemporaryDirectory(prefix=f"jscopes-{name}-") as workdir:
            nb = execute(nb, Path(workdir))
        print(f"{name}: executed in {time.time() - start:.0f} s", file=sys.stderr)
    path = HERE / f"{name}.ipynb"
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{name}: wrote {path} ({path.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 01 05 (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    if os.environ.get("JSCOPES_TUTORIAL_FAST") == "1" and not args.no_execute:
        parser.error("JSCOPES_TUTORIAL_FAST=1 is set: the committed notebooks must be full-size runs")
    chosen = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    if not chosen:
        parser.error(f"no notebook matches {args.only}; names: {', '.join(NOTEBOOKS)}")
    for name in chosen:
        build(name, NOTEBOOKS[name], run=not args.no_execute)


# =============================================================================
# Shared first code cell: the fast switch, the output folder and a figure helper.
# Each notebook gets its own copy so that it stays self-contained.
# =============================================================================

SETUP = r'''
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from IPython.display import Image, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no ipywidgets; bars are off anyway

# JSCOPES_TUTORIAL_FAST=1 (set by the test suite) runs a reduced size; the saved outputs are full runs.
FAST = os.environ.get("JSCOPES_TUTORIAL_FAST") == "1"
OUT = Path("outputs") / "{name}"  # every figure this notebook draws is also written here
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)


def show(fig, filename, dpi=80):
    """Write a matplotlib figure to OUT/filename and display that PNG (a modest dpi keeps the notebook small)."""
    path = OUT / filename
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    display(Image(filename=str(path)))
    return path
'''.strip()


def setup_cell(name: str) -> str:
    return SETUP.replace("{name}", name)


# =============================================================================
# 01 Quickstart
# =============================================================================

QUICKSTART = r'''
# %% [markdown]
# 01 · Quickstart: Jacobian Scopes as a drop-in Captum attribution

Jacobian Scopes ([arXiv 2601.16407](https://arxiv.org/abs/2601.16407)) score every input token of a causal
language model by how strongly the model's final hidden state `y` at the explained position reacts to that
token's input embedding `x_t`: one vector-Jacobian product `v^T J_t` (with `J_t = dy/dx_t`), reduced over the
embedding dimension with the L2 norm. The three scopes differ only in the direction `v`:

| scope | direction `v` in hidden space | what it explains | cost |
|---|---|---|---|
| Semantic | `w_target`, the target token's unembedding row | one logit (optionally *target rather than foil*) | 1 backward pass |
| Temperature | `y / ‖y‖` | the model's confidence `‖y‖` (an inverse temperature) | 1 backward pass |
| Fisher | directions of the Fisher matrix of the next-token distribution | the whole predictive distribution | a few dozen backward passes |

This notebook

1. runs an ordinary Captum LLM-attribution script (Integrated Gradients),
2. swaps a scope into it by changing one line,
3. calls the three scopes directly on token ids,
4. draws a result with Captum's own `plot_token_attr` and with our token heatmap.

Model: the embedded default, SmolLM2-135M-Instruct, on the CPU in float32.

# %%
{setup}

# %%
from captum_jscopes import describe_model, load_model

model, tokenizer = load_model(progress=False)  # the embedded SmolLM2-135M-Instruct, converted once and cached
print(describe_model(model), "|", type(model).__name__, "|", next(model.parameters()).dtype)

# %% [markdown]
A classic prompt from interpretability work (indirect object identification): the model should complete
the name that is *not* repeated. First, what does it predict?

# %%
prompt = "When Mary and John went to the store, John gave a drink to"
ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, n); SmolLM2's tokenizer adds no BOS
with torch.no_grad():
    next_probs = model(ids).logits[0, -1].softmax(-1)
top = next_probs.topk(5)
for p, i in zip(top.values, top.indices):
    print(f"{tokenizer.decode(i)!r:>10}  p = {p:.3f}")

# %%
assert tokenizer.decode(top.indices[0]) == " Mary", "the model should predict ' Mary'"
assert ids.shape == (1, 14)

# %% [markdown]
## 1. An existing Captum script

This is how Captum's LLM tutorial attributes a target string to the prompt tokens with Integrated Gradients
on the embedding layer. `skip_tokens` leaves the BOS token out of the result for tokenizers that add one.

# %%
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

emb = model.get_input_embeddings()
inp = TextTokenInput(prompt, tokenizer, skip_tokens=[tokenizer.bos_token])

llm_attr = LLMGradientAttribution(LayerIntegratedGradients(model, emb), tokenizer)
ig_result = llm_attr.attribute(inp, target=" Mary")
print(type(ig_result).__name__, tuple(ig_result.token_attr.shape))

# %% [markdown]
## 2. The same script with a scope swapped in

`LLMScopeAttribution` is Captum's `LLMGradientAttribution` that also accepts a Jacobian Scope. Only the line
that builds the attribution object changes; the input, the target and the result type stay the same.

# %%
from captum_jscopes import LLMScopeAttribution, SemanticScope

llm_attr = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer)  # <- the one changed line
sem_result = llm_attr.attribute(inp, target=" Mary")
sem_result  # a ScopeResult shows itself as coloured tokens

# %%
from captum_jscopes.visualize import display_token

print(f"{'token':>10} {'IG (signed)':>12} {'Semantic':>9}")
for token, ig, sem in zip(sem_result.input_tokens, ig_result.seq_attr, sem_result.seq_attr):
    print(f"{display_token(token)!r:>10} {ig:12.3f} {sem:9.3f}")
print("p(' Mary') =", round(float(sem_result.output_probs[0]), 3))

# %%
n = len(inp.values)
assert sem_result.token_attr.shape == (1, n) and sem_result.seq_attr.shape == (n,)
assert torch.isfinite(sem_result.seq_attr).all() and (sem_result.seq_attr >= 0).all()
assert sem_result.seq_attr.sum() > 0
assert sem_result.input_tokens == ig_result.input_tokens  # both methods saw the same tokens
assert abs(float(sem_result.output_probs[0]) - float(next_probs[top.indices[0]])) < 1e-4

# %% [markdown]
Integrated Gradients gives signed values that add up (roughly) to the change of the target's log-probability
between a baseline input (Captum's default) and the actual one; the Semantic Scope gives the size of the
gradient of the target logit at the actual input, one backward pass instead of 50 forward-backward steps.

## 3. The three scopes on token ids

The scopes are Captum attribution classes of their own and take token ids directly. Each returns one score per
input token, shape `(batch, seq)`. The Semantic Scope also takes a contrastive target `(target, foil)`,
which explains "why Mary rather than John"; Temperature and Fisher explain the whole prediction and take no
target.

# %%
from captum_jscopes import FisherScope, TemperatureScope

scores = {
    "Semantic 'Mary'": SemanticScope(model, tokenizer).attribute(ids, target=" Mary")[0],
    "Semantic 'Mary' vs 'John'": SemanticScope(model, tokenizer).attribute(ids, target=(" Mary", " John"))[0],
    "Temperature": TemperatureScope(model, tokenizer).attribute(ids)[0],
    "Fisher": FisherScope(model, tokenizer).attribute(ids)[0],  # unbiased estimate: 16 exact eigen-directions + 24 probes
}
tokens = tokenizer.convert_ids_to_tokens(ids[0])
print("share of each scope's total score, per token")
print(f"{'token':>10}" + "".join(f"{name:>27}" for name in scores))
for t, token in enumerate(tokens):
    print(f"{display_token(token)!r:>10}" + "".join(f"{float(s[t] / s.sum()):27.3f}" for s in scores.values()))

# %%
for name, s in scores.items():
    assert s.shape == (ids.shape[1],), name
    assert torch.isfinite(s).all() and (s >= 0).all() and s.sum() > 0, name
# the wrapper and the standalone scope compute the same thing
assert torch.allclose(scores["Semantic 'Mary'"], sem_result.seq_attr, rtol=1e-4, atol=1e-6)
# the contrast w_Mary - w_John is another direction, so another map
assert not torch.allclose(scores["Semantic 'Mary'"], scores["Semantic 'Mary' vs 'John'"])

# %% [markdown]
## 4. Pictures

A `ScopeResult` is a Captum `LLMAttributionResult`, so Captum's own plot works on it. To get more than one
row, let the wrapper generate a short continuation and attribute every generated token (one teacher-forced
forward pass over prompt + continuation).

# %%
import matplotlib.pyplot as plt

gen_result = llm_attr.attribute(inp, gen_args={"max_new_tokens": 5, "do_sample": False})
print("generated:", repr(gen_result.metadata["target"]))
fig, ax = gen_result.plot_token_attr(show=False)  # Captum's plot
captum_png = show(fig, "captum_plot_token_attr.png")
plt.close(fig)

# %% [markdown]
Our heatmap draws the tokens as text, coloured by influence, with the target in red (the style of the paper's
figures). `save_heatmap` writes one result as a PNG; `plot_token_heatmap` draws any tokens and scores, here
the four maps of section 3 one below the other.

# %%
from captum_jscopes.visualize import plot_token_heatmap, save_heatmap

heatmap_png = save_heatmap(sem_result, OUT / "semantic_heatmap.png", title="Semantic Scope, target ' Mary'")
display(Image(filename=str(heatmap_png)))

scope_pngs = [
    show(plot_token_heatmap(tokens, s, target=" Mary", title=name, max_width=8), f"scope_{k}.png")
    for k, (name, s) in enumerate(scores.items())
]

# %%
for path in [captum_png, heatmap_png, *scope_pngs]:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
assert gen_result.token_attr.shape == (len(gen_result.output_tokens), n)
assert torch.isfinite(gen_result.token_attr).all()

# %% [markdown]
Results are saved losslessly as JSON (the Captum input object is not stored):

# %%
from captum_jscopes import ScopeResult

json_path = sem_result.save_json(OUT / "semantic_mary.json")
assert ScopeResult.load_json(json_path) == sem_result
print(json_path, json_path.stat().st_size, "bytes")

# %% [markdown]
## What the model showed

{findings}
'''


# =============================================================================
# 02 Instruction understanding
# =============================================================================

INSTRUCTION_UNDERSTANDING = r'''
# %% [markdown]
# 02 · Instruction understanding: which words of an instruction drive the answer

The paper's first case study asks which words of an instruction a model relies on when it answers. Here we
send chat-formatted instructions to the instruct model (SmolLM2-135M-Instruct), check first that it answers
them, and attribute the answer to the words of the **user's message only**: the chat template's markers and
the default system prompt ("You are a helpful AI assistant named SmolLM, ...") stay in the model input, but get
no score.

# %%
{setup}

# %%
from captum_jscopes import load_model

model, tokenizer = load_model(progress=False)

# %% [markdown]
## Does the model follow the instructions?

Attributing an answer the model does not give would explain nothing, so we look at its greedy replies first.
Each instruction comes with the word we expect in the answer (the "key word" we explain later).

# %%
from captum_jscopes import chat_prompt

INSTRUCTIONS = [
    ("Answer with one word: what is the opposite of hot?", " cold"),
    ("Answer with one word: what is the opposite of tall?", " short"),
    ("What is the capital of France? Answer with one word.", " Paris"),
    ("Answer with one word: what is the capital of Italy?", " Rome"),
]
if FAST:
    INSTRUCTIONS = INSTRUCTIONS[:2]


def reply(message, max_new_tokens=12):
    """The model's greedy reply to one user message, chat template applied."""
    ids, _ = chat_prompt(tokenizer, message)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


answers = {message: reply(message) for message, _ in INSTRUCTIONS}
for message, word in INSTRUCTIONS:
    print(f"{message!r}\n    -> {answers[message]!r}")

# %%
for message, word in INSTRUCTIONS:
    assert word in answers[message], f"the model no longer answers {message!r} with {word!r}"
    assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word

# %% [markdown]
The content of every answer is right, but the 135M model ignores the format ("one word") and answers with a
short sentence. We explain the sentence it actually produces.

## Which instruction words drive each answer token?

`chat_input` builds a Captum input whose interpretable tokens are the user's message only. `LLMScopeAttribution`
teacher-forces the model's own answer and explains every answer token with the Semantic Scope (target = that
token), all from one forward pass. Each line below is one answer token (in red) and the instruction coloured by
its influence on it.

# %%
from captum_jscopes import LLMScopeAttribution, SemanticScope, chat_input

semantic = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer)
message, word = INSTRUCTIONS[0]
inp = chat_input(tokenizer, message)
result = semantic.attribute(inp, target=answers[message])
result

# %%
n_user = len(inp.values)
assert tokenizer.convert_tokens_to_string(inp.values) == message  # exactly the user's words are scored
assert result.token_attr.shape == (len(result.output_tokens), n_user)
assert torch.isfinite(result.token_attr).all() and (result.token_attr >= 0).all()
assert (result.token_attr.sum(1) > 0).all()

# %% [markdown]
The same as a matrix: each row is one answer token, each column one instruction token, and a cell holds the
token's share of that row's total influence.

# %%
from matplotlib.figure import Figure

from captum_jscopes.visualize import display_token, plot_token_heatmap, save_heatmap


def share_matrix(result, title):
    """Heat map of token_attr with each row divided by its sum (rows: output tokens, columns: input tokens)."""
    shares = (result.token_attr / result.token_attr.sum(1, keepdim=True)).numpy()
    fig = Figure(figsize=(0.5 * shares.shape[1] + 2.5, 0.38 * shares.shape[0] + 1.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0)
    ax.set_xticks(range(shares.shape[1]), [display_token(t) for t in result.input_tokens], rotation=60, ha="right")
    ax.set_yticks(range(shares.shape[0]), [display_token(t) for t in result.output_tokens])
    ax.set_xlabel("instruction token")
    ax.set_ylabel("answer token")
    ax.set_title(title, loc="left", fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the row", shrink=0.8)
    return fig


matrix_png = show(share_matrix(result, f"Semantic Scope: {message!r}"), "answer_matrix.png")

# %% [markdown]
The key word of the answer, alone:

# %%
answer_words = [display_token(t).strip() for t in result.output_tokens]
row = answer_words.index(word.strip())
key_png = save_heatmap(result, OUT / "key_word.png", row=row, title=f"Semantic Scope, answer word {word!r}")
display(Image(filename=str(key_png)))
print("top instruction tokens:", [(display_token(t), round(s, 2)) for _, t, s in result.top_tokens(4, row=row)])

# %% [markdown]
## The standalone API, and the three scopes

`chat_prompt` gives the token ids of the chat-formatted prompt and a mask of the user's tokens. We append the
answer up to the key word, explain the prediction of the key word at the last position, and pass
`token_mask` so that only the user's words are scored. The Semantic Scope explains the key word's logit,
the Temperature Scope the model's confidence, the Fisher Scope the whole next-token distribution.

# %%
from captum_jscopes import FisherScope, TemperatureScope

ids, user_mask = chat_prompt(tokenizer, message)
answer_ids = tokenizer(answers[message], add_special_tokens=False, return_tensors="pt").input_ids
(key_id,) = tokenizer.encode(word, add_special_tokens=False)
k = answer_ids[0].tolist().index(key_id)
context = torch.cat([ids, answer_ids[:, :k]], dim=1)  # prompt + answer so far; the last position predicts the key word
mask = torch.cat([user_mask, torch.zeros(1, k, dtype=torch.bool)], dim=1)

scope_scores = {
    f"Semantic {word!r}": SemanticScope(model, tokenizer).attribute(context, target=word, token_mask=mask)[0],
    "Temperature": TemperatureScope(model, tokenizer).attribute(context, token_mask=mask)[0],
    "Fisher": FisherScope(model, tokenizer).attribute(context, token_mask=mask)[0],
}
scope_pngs = []
for j, (name, s) in enumerate(scope_scores.items()):
    user_scores = s[mask[0]]
    top3 = user_scores.argsort(descending=True)[:3]
    print(f"{name}: " + ", ".join(f"{display_token(inp.values[i]).strip()!r} {float(user_scores[i] / user_scores.sum()):.0%}" for i in top3))
    fig = plot_token_heatmap(inp.values, user_scores, target=word, title=name, max_width=8)
    scope_pngs.append(show(fig, f"scope_{j}.png"))

# %%
with torch.no_grad():
    predicted = model(context).logits[0, -1].argmax()
assert predicted == key_id, "the model should predict the key word at this position"
for name, s in scope_scores.items():
    assert s.shape == (context.shape[1],) and torch.isfinite(s).all(), name
    assert (s[~mask[0]] == 0).all(), f"{name}: template and answer tokens must get no score"
    assert s[mask[0]].sum() > 0, name
# the standalone Semantic Scope and the wrapper's row for the key word are the same numbers
assert torch.allclose(scope_scores[f"Semantic {word!r}"][mask[0]], result.token_attr[row], rtol=1e-4, atol=1e-6)
for path in [matrix_png, key_png, *scope_pngs]:
    assert path.is_file() and path.stat().st_size > 0

# %% [markdown]
## All instructions

For each instruction: the probability of the key word in the model's answer and the instruction tokens that
drive it most (Semantic Scope, share of the row's total).

# %%
summary = []
for message, word in INSTRUCTIONS:
    res = semantic.attribute(chat_input(tokenizer, message), target=answers[message])
    r = [display_token(t).strip() for t in res.output_tokens].index(word.strip())
    total = float(res.token_attr[r].sum())
    top = [(display_token(t).strip(), s / total) for _, t, s in res.top_tokens(3, row=r)]
    summary.append((message, word, float(res.output_probs[r]), top))
    assert torch.isfinite(res.token_attr).all()
for message, word, prob, top in summary:
    print(f"{message}\n    {word!r} (p = {prob:.2f}) <- " + ", ".join(f"{t!r} {s:.0%}" for t, s in top))

# %% [markdown]
## What the model showed

{findings}
'''

# =============================================================================
# 03 Implicit bias
# =============================================================================

BIAS = r'''
# %% [markdown]
# 03 · Implicit bias: what makes the model say "liberal" or "conservative"?

The paper's prompt is *"Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"*. On the
paper's (larger) models, the Semantic Scope puts "Columbia" behind the target `" liberal"` and "South" behind
the target `" conservative"`: the model's political guess leans on a stereotype of each place.
Here we run the same analysis on SmolLM2-135M-Instruct, add the contrastive scope
(`" liberal"` rather than `" conservative"`), and check the scopes' story with a counterfactual edit of the
prompt.

# %%
{setup}

# %%
from captum_jscopes import load_model
from captum_jscopes.visualize import display_token, plot_token_heatmap

model, tokenizer = load_model(progress=False)

# %%
PROMPT = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
TARGETS = (" liberal", " conservative")


def next_token_logprobs(model, tokenizer, text):
    """(vocab,) log-probabilities of the token after ``text``."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0, -1].float().log_softmax(-1)


ids = tokenizer(PROMPT, return_tensors="pt").input_ids
words = [display_token(t).strip() for t in tokenizer.convert_ids_to_tokens(ids[0])]
logprobs = next_token_logprobs(model, tokenizer, PROMPT)
top = logprobs.topk(8)
print("most likely next tokens:", ", ".join(f"{tokenizer.decode(i)!r} {p.exp():.3f}" for p, i in zip(top.values, top.indices)))
target_ids = {}
for target in TARGETS:
    (target_ids[target],) = tokenizer.encode(target, add_special_tokens=False)
    lp = logprobs[target_ids[target]]
    print(f"{target!r}: p = {lp.exp():.5f}, rank {int((logprobs > lp).sum()) + 1} of {logprobs.numel()}")

# %% [markdown]
Neither word is anywhere near the top: the model would rather continue with "big" or "food". The scopes still
tell us what drives each word's logit, which is the question here.

## Semantic Scope on each target, and the contrastive scope

# %%
from captum_jscopes import SemanticScope


def bias_maps(model, tokenizer, text):
    """Semantic Scope scores (seq,) for each target and for the contrast liberal - conservative."""
    scope = SemanticScope(model, tokenizer)
    ids = tokenizer(text, return_tensors="pt").input_ids
    return {
        "' liberal'": scope.attribute(ids, target=TARGETS[0])[0],
        "' conservative'": scope.attribute(ids, target=TARGETS[1])[0],
        "' liberal' vs ' conservative'": scope.attribute(ids, target=TARGETS)[0],
    }


def score_cell(s, t):
    """'score (#rank, share of the total)' of token t; rank 1 is the highest score."""
    rank = int((s > s[t]).sum()) + 1
    return f"{float(s[t]):.2f} (#{rank}, {float(s[t] / s.sum()):.0%})"


def place_table(maps, words):
    """Print score, rank and share of 'South' and 'Columbia' in every map; return {map: (south, columbia)}."""
    south, columbia = words.index("South"), words.index("Columbia")
    found = {}
    print(f"{'target':<30}{'South':>18}{'Columbia':>18}   top 3")
    for name, s in maps.items():
        top3 = [words[i] for i in s.argsort(descending=True)[:3]]
        print(f"{name:<30}{score_cell(s, south):>18}{score_cell(s, columbia):>18}   {top3}")
        found[name] = (float(s[south]), float(s[columbia]))
    return found


maps = bias_maps(model, tokenizer, PROMPT)
places = place_table(maps, words)

# %%
for name, s in maps.items():
    assert s.shape == (ids.shape[1],) and torch.isfinite(s).all() and (s >= 0).all(), name
# the contrastive score is a norm: explaining 'conservative rather than liberal' gives the same map
flipped = SemanticScope(model, tokenizer).attribute(ids, target=TARGETS[::-1])[0]
assert torch.allclose(flipped, maps["' liberal' vs ' conservative'"], rtol=1e-5)
# the finding reported below (on SmolLM2-135M-Instruct): Columbia outweighs South in every map
assert all(columbia > south for south, columbia in places.values()), places

# %%
heatmap_pngs = []
for j, (name, s) in enumerate(maps.items()):
    target = TARGETS[0] if j != 1 else TARGETS[1]
    fig = plot_token_heatmap(tokenizer.convert_ids_to_tokens(ids[0]), s, target=target, title=f"Semantic Scope, {name}", max_width=9)
    heatmap_pngs.append(show(fig, f"semantic_{j}.png"))
assert all(p.is_file() and p.stat().st_size > 0 for p in heatmap_pngs)

# %% [markdown]
## A counterfactual check

The scores are gradient norms: they say how strongly a token moves a logit, not in which direction. Editing the
prompt gives the direction. Below, the log-odds `log p(liberal) - log p(conservative)` of the original prompt
and of edits that swap one place name.

# %%
EDITS = {
    "original": PROMPT,
    "Columbia -> Alabama": PROMPT.replace("Columbia", "Alabama"),
    "Columbia -> college": PROMPT.replace("Columbia", "college"),
    "the South -> the North": PROMPT.replace("the South", "the North"),
    "the South -> California": PROMPT.replace("the South", "California"),
}


def log_odds(model, tokenizer, text):
    lp = next_token_logprobs(model, tokenizer, text)
    (lib,) = tokenizer.encode(TARGETS[0], add_special_tokens=False)
    (con,) = tokenizer.encode(TARGETS[1], add_special_tokens=False)
    return float(lp[lib] - lp[con])


def edit_table(model, tokenizer):
    odds = {name: log_odds(model, tokenizer, text) for name, text in EDITS.items()}
    for name, value in odds.items():
        print(f"{name:<26} log-odds liberal/conservative {value:+.2f}   change {value - odds['original']:+.2f}")
    return odds


odds = edit_table(model, tokenizer)
assert all(np.isfinite(v) for v in odds.values())

# %% [markdown]
## The same on Gemma-3-270m (base)

A second small model for comparison (skipped in the fast test run, and when the optional Gemma package is not
installed).

# %%
from captum_jscopes import ModelNotAvailableError

gemma = None
if FAST:
    print("fast run: Gemma section skipped")
else:
    try:
        gemma, gemma_tokenizer = load_model("gemma3-270m", progress=False)
    except ModelNotAvailableError as err:
        print("Gemma-3-270m is not installed, section skipped:", err)
if gemma is not None:
    gemma_ids = gemma_tokenizer(PROMPT, return_tensors="pt").input_ids
    gemma_words = [display_token(t).strip() for t in gemma_tokenizer.convert_ids_to_tokens(gemma_ids[0])]
    gemma_maps = bias_maps(gemma, gemma_tokenizer, PROMPT)
    gemma_places = place_table(gemma_maps, gemma_words)
    print()
    gemma_odds = edit_table(gemma, gemma_tokenizer)
    assert all(torch.isfinite(s).all() for s in gemma_maps.values())

# %% [markdown]
## What the models showed

{findings}
'''

# =============================================================================
# 04 Translation
# =============================================================================

TRANSLATION = r'''
# %% [markdown]
# 04 · Translation: the Fisher Scope aligns output words with source words

In the paper, a model translates a German sentence ("German: ... English: ...") and the Fisher Scope on each
output word lights up the source words it translates. The Fisher Scope explains the whole next-token
distribution, so it needs no target: it asks which input tokens the prediction at that position is most
sensitive to.

**Model and language pair.** The default SmolLM2-135M-Instruct does not translate (its attempts are printed
below). The embedded **Gemma-3-270m base** model translates short French and German sentences into English
correctly, so this notebook uses Gemma on **French → English** and **German → English**. The fast test run
uses the default model and only the French sentence; it checks that the code works, not the alignments.

# %%
{setup}

# %%
from captum_jscopes import describe_model, load_model

MODEL = None if FAST else "gemma3-270m"  # None: the default SmolLM2-135M-Instruct
model, tokenizer = load_model(MODEL, progress=False)
print(describe_model(model))

# %%
# (language, source sentence, reference translation, expected alignment of some output words)
CASES = [
    ("French", "Le chat noir dort sur le lit.", " The black cat sleeps on the bed.",
     {"black": "noir", "cat": "chat", "sleeps": "dort", "bed": "lit"}),
    ("German", "Der Hund spielt im Garten.", " The dog plays in the garden.",
     {"dog": "Hund", "plays": "spielt", "garden": "Garten"}),
]
if FAST:
    CASES = CASES[:1]


def prompt_of(language, source):
    return f"{language}: {source}\nEnglish:"


def translate(model, tokenizer, prompt, max_new_tokens=16):
    """The model's greedy continuation of ``prompt``, up to the end of the line."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]


# %% [markdown]
## Can the model translate?

# %%
own = {language: translate(model, tokenizer, prompt_of(language, source)) for language, source, _, _ in CASES}
for language, source, reference, _ in CASES:
    print(f"{language}: {source}\n    {describe_model(model)}: {own[language]!r}\n    reference: {reference!r}")
if not FAST:
    # the default model on the same prompts, for comparison
    small, small_tokenizer = load_model(progress=False)
    for language, source, _, _ in CASES:
        print(f"{describe_model(small)} on {language}: {translate(small, small_tokenizer, prompt_of(language, source))!r}")
    del small

# %%
if not FAST:
    for language, _, reference, _ in CASES:
        assert own[language] == reference, f"Gemma's {language} translation changed: {own[language]!r}"

# %% [markdown]
## Fisher Scope along the output words

We teacher-force the reference translation (here it is also Gemma's own output) as a multi-token target:
`LLMScopeAttribution` attributes every output token from one forward pass over prompt + translation. Row `i` of
`token_attr` holds the Fisher scores of the prompt tokens for the prediction of output token `i`.

# %%
import time

from captum.attr import TextTokenInput

from captum_jscopes import FisherScope, LLMScopeAttribution, SemanticScope
from captum_jscopes.visualize import display_token

fisher = LLMScopeAttribution(FisherScope(model, tokenizer), tokenizer)


def source_columns(tokenizer, prompt, source):
    """Indices of the prompt's tokens that overlap the source sentence (by character offsets)."""
    start = prompt.index(source)
    offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (a, b) in enumerate(offsets) if a < start + len(source) and b > start and b > a]


results, columns = {}, {}
for language, source, reference, _ in CASES:
    prompt = prompt_of(language, source)
    inp = TextTokenInput(prompt, tokenizer)  # all tokens; a BOS gets score 0 (special tokens are excluded)
    start = time.perf_counter()
    results[language] = fisher.attribute(inp, target=reference)
    seconds = time.perf_counter() - start
    columns[language] = source_columns(tokenizer, prompt, source)
    print(f"{language}: {len(results[language].output_tokens)} output tokens in {seconds:.0f} s; source tokens:",
          [display_token(results[language].input_tokens[c]) for c in columns[language]])

# %%
for language, source, reference, _ in CASES:
    res = results[language]
    n_out = len(tokenizer.encode(reference, add_special_tokens=False))
    assert res.token_attr.shape == (n_out, len(res.input_tokens)), res.token_attr.shape
    assert torch.isfinite(res.token_attr).all() and (res.token_attr >= 0).all()
    assert (res.token_attr.sum(1) > 0).all()
    assert tokenizer.convert_tokens_to_string([res.input_tokens[c] for c in columns[language]]).strip() == source

# %% [markdown]
## Alignment matrices

Rows: output tokens. Columns: the source sentence's tokens. A cell is the source token's share of the row's
Fisher score over the **whole** prompt (the rest of a row's share sits on the language labels and the line
break). The bold frame marks the largest cell of each row.

# %%
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def alignment_shares(result, cols):
    """(n_output, n_source) numpy array: each row's scores on ``cols`` divided by the row's total."""
    attr = result.token_attr
    return (attr[:, cols] / attr.sum(1, keepdim=True)).numpy()


def alignment_figure(result, cols, title, ax):
    shares = alignment_shares(result, cols)
    image = ax.imshow(shares, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(cols)), [display_token(result.input_tokens[c]).strip() for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(result.output_tokens)), [display_token(t).strip() for t in result.output_tokens])
    for r, c in enumerate(shares.argmax(1)):
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, linewidth=2, edgecolor="black"))
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    ax.set_title(title, loc="left", fontsize=10)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="share of the row")


fig = Figure(figsize=(5.2 * len(CASES), 4.6), layout="constrained")
for ax, (language, *_rest) in zip(fig.subplots(1, len(CASES), squeeze=False)[0], CASES):
    alignment_figure(results[language], columns[language], f"Fisher Scope, {language} → English", ax)
alignment_png = show(fig, "fisher_alignment.png")

# %% [markdown]
Does the largest cell of each content word sit on the source word it translates?

# %%
def aligned_source(result, cols):
    """{output word: (source word with the largest Fisher share, that share)} (words stripped of spaces)."""
    shares = alignment_shares(result, cols)
    source_words = [display_token(result.input_tokens[c]).strip() for c in cols]
    return {
        display_token(t).strip(): (source_words[int(shares[r].argmax())], float(shares[r].max()))
        for r, t in enumerate(result.output_tokens)
    }


hits = {}
for language, _, _, gold in CASES:
    found = aligned_source(results[language], columns[language])
    hits[language] = sum(found.get(out, ("",))[0] == src for out, src in gold.items())
    for out, src in gold.items():  # .get: with another tokenizer a word may be split into pieces
        best, share = found.get(out, ("(split)", float("nan")))
        print(f"{language}: {out!r:>9} -> {best!r:>9} {share:4.0%}  (expected {src!r})")
    print(f"{language}: {hits[language]} of {len(gold)} content words aligned to the expected source word\n")

# %%
assert alignment_png.is_file() and alignment_png.stat().st_size > 0
if not FAST:
    # the finding reported below (Gemma-3-270m): every content word lands on its source word
    for language, _, _, gold in CASES:
        assert hits[language] == len(gold), (language, hits[language])

# %% [markdown]
## Fisher versus Semantic

The Semantic Scope explains one logit (the target word's) instead of the whole distribution. On the same
translation it spreads more evenly; below, the expected source word's share of the row for each content word.

# %%
language, source, reference, gold = CASES[0]
semantic_result = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer).attribute(
    TextTokenInput(prompt_of(language, source), tokenizer), target=reference
)
out_words = [display_token(t).strip() for t in results[language].output_tokens]
src_words = [display_token(results[language].input_tokens[c]).strip() for c in columns[language]]
fisher_shares = alignment_shares(results[language], columns[language])
semantic_shares = alignment_shares(semantic_result, columns[language])
comparison = {}
for out, src in gold.items():
    if out not in out_words or src not in src_words:
        continue  # split into several tokens by this tokenizer
    r, c = out_words.index(out), src_words.index(src)
    comparison[out] = (fisher_shares[r, c], semantic_shares[r, c])
    print(f"{out!r:>9} <- {src!r:>7}: Fisher {fisher_shares[r, c]:.0%}   Semantic {semantic_shares[r, c]:.0%}")

fig = Figure(figsize=(10.4, 4.6), layout="constrained")
ax_f, ax_s = fig.subplots(1, 2)
alignment_figure(results[language], columns[language], f"Fisher Scope, {language} → English", ax_f)
alignment_figure(semantic_result, columns[language], f"Semantic Scope, {language} → English", ax_s)
comparison_png = show(fig, "fisher_vs_semantic.png")
assert torch.isfinite(semantic_result.token_attr).all() and comparison_png.is_file()

# %% [markdown]
## What the model showed

{findings}
'''

# =============================================================================
# 05 In-context forecasting
# =============================================================================

FORECASTING = r'''
# %% [markdown]
# 05 · In-context forecasting: where does the model look to predict the next value?

The paper serialises a time series as text ("15,42,85,": values rescaled to [0.15, 0.85], two digits each,
comma-separated, trailing comma), lets the model predict the next value, and runs the **Temperature Scope** at
the last position. Mapped back to one score per value (delimiters left out), the influence

* of a **chaotic** series (Lorenz system, logistic map at r = 3.8) peaks on past segments that resemble the
  present one: the model matches patterns, like a nearest-neighbour forecaster;
* of a **stochastic** series (Brownian motion) sits on the most recent values.

We reproduce the experiment on SmolLM2-135M-Instruct and quantify both claims over several random series.

# %%
{setup}

# %%
from captum_jscopes import TemperatureScope, load_model
from captum_jscopes.timeseries import brownian_motion, deserialize, logistic_map, lorenz, serialize, value_scores

model, tokenizer = load_model(progress=False)
scope = TemperatureScope(model, tokenizer)

N_VALUES = 60 if FAST else 200  # values in the prompt (3 tokens each for SmolLM2: two digits and a comma)
SEEDS = range(1) if FAST else range(8)
SERIES = {  # each returns N_VALUES + 1 values: the prompt and the true next value
    "Lorenz (x, dt = 0.04)": lambda seed: lorenz(N_VALUES + 1, dt=0.04, seed=seed),
    "logistic map (r = 3.8)": lambda seed: logistic_map(N_VALUES + 1, r=3.8, seed=seed),
    "Brownian motion": lambda seed: brownian_motion(N_VALUES + 1, seed=seed),
}
CHAOTIC = ("Lorenz (x, dt = 0.04)", "logistic map (r = 3.8)")

# %% [markdown]
## One series, step by step

# %%
values = SERIES["logistic map (r = 3.8)"](0)
text, scaling = serialize(values[:-1])
print(text[:60], "...", text[-30:])
ids = tokenizer(text, return_tensors="pt").input_ids
token_scores = scope.attribute(ids)[0]  # (seq,) one score per token, the last one predicts the next value
per_value = value_scores(text, token_scores, tokenizer)  # (N_VALUES,) digits' scores summed, commas left out
print(ids.shape[1], "tokens,", len(per_value), "values")

# %%
digits = np.array([any(ch.isdigit() for ch in tokenizer.decode([i])) for i in ids[0]])
assert len(per_value) == N_VALUES and np.isfinite(per_value).all() and (per_value >= 0).all()
assert torch.isfinite(token_scores).all() and token_scores.shape == (ids.shape[1],)
# every digit token's score goes to some value, the delimiters' scores to none
assert np.isclose(per_value.sum(), float(token_scores[torch.from_numpy(digits)].sum()), rtol=1e-5)
assert float(token_scores[torch.from_numpy(~digits)].sum()) > 0  # the commas do get scores: we leave them out

# %% [markdown]
## All series

For every series and seed: the model's greedy next value, the Temperature Scope per value, and three numbers.

* **pattern matching** `rho`: Spearman correlation, over past positions `j`, between the similarity of the
  segment of `w` values ending at `j` to the present segment (the last `w` values; similarity = minus the mean
  absolute difference) and the influence of the value that followed it, `j + 1` (the value a
  pattern-matching forecaster would copy). Positions in the most recent 10% (similar to the present simply
  because they are recent) and the first two values (attention sinks) are left out. For `w` = 1 and 5.
* **nearest-neighbour lift**: influence of the values that followed the 5 most similar past segments, divided
  by the mean influence of all candidate values, for `w` = 1 and 5. 1 means no preference.
* **recent share**: share of the total influence on the last 10% of values (10% if influence were uniform).

A control: the same `rho` against a segment at a random past time instead of the present one; it should be
near 0 if the correlation is about the present.

# %%
from scipy.stats import spearmanr


def similarities(x, w, end):
    """(positions, similarity): past segments x[j-w+1 : j+1] compared with x[end-w+1 : end+1]."""
    n = len(x)
    present = x[end - w + 1 : end + 1]
    js = np.array([j for j in range(max(w - 1, 2), n - max(1, n // 10) - 1) if abs(j - end) >= w])
    sim = np.array([-np.abs(x[j - w + 1 : j + 1] - present).mean() for j in js])
    return js, sim


def pattern_rho(x, v, w, end=None):
    js, sim = similarities(x, w, len(x) - 1 if end is None else end)
    return spearmanr(sim, v[js + 1]).statistic


def nn_lift(x, v, w, k=5):
    js, sim = similarities(x, w, len(x) - 1)
    nearest = js[np.argsort(-sim, kind="stable")[:k]]  # ties (w = 1: equal values) go to the earliest
    return v[nearest + 1].mean() / v[js + 1].mean()


def recent_share(v, frac=0.1):
    return v[-max(1, int(round(frac * len(v)))):].sum() / v.sum()


def next_value(ids):
    """The model's greedy next value (as written, 10..99), or NaN if it does not write a number."""
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    written = tokenizer.decode(out[0, ids.shape[1] :])
    return float(written.split(",")[0]) if written.split(",")[0].isdigit() else float("nan")


rows, examples = [], {}
for name, make in SERIES.items():
    for seed in SEEDS:
        values = make(seed)
        text, scaling = serialize(values[:-1])
        x = deserialize(text)  # the written integers: what the model sees
        ids = tokenizer(text, return_tensors="pt").input_ids
        v = value_scores(text, scope.attribute(ids)[0], tokenizer)
        truth = float(scaling.scale(values[-1:])[0] * 100)
        control_end = int(np.random.default_rng(seed).integers(N_VALUES // 4, N_VALUES // 2))
        rows.append({
            "series": name, "seed": seed, "predicted": next_value(ids), "truth": truth, "last": x[-1],
            "rho_w1": pattern_rho(x, v, 1), "rho_w5": pattern_rho(x, v, 5),
            "control_rho_w5": pattern_rho(x, v, 5, end=control_end),
            "lift_w1": nn_lift(x, v, 1), "lift_w5": nn_lift(x, v, 5), "recent_share": recent_share(v),
        })
        if seed == 0:
            examples[name] = (x, v, rows[-1]["predicted"])
        assert len(v) == N_VALUES and np.isfinite(v).all() and v.sum() > 0, (name, seed)

# %%
def mean_sem(key, name):
    a = np.array([r[key] for r in rows if r["series"] == name], dtype=float)
    sem = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return a.mean(), sem


KEYS = ("rho_w1", "rho_w5", "control_rho_w5", "lift_w1", "lift_w5", "recent_share")
print(f"{len(SEEDS)} series of {N_VALUES} values each; mean ± standard error over series")
print(f"{'series':<24}" + "".join(f"{k:>15}" for k in KEYS) + f"{'MAE model':>11}{'MAE last':>10}")
summary = {}
for name in SERIES:
    summary[name] = {k: mean_sem(k, name) for k in KEYS}
    own = [r for r in rows if r["series"] == name]
    mae = np.mean([abs(r["predicted"] - r["truth"]) for r in own])
    naive = np.mean([abs(r["last"] - r["truth"]) for r in own])
    print(f"{name:<24}" + "".join(f"{m:>8.2f} ± {s:<4.2f}" for m, s in summary[name].values()) + f"{mae:>11.1f}{naive:>10.1f}")

# %% [markdown]
The last two columns: mean absolute error of the model's next value and of repeating the last value, in
written units (the series spans 15..85).

## The paper's figure: influence per value

Bars: Temperature Scope per value (delimiters left out). Line: the series as written. Red star: the model's
prediction of the next value.

# %%
from matplotlib.figure import Figure

from captum_jscopes.visualize import plot_series_influence

fig = Figure(figsize=(10, 9), layout="constrained")
for ax, (name, (x, v, predicted)) in zip(fig.subplots(len(examples), 1), examples.items()):
    plot_series_influence(x, v, title=f"{name}, seed 0", ax=ax, target=None if np.isnan(predicted) else predicted)
series_png = show(fig, "series_influence.png", dpi=70)

# %%
assert series_png.is_file() and series_png.stat().st_size > 0
assert len(rows) == len(SERIES) * len(SEEDS)
assert all(np.isfinite([r[k] for k in KEYS]).all() for r in rows), "a metric is NaN"
assert all(0 < r["recent_share"] < 1 for r in rows)

# %% [markdown]
## What the model showed

{findings}
'''


# =============================================================================
# 06 Benchmarks and faithfulness
# =============================================================================

BENCHMARKS = r'''
# %% [markdown]
# 06 · Benchmarks: how fast, and how faithful?

The package ships two benchmarks, each a command line and a Python function:

| benchmark | command line | from Python | measures |
|---|---|---|---|
| speed | `jscopes bench speed ...` (= `python benchmarks/speed.py ...`) | `captum_jscopes.bench_speed.main([...])` | seconds per explained token of every method, against a physical floor and Captum's Integrated Gradients |
| faithfulness | `jscopes bench faithfulness ...` (= `python benchmarks/faithfulness.py ...`) | `captum_jscopes.bench_faithfulness.main([...])` | the paper's AOPC (deleting the top-ranked tokens) and agreement with leave-one-out influence |

Both read LAMBADA passages (`../shared/data/lambada_1000.json`), explain the model's prediction of the passage's
last token, and write JSON, a Markdown report and plots into an output folder. This notebook

1. runs the speed benchmark on two prompts and reads its `speed.json` / `speed.md`,
2. runs the faithfulness benchmark on three prompts and reads its `report.md` and deletion curves,
3. uses the faithfulness metrics (`captum_jscopes.faithfulness`) directly on one prompt,
4. shows the committed full-size results of both benchmarks, if this checkout has them.

The runs here are tiny so that the notebook finishes in minutes on a CPU: they show how to run and read the
benchmarks, not what they conclude. The numbers to quote are those of section 4.

# %%
{setup}

# %%
import contextlib
import io
import json
import re

from IPython.display import Markdown
from PIL import Image as PILImage


def run_quietly(main, argv):
    """Run a benchmark's ``main(argv)`` with its progress bars and printed report captured (the files it
    writes hold the same); raise with its messages if it fails."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"benchmark failed (exit status {status}):\n{err.getvalue()[-3000:]}\n{out.getvalue()[-3000:]}")
    return out.getvalue()


def as_markdown(text, level=3):
    """A report for display inside the notebook: its headings moved down to ``level`` and below."""
    return Markdown(re.sub(r"(?m)^(#+) ", lambda m: "#" * (level - 1 + len(m.group(1))) + " ", text))


def show_file(path, width=600):
    """Display a PNG a benchmark wrote, scaled down to ``width`` pixels (keeps the notebook small)."""
    picture = PILImage.open(path).convert("RGB")
    picture.thumbnail((width, 10 * width))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    display(Image(data=buffer.getvalue()))


def sections(report, *titles):
    """The '## ...' sections of a Markdown report whose title starts with one of ``titles`` (headings kept)."""
    parts = re.split(r"(?m)^(?=## )", report)
    return "\n".join(p.strip() + "\n" for p in parts if p.startswith("## ") and p[3:].startswith(titles))

# %% [markdown]
## 1. Speed

The methods are timed on the same prompts in one run, as the cost of explaining one token:

* **floor**: one forward of the model from its input embeddings (logits only at the explained position) and one
  backward of one logit to the embeddings, parameters frozen. No input-gradient method can cost less.
* the scopes: `semantic`, `temperature`, `fisher` (the default estimator: 16 exact eigen-directions and 32
  random probes, so about 48 backward passes) and `fisher_eig1` (the top eigen-direction only, 1 backward pass).
* Captum: `captum_gradient` (`LayerGradientXActivation` without the input factor, i.e. the plain gradient) and
  `captum_ig50` (`LayerIntegratedGradients`, 50 steps, Captum's default), both through `LLMGradientAttribution`.

`--skip-memory` leaves out the peak-memory columns (each method would run again in a fresh process).
`--lengths` also times some methods on prompts of the given lengths, `--multi-token 4` compares our wrapper
with Captum's loop on a 4-token target. `python -m captum_jscopes.bench_speed --help` lists every option.

# %%
from captum_jscopes import bench_speed

SPEED_METHODS = ["floor", "semantic", "temperature", "fisher", "fisher_eig1", "captum_gradient", "captum_ig50"]
speed_dir = OUT / "speed"
speed_args = [
    "--n", "1" if FAST else "2",   # prompts for the per-token table
    "--n-slow", "1",               # prompts for the slow methods (IG-50) and the multi-token comparison
    "--repeats", "1" if FAST else "3",
    "--warmup", "0" if FAST else "1",
    "--max-tokens", "48" if FAST else "0",  # 0: whole passages (about 100 tokens)
    "--lengths", "32,64" if FAST else "64,128",
    "--multi-token", "4",
    "--methods", ",".join(SPEED_METHODS),
    "--skip-memory",
    "--out", str(speed_dir),
]
print("command line:  jscopes bench speed", " ".join(speed_args))
run_quietly(bench_speed.main, speed_args)
print("written:", sorted(p.name for p in speed_dir.iterdir()))

# %% [markdown]
The report, `speed.md`:

# %%
display(as_markdown((speed_dir / "speed.md").read_text()))

# %% [markdown]
How to read the tables:

* **seconds**: median wall time of one call that explains one token (over the prompts; each prompt's time is
  itself a median over `--repeats` calls after `--warmup` calls).
* **x floor**: seconds divided by the floor's. About 1 means "as cheap as an input gradient can be": the Semantic
  and Temperature Scopes are one forward and one backward, like the floor. The default Fisher Scope pays for its
  ~48 backward passes (one forward, reused); `fisher_eig1` for one backward plus the eigen-direction.
* **IG-50 / method**: how many times faster than Captum's Integrated Gradients with 50 steps (50 forward and
  backward passes through the model, in one batch).
* **Multi-token target**: seconds per target token. `LLMScopeAttribution` explains every token of the target
  from one forward pass over prompt + target; Captum's `LLMGradientAttribution` runs one forward and backward
  per target token.
* **By prompt length**: seconds per call, and in brackets the ratio to the floor at that length.

On a shared CPU, wall times move by tens of percent from one run to the next: compare methods within one run.

The same numbers are in `speed.json` (with the machine, the library versions and the settings):

# %%
from matplotlib.figure import Figure

speed = json.loads((speed_dir / "speed.json").read_text())
env = speed["environment"]
print(f"{env['model']} on {env['device']} ({env['dtype']}), {env['torch_threads']} thread(s), {env['cpus']} CPUs,",
      f"torch {env['versions']['torch']}, captum {env['versions']['captum']}")
single = speed["single_token"]
floor = single["floor"]["seconds"]
ratios = {name: row["seconds"] / floor for name, row in single.items()}

fig = Figure(figsize=(11, 3.8), layout="constrained")
ax_ratio, ax_length = fig.subplots(1, 2)
names = list(ratios)
ax_ratio.barh(names, [ratios[n] for n in names], color=["tab:blue" if n in ("semantic", "temperature") or n.startswith("fisher") else "tab:grey" for n in names])
ax_ratio.axvline(1.0, color="black", linewidth=0.8)
ax_ratio.set_xscale("log")
ax_ratio.invert_yaxis()
ax_ratio.set_xlabel("seconds per explained token / floor (log)")
ax_ratio.set_title("Cost relative to one forward + one backward", loc="left", fontsize=10)
for name, row in speed["lengths"].items():
    xs = sorted(int(n) for n in row)
    ax_length.plot(xs, [row[str(x)] for x in xs], marker="o", label=name)
ax_length.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", ylabel="seconds per call")
ax_length.set_title("Cost against prompt length", loc="left", fontsize=10)
ax_length.legend(fontsize=8)
speed_png = show(fig, "speed_ratios.png")
print("times faster than IG-50:", {n: round(single["captum_ig50"]["seconds"] / row["seconds"], 1) for n, row in single.items()})

# %%
assert set(single) == set(SPEED_METHODS), sorted(single)
assert all(row["seconds"] > 0 and all(t > 0 for t in row["per_prompt"]) for row in single.values())
assert np.isfinite(ratios["semantic"]) and ratios["semantic"] > 0
assert speed["multi_token"]["ours_semantic"] > 0 and speed["multi_token"]["captum_gradient_loop"] > 0
assert (speed_dir / "speed.md").read_text().count("| captum_ig50 |") == 2  # the per-token and the length tables
assert speed_png.is_file()

# %% [markdown]
## 2. Faithfulness

Per prompt (the paper's protocol, `../shared/PAPER.md`): the passage minus its last token is the prompt,
`y*` is the model's own top-1 prediction at the last position, and every method scores every prompt token.

* **AOPC** (deletion): zero the input embeddings of the top 5%, 10% and 20% of the tokens by score, measure
  `D_f = log p_ablated(y*) - log p_orig(y*)`, and take the area `0.025 (D5 + D10) + 0.05 (D10 + D20)`. A method
  whose top tokens really carry the prediction makes `log p(y*)` drop fast: **more negative = more faithful**.
  Random scores give the baseline.
* **Leave-one-out (LOO) agreement** (`--loo-n K`, on the first K prompts): zero each token's embedding alone and
  take `KL(P_orig || P_ablated)` of the next-token distributions as its ground-truth influence (one forward per
  token, so the expensive part). Then compare each method's scores with it: Spearman and Kendall correlation,
  the **top-1 LOO percentile** (share of tokens with a larger LOO influence than the method's top token: 0 is
  best, random scores give about 50) and the Jaccard overlap of the top 10%.

The methods here: the Semantic Scope (target `y*`), the Temperature Scope, the Fisher Scope's top
eigen-direction (`fisher_eig1`, the paper's "k = 1"), Captum's gradient × input and 5-step Integrated Gradients
(both on the logit of `y*`, reduced to one score per token by the L2 norm over the embedding, like the scopes),
and random scores. `all` would add the default Fisher estimator, saliency and 50-step IG.

# %%
from captum_jscopes import bench_faithfulness

FAITH_METHODS = ["semantic", "temperature", "fisher_eig1", "grad_x_input", "ig5", "random"]
N_FAITH = 1 if FAST else 3
N_LOO = 1 if FAST else 2
faith_dir = OUT / "faithfulness"
faith_args = [
    "--n", str(N_FAITH),
    "--methods", ",".join(FAITH_METHODS),
    "--loo-n", str(N_LOO),
    "--threads", "1",   # one thread per process: the fastest on a shared CPU
    "--out", str(faith_dir),
    "--overwrite",      # a rerun starts afresh (without it, a rerun resumes the records already written)
]
print("command line:  jscopes bench faithfulness", " ".join(faith_args))
run_quietly(bench_faithfulness.main, faith_args)
print("written:", sorted(p.name for p in faith_dir.iterdir()))

# %% [markdown]
The AOPC and leave-one-out tables of `report.md` (the report also compares with the paper's published numbers,
runs paired per-prompt tests against gradient × input and writes its findings as sentences):

# %%
report = (faith_dir / "report.md").read_text()
print(report.split("\n## ")[0].split("\n", 2)[2].strip())  # the run's description (prompts, accuracy, time)
display(as_markdown(sections(report, "AOPC", "Leave-one-out")))
show_file(faith_dir / "deletion_curves.png")

# %% [markdown]
The deletion curves show the mean change of `log p(y*)` as more and more of the top-ranked tokens are zeroed
(solid: the scopes, dashed: the baselines, shaded: ± one standard error). AOPC is the area under the first
part of it (5% to 20%).

**Three prompts say nothing statistically.** The standard errors are as large as the differences between the
methods, the paired Wilcoxon p-values in the report cannot fall below 0.25 with three prompts, and LOO
agreement on two prompts is two numbers. What a run this small does check: every method beats random deletion
by a wide margin, and the machinery works end to end. Section 4 has the full-size runs.

`records.jsonl` holds one record per prompt (reruns resume from it), `summary.json` the aggregates:

# %%
records = [json.loads(line) for line in (faith_dir / "records.jsonl").read_text().splitlines() if line.strip()]
summary = json.loads((faith_dir / "summary.json").read_text())
for record in records:
    print(f"prompt {record['id']}: {record['n_tokens']} tokens, y* = {record['target']} (correct: {record['correct']}),",
          "AOPC", {m: round(v["aopc"], 3) for m, v in record["methods"].items()})

# %%
assert len(records) == N_FAITH and summary["n_prompts"] == N_FAITH
for record in records:
    assert list(record["methods"]) == FAITH_METHODS
    assert all(np.isfinite(v["aopc"]) for v in record["methods"].values())
    assert all(len(v["curve"]) == 11 and np.isfinite(v["curve"]).all() for v in record["methods"].values())
assert all(np.isfinite(s["aopc_mean"]) for s in summary["methods"].values())
assert sum("loo" in r["methods"]["semantic"] for r in records) == N_LOO
assert summary["methods"]["semantic"]["aopc_mean"] < summary["methods"]["random"]["aopc_mean"]

# %% [markdown]
## 3. The metrics on one prompt

The benchmark is a loop over `captum_jscopes.faithfulness`, which works with scores from any method: a model,
one tokenised prompt and one score per token. Here the first LAMBADA passage, prepared as the benchmark does,
with the Semantic Scope's scores and random scores.

# %%
from captum_jscopes import SemanticScope, load_model
from captum_jscopes.bench_faithfulness import prepare_prompt
from captum_jscopes.faithfulness import aopc, deletion_curve, leave_one_out, loo_agreement
from captum_jscopes.runner import load_prompts

model, tokenizer = load_model(progress=False)
(passage,) = load_prompts(n=1)  # the shared LAMBADA set
prepared = prepare_prompt(tokenizer, passage.text)  # the passage minus its last token, which is the true target
ids = prepared.input_ids  # (1, n)
with torch.no_grad():
    y_star = int(model(ids).logits[0, -1].argmax())
print(f"{ids.shape[1]} tokens ... {tokenizer.decode(ids[0, -12:])!r}")
print(f"y* = {tokenizer.decode([y_star])!r}, true last token {tokenizer.decode([prepared.true_token])!r}")

scores = {
    "semantic": SemanticScope(model, tokenizer).attribute(ids, target=y_star)[0],  # (n,)
    "random": torch.rand(ids.shape[1], generator=torch.Generator().manual_seed(0)),
}
results = {name: aopc(model, ids, s, tokenizer=tokenizer) for name, s in scores.items()}
for name, r in results.items():
    print(f"{name:>9}: AOPC {r.aopc:7.3f}   D5/D10/D20 = {', '.join(f'{d:.2f}' for d in r.deltas)}"
          f"   ({', '.join(map(str, r.n_ablated))} of {r.n_rankable} tokens zeroed)")

# %% [markdown]
`leave_one_out` gives the ground-truth influence of every token (one forward per token); `loo_agreement`
compares any scores with it. The LOO influence compared with itself is the ceiling: Spearman 1, top-1
percentile 0, Jaccard 1.

# %%
loo = leave_one_out(model, ids, tokenizer=tokenizer)  # .kl: (n,) KL(P_orig || P_ablated) per token
agreement = {name: loo_agreement(s, loo) for name, s in scores.items()}
agreement["LOO itself"] = loo_agreement(loo.kl, loo)
print(f"{'':>11} {'Spearman':>9} {'Kendall':>8} {'top-1 pct':>10} {'top-10% Jaccard':>16}")
for name, a in agreement.items():
    print(f"{name:>11} {a.spearman:9.3f} {a.kendall:8.3f} {a.top1_percentile:10.1f} {a.top_jaccard:16.2f}")
top = loo.kl.argsort(descending=True)[:5]
print("largest LOO influence:", [(tokenizer.decode([int(ids[0, t])]), round(float(loo.kl[t]), 3)) for t in top])

# %%
curves = {name: deletion_curve(model, ids, s, tokenizer=tokenizer) for name, s in scores.items()}
fig = Figure(figsize=(11, 3.8), layout="constrained")
ax_curve, ax_loo = fig.subplots(1, 2)
for name, c in curves.items():
    ax_curve.plot(c.fractions, c.deltas, marker=".", label=f"{name} (AOPC {results[name].aopc:.2f})")
ax_curve.axvspan(0.05, 0.20, color="grey", alpha=0.12, label="AOPC range")
ax_curve.set(xlabel="fraction of tokens zeroed (highest scores first)", ylabel="log p(y*) change")
ax_curve.set_title("Deletion curve, one prompt", loc="left", fontsize=10)
ax_curve.legend(fontsize=8)
rankable = loo.rankable
ax_loo.scatter(scores["semantic"][rankable], loo.kl[rankable], s=12)
ax_loo.set(xscale="log", yscale="log", xlabel="Semantic Scope score", ylabel="leave-one-out KL")
ax_loo.set_title(f"Scope vs ground truth (Spearman {agreement['semantic'].spearman:.2f})", loc="left", fontsize=10)
metrics_png = show(fig, "metrics_one_prompt.png")

# %%
self_agreement = agreement["LOO itself"]
assert abs(self_agreement.spearman - 1) < 1e-9 and self_agreement.top1_percentile == 0 and self_agreement.top_jaccard == 1
assert all(np.isfinite(r.aopc) and np.isfinite(r.deltas).all() for r in results.values())
assert all(abs(curves[n].log_prob - results[n].log_prob) < 1e-9 for n in scores)
assert torch.isfinite(loo.kl).all() and (loo.kl >= 0).all() and loo.kl.sum() > 0
# the metrics called directly give the benchmark's record for the same prompt (id "0", Semantic Scope, target y*)
record = records[0]
assert record["id"] == passage.id == "0"
assert record["target"] == y_star and record["n_tokens"] == ids.shape[1]
assert abs(record["methods"]["semantic"]["aopc"] - results["semantic"].aopc) < 1e-3
assert abs(record["methods"]["semantic"]["loo"]["spearman"] - agreement["semantic"].spearman) < 1e-3
assert metrics_png.is_file()

# %% [markdown]
## 4. The committed full-size results

Full-size runs are committed under `benchmarks/results/` of the repository (the folder names say the model and
the device): the speed benchmark on more prompts and with peak memory, the Fisher estimators against the exact
Fisher Scope (`--skip-speed --fisher-n ...`), and the faithfulness benchmark on the LAMBADA set. We look for the repository from the package's location (an
editable install or `PYTHONPATH`), else from the working directory upwards (Jupyter runs in `tutorials/`).

# %%
import captum_jscopes


def repository_root():
    """The checkout that holds benchmarks/ next to captum_jscopes/, or None (e.g. a wheel install)."""
    here = Path.cwd().resolve()
    for folder in [Path(captum_jscopes.__file__).resolve().parents[1], here, *here.parents]:
        if (folder / "benchmarks").is_dir() and (folder / "captum_jscopes").is_dir():
            return folder
    return None


ROOT = repository_root()
RESULTS = ROOT / "benchmarks" / "results" if ROOT is not None else None
print("results folder:", RESULTS if RESULTS is not None and RESULTS.is_dir() else "not found")
shown = []
for name in ["speed-smollm2-135m-instruct-cpu", "speed-smollm2-135m-instruct-cpu-fisher"]:
    path = RESULTS / name / "speed.md" if RESULTS is not None else None
    if path is not None and path.is_file():
        display(as_markdown(path.read_text()))
        shown.append(path)
    else:
        print(f"{name}/speed.md is not there (not run or not committed in this checkout)")

# %%
reports = sorted(RESULTS.glob("faithfulness-*/report.md")) if RESULTS is not None else []
if not reports:
    print("no faithfulness-*/report.md in benchmarks/results (not run or not committed in this checkout)")
for path in reports:
    text = path.read_text()
    display(Markdown(f"### {path.parent.name}"))
    print(text.split("\n## ")[0].split("\n", 2)[2].strip())
    display(as_markdown(sections(text, "AOPC", "Paired", "Leave-one-out", "How this compares")))
    curves_png = path.parent / "deletion_curves.png"
    if curves_png.is_file():
        show_file(curves_png)
    shown.append(path)
print(len(shown), "committed report(s) shown")

# %%
for path in shown:
    assert path.stat().st_size > 0 and "|" in path.read_text(), path  # a report with its tables

# %% [markdown]
## What the benchmarks showed

{findings}
'''


# =============================================================================
# What each notebook's run showed (the last markdown cell). Written after
# reading the full-size outputs; the numbers quoted are those of the saved run.
# =============================================================================

FINDINGS = {
    "01_quickstart": r"""
Numbers from the saved run (SmolLM2-135M-Instruct, float32, CPU).

- The model completes the prompt with **" Mary"** (p = 0.92), the name that is not repeated.
- **All three scopes put most of the influence on the two names of the first clause.** The Semantic Scope gives
  "Mary" 25% and the first "John" 26% of its total, the repeated "John" only 6%. The Fisher Scope is the most
  concentrated: "When", "Mary" and the first "John" hold 89% of its total. The Temperature Scope (the model's
  confidence) leans most on the first "John" (35%).
- The contrastive scope (" Mary" rather than " John") moves weight onto "When" (10% → 21%) and slightly onto the
  repeated "John" (6% → 8%); the two names stay on top.
- **Integrated Gradients tells a different story**: its largest value is a negative one on the first "to"
  (-12.5), and "Mary" gets +5.1. IG integrates along a path from a baseline input, the scopes measure the local
  sensitivity at the actual input, so the two need not agree on a single prompt. Which one is more
  faithful is measured over many prompts with deletion metrics (AOPC), not read off one example.
- Swapping a scope into the Captum script changed one line; the wrapper's numbers equal the standalone scope's
  (checked above), and Captum's `plot_token_attr`, our heatmap and the JSON round trip all work on the result.
""",
    "02_instructions": r"""
Numbers from the saved run (SmolLM2-135M-Instruct).

- **The model gets every answer right but ignores the format instruction**: asked for one word, it replies with a
  sentence ("The opposite of hot is cold.", "The capital of France is Paris.").
- **The content words of the instruction drive the answer word.** Semantic Scope on the key word:
  "cold" ← "opposite" 26%, "hot" 13%; "short" ← "tall" 23%, "opposite" 19%; "Paris" ← "capital" 24%,
  "France" 14%; "Rome" ← "capital" 17%, "Italy" 13% (with "the" at 16%).
- **The format word "word" is in the top three for three of the four answers (13-17%)**, although the model does
  not follow the format. A large gradient says the logit is sensitive to a token, not that the model obeys it.
- On "cold", the three scopes agree on the order of the content words but differ in concentration: Semantic
  "opposite" 26% / "hot" 13% / "word" 17%; Temperature 21% / 15% / 15%; **Fisher 46% / 26% / 9%**. The Fisher Scope,
  which explains the whole next-token distribution, is the one that sets the format instruction aside.
- Along the whole answer (the matrix), "opposite" dominates almost every row: the answer restates the question
  ("The opposite of hot is ..."), and the restated "hot" draws on the instruction's "hot".
- The paper shows this case study on larger instruction-tuned models; at 135M parameters the picture is the same
  in kind (content words first), with a weaker grip on the format instruction.
""",
    "03_implicit_bias": r"""
Numbers from the saved run. **On our models the paper's result is only partly reproduced.**

- **SmolLM2-135M-Instruct does not think about politics here**: " liberal" and " conservative" both have
  p ≈ 0.0004-0.0005 (rank ~260-280 of 49,152); its top guesses are " big" and " food".
- **"Columbia" gets more influence than "South" for both targets.** Target " liberal": Columbia is first (18% of
  the total), South sixth (7%). Target " conservative": Columbia second (16%, after "Tom"), South sixth (6%). The two
  maps are almost the same (Columbia/South ≈ 2.7 for both), so the paper's split, "South" behind
  " conservative", does not appear.
- **The contrastive scope** (" liberal" rather than " conservative") isolates what separates the two words:
  Columbia first (17%), South only 3% (11th).
- **The counterfactual edits agree with the contrastive scope**: replacing "Columbia" by "Alabama" moves the
  log-odds liberal/conservative by -0.33 (towards conservative), by "college" -0.42; replacing "the South" by
  "the North" or "California" moves it by +0.02 / +0.07. In this model Columbia carries some political signal and
  the South almost none, and both effects are small.
- **Gemma-3-270m (base)** is a little closer to the paper: for " liberal", Columbia (4th, 8%) beats South (7th,
  6%); for " conservative" the two tie (0.40 each, 5%). The contrastive scope again puts Columbia ahead (3rd, 11%,
  against 5%), and the edits tell the same story (Columbia → Alabama -0.48; the South edits at most +0.09).
- So on both small models, Columbia is the place that moves the liberal/conservative balance, in the direction of
  the stereotype; the South's association with " conservative" that the paper finds on larger models is absent
  (SmolLM2) or only visible as a tie (Gemma).
""",
    "04_translation": r"""
Numbers from the saved run (Gemma-3-270m base, CPU).

- **Model and pair**: Gemma-3-270m translates both sentences exactly ("The black cat sleeps on the bed.", "The
  dog plays in the garden."); the default SmolLM2-135M-Instruct does not ("The black cat on the leash.", "The dog
  is a dog."). French → English and German → English, from a "French: ... / English:" prompt as in the paper.
- **The Fisher Scope reproduces the paper's alignment**: every content word puts its largest share on the source
  word it translates, 7 of 7: black → noir (36%), cat → chat (36%), sleeps → dort (65%), bed → lit (52%);
  dog → Hund (37%), plays → spielt (50%), garden → Garten (37%).
- The French word order swap shows: "black" reads "noir" first and "chat" second, "cat" the other way round,
  which is the crossing in the left matrix.
- Function words attach to the phrase they belong to: "on" to "dort", the "the" before "bed" to "lit",
  "in" to "spielt" and "im", and the final "." to the source's ".".
- **The Semantic Scope aligns less sharply**: the expected source word's share is about half of Fisher's
  (16-38% against 36-65%) and spreads the rest over the whole prompt, the language labels included.
- **Cost**: the Fisher Scope took half a minute to a minute per sentence (7-8 output tokens) on a shared 2-core
  CPU, against about a second for the Semantic Scope. Most of it is building the Fisher matrix over Gemma's 262k-token
  vocabulary at every output position.
""",
    "05_forecasting": r"""
Numbers from the saved run: 8 random series of 200 values per kind, SmolLM2-135M-Instruct.

- **Forecasting**: the model continues the **logistic map almost exactly** (mean absolute error 0.7 written units,
  against 34 for repeating the last value). On the Lorenz series (3.7 against 3.2) and Brownian motion (3.2
  against 3.7) it does about as well as repeating the last value.
- **Pattern matching on chaotic series: reproduced.** The values that followed the past segments most similar to
  the present one get 1.5 to 3 times the average influence (lift, `w` = 1 / 5: Lorenz 3.0 / 2.5, logistic map
  2.8 / 1.5), and influence correlates with similarity to the present (Lorenz rho = 0.25 / 0.19). The control, the
  same correlation against a random past segment, is at or below zero (-0.06, -0.02), so it is the present
  segment the model matches. For the logistic map the matching is on single values (`w` = 1): its next value
  depends on the current value only, and the model finds its earlier occurrences; correlations over all positions
  are small (rho = 0.11) because the influence sits on those few matches.
- **Recency on Brownian motion: only weakly reproduced.** The last 10% of values hold 34% of the influence for
  Brownian motion, against 30% (Lorenz) and 25% (logistic map), so it is the most recency-weighted of the three,
  in the paper's direction. But the 135M model also pattern-matches on Brownian motion (rho = 0.34 / 0.39, lift
  2.9 / 2.4), where earlier segments carry no information about the next step. The clean contrast of the
  paper's larger models (chaotic: matching; stochastic: recency) is blurred at this size.
- As in every map, the first value gets a large score (an attention sink); the metrics leave the first two
  values out.
""",
    "06_benchmarks": r"""
The small runs above take minutes; the numbers quoted here are from the committed full-size runs in
`benchmarks/results/` (SmolLM2-135M-Instruct and Gemma-3-270m, CPU, one thread per process), shown in section 4 and discussed in
`benchmarks/README.md`.

- **Semantic and Temperature cost what an input gradient costs**: 0.98x and 1.03x the floor per explained
  token (10 prompts), at every length from 64 to 2048 tokens (0.9-1.0x), with 1.06x the floor's peak memory.
  The small run above shows the same ratios to within its noise.
- **Captum's Integrated Gradients (50 steps) is 85x slower** than the Semantic Scope and needs 89x the floor's
  memory (its 50 interpolation steps run as one batch); gradient and gradient x input through Captum's LLM
  wrapper cost 1.3x the floor.
- **The Fisher Scope is the expensive one**: the default estimator is 40 backward passes (17.5x the floor),
  exact Fisher 576 (308x). On the first 50 LAMBADA prompts the default's scores have median Spearman 0.9996
  and relative L2 error 1.7% against exact, at 1/14 of exact's time; the reference's eig k = 1 is cheap
  (1.6x the floor) but 80% off in L2 (its ranking is still close: Spearman 0.98).
- **A 16-token target** through `LLMScopeAttribution` is 2.7x faster than Captum's per-token loop.
- **Faithfulness on 3 prompts says nothing about the ordering of methods**: the standard errors are as large
  as the differences. What it does show is the protocol: on average every method lowers `log p(y*)` faster than
  random deletion, and on the first prompt (section 3) the Semantic Scope's ranking agrees with leave-one-out far
  better than random scores do.
- **On all 1000 LAMBADA prompts** (the paper's six methods, section 4) the AOPC orders them Fisher k = 1
  (-1.165 +- 0.018) < Semantic (-1.138) < gradient x input (-1.119) < Temperature (-1.076) < IG-5 (-0.820) <
  random (-0.259). Fisher k = 1 and Semantic beat gradient x input in the paired test (p < 1e-4), as in the
  paper; Temperature is significantly *worse* than gradient x input here (+0.043 +- 0.008), unlike the paper's
  four models. On leave-one-out (first 40 prompts) the order of the paper's Llama-3.2-1B table is reproduced
  (Spearman 0.41-0.44 for the scopes and gradient x input, 0.09 for IG-5, 0 for random).
- **All nine methods on the 1000 prompts** (the `-combined` report: the six above joined with a second run of
  the Fisher default estimator, saliency and IG-50): every scope is more faithful than Captum's IG with 50 steps,
  by 0.18-0.27 AOPC (paired p < 1e-4; IG-50 -0.891, at 36x a scope's time), and IG agrees with leave-one-out
  barely better than chance (Spearman 0.09). The Fisher default estimator (-1.144) agrees best with leave-one-out
  (0.455) but the cheap eig k = 1 has the better AOPC; saliency and the Semantic Scope give the same curves, as
  they must (the gradient norm of the `y*` logit).
- **A second architecture, Gemma-3-270m base, on the same 1000 prompts** (the paper's six methods): Fisher k = 1
  (-1.553 +- 0.022) < Semantic (-1.549) < Temperature (-1.534) < gradient x input (-1.498) < IG-5 (-0.681) <
  random (-0.277), Kendall tau 0.87 with the paper's Llama-3.2 and gemma-3-1b columns. Here all three scopes beat
  gradient x input (p < 1e-4), Temperature included, as in the paper.
""",
}

SOURCES = {
    "01_quickstart": QUICKSTART,
    "02_instructions": INSTRUCTION_UNDERSTANDING,
    "03_implicit_bias": BIAS,
    "04_translation": TRANSLATION,
    "05_forecasting": FORECASTING,
    "06_benchmarks": BENCHMARKS,
}

NOTEBOOKS = {
    name: source.replace("{setup}", setup_cell(name)).replace("{findings}", FINDINGS[name].strip())
    for name, source in SOURCES.items()
}

if __name__ == "__main__":
    main()
