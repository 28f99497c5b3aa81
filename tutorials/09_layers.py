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
# # 09 · Where influence travels: the map at every layer
#
# A scope's map scores input token t by vector-Jacobian products `v^T dy/dx_t` at the input embeddings. On its
# way down to the embeddings, the backward pass that computes them goes through the residual stream after every
# decoder layer. So the same product taken at `h_l` (the residual stream after layer l) costs one more gradient
# read-out per layer, not one more backward pass. `layer_map` returns all of them: row l scores position t by
# the scope's own rule with `h_l[t]` in place of `x_t`. Row 0 is the ordinary map.
#
# Read down a column to see where a token's influence sits. At the bottom it sits at the token's own position.
# Attention moves information between positions, so higher up the position that first held the token may stop
# carrying it: the token has **handed off** its influence to later positions. After the last layer only the
# explained position is left, because its residual stream is all the head reads.
#
# `LayerMap.handoff()` names, per token, the first layer from which its own position keeps less than half of its
# largest share of a row. The pictures (`captum_jscopes.display.layers.plot_layer_map`) mark it with an orange
# bar. Three prompts, with the embedded SmolLM2-135M-Instruct, and the three scopes (Fisher with its quick
# estimator, `estimator="eig", k=1`):
#
# 1. "The capital of France is" → " Paris";
# 2. a LAMBADA passage (the model predicts the passage's last word);
# 3. a French → English translation, token by token along the output.

# %%
import torch
from matplotlib.figure import Figure

from captum_jscopes.display.notebook import tutorial

FAST, OUT, show = tutorial("09_layers")  # JSCOPES_TUTORIAL_FAST=1 (the test suite) runs a reduced size

from captum_jscopes import FisherScope, LLMScopeAttribution, SemanticScope, TemperatureScope, layer_map, load_model
from captum_jscopes.display.interactive import save_interactive_html
from captum_jscopes.display.layers import layer_labels, plot_layer_map
from captum_jscopes.runs.prompts import load_prompts, prepare_prompt

model, tokenizer = load_model(progress=False)  # the embedded SmolLM2-135M-Instruct
N_LAYERS = model.config.num_hidden_layers
SCOPES = {
    "semantic": SemanticScope(model, tokenizer),
    "temperature": TemperatureScope(model, tokenizer),
    "fisher": FisherScope(model, tokenizer),
}
OPTIONS = {"fisher": dict(estimator="eig", k=1)}  # one backward pass per layer map, like the other two


def layer_maps(ids, target):
    """Each scope's LayerMap of the prediction of token id ``target`` after ``ids`` (1, n). The Semantic Scope
    explains that token; Temperature and Fisher explain the whole next-token distribution."""
    return {name: layer_map(scope, ids, **({"target": target} if name == "semantic" else {}), **OPTIONS.get(name, {}))
            for name, scope in SCOPES.items()}


def handoff_lines(maps, top=4):
    """Per scope, the ``top`` tokens of the ordinary map (row 0) and the layer each one hands off at."""
    for name, found in maps.items():
        labels = layer_labels(found.input_ids[0], tokenizer)
        handoff = found.handoff()[0]
        order = found.scores[0, 0].argsort(descending=True)[:top].tolist()
        where = [f"{labels[i]!r} {'kept' if int(handoff[i]) > N_LAYERS else 'layer ' + str(int(handoff[i]))}"
                 for i in order]
        print(f"{name:12s} " + ", ".join(where))


def takeover(found):
    """The first layer whose row gives the explained position at least half of the row's total."""
    share = found.final_share()[0]
    return int((share >= 0.5).nonzero()[0])


def side_by_side(maps, target, filename):
    """The three scopes' layer maps in one figure (a short prompt)."""
    fig = Figure(figsize=(15, 6.2), facecolor="white")
    for ax, found in zip(fig.subplots(1, 3, gridspec_kw={"wspace": 0.55}), maps.values()):
        plot_layer_map(found, tokenizer, ax=ax, target=target)
    return show(fig, filename)


# %% [markdown]
# ## 1 · "The capital of France is" → " Paris"
#
# Layer 0 is at the bottom and the deepest layer at the top. Each row is divided by its own maximum, because the
# residual stream grows with depth and the raw gradients shrink with it. Compare tokens within a row, not rows
# with each other.

# %%
ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    probs = model(input_ids=ids).logits[0, -1].softmax(-1)
paris = tokenizer.encode(" Paris", add_special_tokens=False)[0]
print(f"p(' Paris') = {float(probs[paris]):.2f}; top prediction {tokenizer.decode([int(probs.argmax())])!r}")
capital = layer_maps(ids, paris)
side_by_side(capital, " Paris", "capital.png")
handoff_lines(capital)
print("explained position holds half of a row from layer:",
      {name: takeover(found) for name, found in capital.items()})

# %%
# assert: row 0 is each scope's ordinary map; the last row holds only the explained position
for name, found in capital.items():
    assert found.scores.shape == (1, N_LAYERS + 1, ids.shape[1])
    options = {"target": paris} if name == "semantic" else {}
    alone = SCOPES[name].attribute(ids, **options, **OPTIONS.get(name, {}))[0]
    torch.testing.assert_close(found.scores[0, 0], alone, rtol=1e-4, atol=1e-6)
    assert float(found.final_share()[0, -1]) > 0.999
    assert torch.allclose(found.shares()[0].sum(-1), torch.ones(N_LAYERS + 1, dtype=torch.float64))

# %% [markdown]
# ## 2 · A LAMBADA passage
#
# The third passage of the shipped LAMBADA-1000 (as in notebook 07). The model predicts its last word. The fast
# run keeps the last 40 tokens.

# %%
passage = load_prompts("lambada", 3)[2]
prepared = prepare_prompt(tokenizer, passage.text, max_tokens=40 if FAST else None)
ids = prepared.input_ids
with torch.no_grad():
    probs = model(input_ids=ids).logits[0, -1].softmax(-1)
predicted = int(probs.argmax())
print(f"{ids.shape[1]} tokens; the passage ends with {tokenizer.decode([prepared.true_token])!r}; "
      f"the model predicts {tokenizer.decode([predicted])!r} (p = {float(probs[predicted]):.2f})")
lambada = layer_maps(ids, predicted)
for name, found in lambada.items():
    show(plot_layer_map(found, tokenizer, target=tokenizer.decode([predicted])), f"lambada_{name}.png")
handoff_lines(lambada, top=6)
print("explained position holds half of a row from layer:",
      {name: takeover(found) for name, found in lambada.items()})

# %% [markdown]
# How the whole prompt hands off: per row, the share held by the explained position itself, and by the prompt's
# top tokens of row 0 (the ordinary map's five strongest, the explained position excluded).

# %%
fig = Figure(figsize=(9, 3.6), facecolor="white")
axes = fig.subplots(1, 2)
for name, found in lambada.items():
    shares = found.shares()[0]
    top5 = found.scores[0, 0, :-1].argsort(descending=True)[:5]
    axes[0].plot(found.final_share()[0].numpy(), label=name)
    axes[1].plot(shares[:, top5].sum(-1).numpy(), label=name)
axes[0].set_title("share of the explained position", fontsize=10)
axes[1].set_title("share of row 0's top 5 tokens", fontsize=10)
for ax in axes:
    ax.set_xlabel("layer (0 = input embeddings)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
show(fig, "lambada_shares.png")

# %%
# assert: the explained position's share ends at 1 for every scope, and every hand-off layer is in range
for found in lambada.values():
    assert float(found.final_share()[0, -1]) > 0.999
    handoff = found.handoff()[0]
    assert int(handoff[-1]) == N_LAYERS + 1 and bool(((handoff >= 0) & (handoff <= N_LAYERS + 1)).all())

# %% [markdown]
# ## 3 · Translation, along the output
#
# French to English in the format of notebook 04. `LLMScopeAttribution` explains each output token from one
# teacher-forced forward pass. For the layer view, `scope_output(..., layers=True)` gives every output token its
# (L + 1, n) map from the same input. Here we use the Semantic Scope: does a source word, for example 'chat'
# behind ' cat', keep its influence at its own position up to a late layer?

# %%
from captum.attr import TextTokenInput

prompt = "French: Le chat noir dort sur le lit.\nEnglish:"
reference = " The black cat sleeps." if FAST else " The black cat sleeps on the bed."
semantic = SCOPES["semantic"]
wrapper = LLMScopeAttribution(semantic, tokenizer)
inp = TextTokenInput(prompt, tokenizer)
result = wrapper.attribute(inp, target=reference)
target_ids = torch.tensor(tokenizer.encode(reference, add_special_tokens=False))
prompt_ids, targets, ids, positions = wrapper.model_inputs(inp, target_ids)
# (P, L + 1, n): per output token its layer map, on the prompt's columns (the result's input tokens)
grid = semantic.scope_output(ids, positions, targets[None], layers=True).scores[0, :, :, : prompt_ids.shape[1]]
labels = layer_labels(prompt_ids[0], tokenizer)
outputs = result.output_display
page = save_interactive_html(result, OUT / "translation_interactive.html", layers=grid)
print(f"{len(outputs)} output tokens; the interactive page with its layer view: {page}")

# %%
# assert: row 0 of each output token's layer map is that token's row of the ordinary result
assert grid.shape == (len(outputs), N_LAYERS + 1, len(result.input_tokens))
torch.testing.assert_close(grid[:, 0], result.token_attr, rtol=1e-4, atol=1e-6)

# %% [markdown]
# The layer map of the output word ' cat' (the French 'chat' is in the prompt), and for each output word the
# strongest source token of row 0 with the layer where it hands off. Only the prompt's columns are shown, as in
# the result. The output tokens before ' cat' are inputs too, and at deep layers they (and the explained
# position, ' black') hold most of each row. So the rows here are divided by their maximum over the prompt's
# columns, and the last row is empty.

# %%
from captum_jscopes.analysis.layers import LayerMap


def prompt_layer_map(scores):
    """A LayerMap of one output token's (L + 1, n) grid on the prompt's columns, for its picture and hand-offs."""
    n = scores.shape[-1]
    return LayerMap(scores=scores[None], error=torch.zeros_like(scores[None]), input_ids=prompt_ids.cpu(),
                    attention_mask=torch.ones(1, n, dtype=torch.long), positions=torch.tensor([n - 1]),
                    scope="semantic")


k_cat = outputs.index(" cat")
# ' cat' is predicted at the position of ' black' (a target token, not a prompt column): no position is marked
caption = f"explains ' cat' (output token {k_cat + 1}, teacher-forced); columns: the prompt"
show(plot_layer_map(prompt_layer_map(grid[k_cat]), tokenizer, mark_position=False, caption=caption),
     "translation_cat.png")
sentence = prompt[prompt.index(" ") + 1 : prompt.index("\n")]  # the French sentence
start = prompt.index(sentence)
offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
source = [i for i, (a, b) in enumerate(offsets) if a < start + len(sentence) and b > start and b > a]
for k, word in enumerate(outputs):
    best = max(source, key=lambda i: float(grid[k, 0, i]))
    handoff = int(prompt_layer_map(grid[k]).handoff()[0, best])
    print(f"{word!r:10s} strongest source token {labels[best]!r:8s} hands off at layer {handoff}")

# %% [markdown]
# ## Caveats
#
# - **First order.** Each row is a gradient: how the prediction would move under an infinitesimal change of
#   `h_l[t]`. It is not what patching or removing that state would do. Notebook 07 shows that the gradient picture
#   already stops being linear at small moves of the input embeddings, and nothing makes it more linear deeper in.
# - **Scales differ between layers.** The residual stream grows with depth, so the gradients shrink. Only the
#   rows' *shares* (or each row over its maximum, as in the pictures) compare across layers, never raw scores.
#   A hand-off means the token's share at its own position fell. It does not say the influence has vanished: it
#   has moved to later positions, and the map does not say which ones.
# - **The hand-off threshold is a choice.** "Below half of the token's largest share, from here up" is one rule
#   (`handoff(fraction=...)` changes it). Tokens that never carry much get a noisy hand-off layer, and the
#   pictures leave them unmarked.

# %% [markdown]
# ## What the model showed
#
# From the full-size run above (SmolLM2-135M-Instruct, 30 layers; Fisher with `estimator="eig", k=1`):
#
# - **The prompt's influence moves to the explained position in the upper half of the network.** On "The
#   capital of France is", the explained position ' is' holds half of a row from layer 16 (Semantic), 14
#   (Temperature) or 12 (Fisher). ' capital' and ' of' hand off at layers 10-16. ' France' keeps its share at
#   its own position up to layer 24 under all three scopes: the token that names the answer is read from its
#   own position longest.
# - **The first tokens' large row-0 scores often do not survive the first layer.** 'The' (capital prompt) hands
#   off at layer 1 under Semantic and Fisher; 'Every' and ' few' (the passage's first tokens) at layer 1 under
#   Temperature and Fisher. This fits notebook 07: part of what the ordinary map gives the first positions comes from
#   where they sit (the sink), not from a route to the prediction through the layers.
# - **On the LAMBADA passage the scopes differ in where the influence goes.** The model predicts ' outside'
#   (p = 0.13; the passage ends with ' ultrasound'). Under Fisher the explained position holds half of a row from
#   layer 18, and row 0's five strongest tokens hold 68-75% of each row up to layer 10, falling to under 10%
#   by layer 22. Under Semantic and Temperature the map stays spread: the top five hold 8-27% of each row up
#   to layer 27, and the explained position takes half only at layers 25-28. Content tokens near the end (' tell',
#   ' really', ' ultrasound', ' from') hand off between layers 9 and 29.
# - **Translation reads the source word late.** For most output words the strongest source token of row 0 is
#   'chat' (' The', ' black', ' cat', 's', ' on'); for ' the' and ' bed' it is 'lit', for ' sleep' 'ort' (of
#   'dort'). These source tokens keep their influence at their own positions up to layers 22-30. The exception
#   is ' on' (layer 14). This is later than the hand-offs in the capital prompt, as if the model looked the
#   source word up at its position late, close to where the English word is written.
# - **Limits.** These are three prompts on one small model, read through a first-order picture whose rows have
#   different scales (see the caveats above). The hand-off layer depends on the threshold (half of the token's
#   largest share). Whether a late hand-off means the model *uses* the state at that position is a question for
#   activation patching, which this notebook does not run.
