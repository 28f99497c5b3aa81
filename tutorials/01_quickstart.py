# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: Jacobian Scopes as a drop-in Captum attribution
#
# Jacobian Scopes ([arXiv 2601.16407](https://arxiv.org/abs/2601.16407)) score every input token of a causal
# language model by how strongly the model's final hidden state `y` at the explained position reacts to that
# token's input embedding `x_t`: one vector-Jacobian product `v^T J_t` (with `J_t = dy/dx_t`), reduced over the
# embedding dimension with the L2 norm. The three scopes differ only in the direction `v`:
#
# | scope | direction `v` in hidden space | what it explains | cost |
# |---|---|---|---|
# | Semantic | `w_target`, the target token's unembedding row | one logit (optionally *target rather than foil*) | 1 backward pass |
# | Temperature | `y / ‖y‖` | the model's confidence `‖y‖` (an inverse temperature) | 1 backward pass |
# | Fisher | directions of the Fisher matrix of the next-token distribution | the whole predictive distribution | a few dozen backward passes |
#
# This notebook
#
# 1. runs an ordinary Captum LLM-attribution script (Integrated Gradients),
# 2. swaps a scope into it by changing one line,
# 3. calls the three scopes directly on token ids,
# 4. draws a result with Captum's own `plot_token_attr` and with our token heatmap.
#
# Model: the embedded default, SmolLM2-135M-Instruct, on the CPU in float32.

# %%
import torch
from IPython.display import Image, display

from captum_jscopes.display.notebook import tutorial

FAST, OUT, show = tutorial("01_quickstart")  # JSCOPES_TUTORIAL_FAST=1 (the test suite) runs a reduced size


# %%
from captum_jscopes import describe_model, load_model

model, tokenizer = load_model(progress=False)  # the embedded SmolLM2-135M-Instruct, converted once and cached
print(describe_model(model), "|", type(model).__name__, "|", next(model.parameters()).dtype)

# %% [markdown]
# A classic prompt from interpretability work (indirect object identification): the model should complete
# the name that is *not* repeated. First, what does it predict?

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
# ## 1. An existing Captum script
#
# This is how Captum's LLM tutorial attributes a target string to the prompt tokens with Integrated Gradients
# on the embedding layer. `skip_tokens` leaves the BOS token out of the result for tokenizers that add one.

# %%
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

emb = model.get_input_embeddings()
inp = TextTokenInput(prompt, tokenizer, skip_tokens=[tokenizer.bos_token])

llm_attr = LLMGradientAttribution(LayerIntegratedGradients(model, emb), tokenizer)
ig_result = llm_attr.attribute(inp, target=" Mary")
print(type(ig_result).__name__, tuple(ig_result.token_attr.shape))

# %% [markdown]
# ## 2. The same script with a scope swapped in
#
# `LLMScopeAttribution` is Captum's `LLMGradientAttribution` that also accepts a Jacobian Scope. Only the line
# that builds the attribution object changes; the input, the target and the result type stay the same.

# %%
from captum_jscopes import LLMScopeAttribution, SemanticScope

llm_attr = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer)  # <- the one changed line
sem_result = llm_attr.attribute(inp, target=" Mary")
sem_result  # a ScopeResult shows itself as coloured tokens

# %%
from captum_jscopes.display.visualize import display_token

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
# Integrated Gradients gives signed values that add up (roughly) to the change of the target's log-probability
# between a baseline input (Captum's default) and the actual one; the Semantic Scope gives the size of the
# gradient of the target logit at the actual input, one backward pass instead of 50 forward-backward steps.
#
# ## 3. The three scopes on token ids
#
# The scopes are Captum attribution classes of their own and take token ids directly. Each returns one score per
# input token, shape `(batch, seq)`. The Semantic Scope also takes a contrastive target `(target, foil)`,
# which explains "why Mary rather than John"; Temperature and Fisher explain the whole prediction and take no
# target.

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
# ## 4. Pictures
#
# A `ScopeResult` is a Captum `LLMAttributionResult`, so Captum's own plot works on it. To get more than one
# row, let the wrapper generate a short continuation and attribute every generated token (one teacher-forced
# forward pass over prompt + continuation).

# %%
import matplotlib.pyplot as plt

gen_result = llm_attr.attribute(inp, gen_args={"max_new_tokens": 5, "do_sample": False})
print("generated:", repr(gen_result.metadata["target"]))
fig, ax = gen_result.plot_token_attr(show=False)  # Captum's plot
captum_png = show(fig, "captum_plot_token_attr.png")
plt.close(fig)

# %% [markdown]
# Our heatmap draws the tokens as text, coloured by influence, with the target in red (the style of the paper's
# figures). `save_heatmap` writes one result as a PNG; `plot_token_heatmap` draws any tokens and scores, here
# the four maps of section 3 one below the other.

# %%
from captum_jscopes.display.visualize import plot_token_heatmap, save_heatmap

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
# Results are saved losslessly as JSON (the Captum input object is not stored):

# %%
from captum_jscopes import ScopeResult

json_path = sem_result.save_json(OUT / "semantic_mary.json")
assert ScopeResult.load_json(json_path) == sem_result
print(json_path, json_path.stat().st_size, "bytes")

# %% [markdown]
# ## What the model showed
#
# Numbers from the saved run (SmolLM2-135M-Instruct, float32, CPU).
#
# - The model completes the prompt with **" Mary"** (p = 0.92), the name that is not repeated.
# - **All three scopes put most of the influence on the two names of the first clause.** The Semantic Scope gives
#   "Mary" 25% and the first "John" 26% of its total, the repeated "John" only 6%. The Fisher Scope is the most
#   concentrated: "When", "Mary" and the first "John" hold 89% of its total. The Temperature Scope (the model's
#   confidence) leans most on the first "John" (35%).
# - The contrastive scope (" Mary" rather than " John") moves weight onto "When" (10% → 21%) and slightly onto the
#   repeated "John" (6% → 8%); the two names stay on top.
# - **Integrated Gradients tells a different story**: its largest value is a negative one on the first "to"
#   (-12.5), and "Mary" gets +5.1. IG integrates along a path from a baseline input, the scopes measure the local
#   sensitivity at the actual input, so the two need not agree on a single prompt. Which one is more
#   faithful is measured over many prompts with deletion metrics (AOPC), not read off one example.
# - Swapping a scope into the Captum script changed one line; the wrapper's numbers equal the standalone scope's
#   (checked above), and Captum's `plot_token_attr`, our heatmap and the JSON round trip all work on the result.
