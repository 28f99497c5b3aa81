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
# # 03 · Implicit bias: what makes the model say "liberal" or "conservative"?
#
# The paper's prompt is *"Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"*. On the
# paper's (larger) models, the Semantic Scope puts "Columbia" behind the target `" liberal"` and "South" behind
# the target `" conservative"`: the model's political guess leans on a stereotype of each place.
# Here we run the same analysis on SmolLM2-135M-Instruct, add the contrastive scope
# (`" liberal"` rather than `" conservative"`), and check the scopes' story with a counterfactual edit of the
# prompt.

# %%
import numpy as np
import torch

from captum_jscopes.display.notebook import tutorial

FAST, OUT, show = tutorial("03_implicit_bias")  # JSCOPES_TUTORIAL_FAST=1 (the test suite) runs a reduced size


# %%
from captum_jscopes import load_model
from captum_jscopes.display.visualize import display_token, plot_token_heatmap

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
# Neither word is anywhere near the top: the model would rather continue with "big" or "food". The scopes still
# tell us what drives each word's logit, which is the question here.
#
# ## Semantic Scope on each target, and the contrastive scope

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
# ## A counterfactual check
#
# The scores are gradient norms: they say how strongly a token moves a logit, not in which direction. Editing the
# prompt gives the direction. Below, the log-odds `log p(liberal) - log p(conservative)` of the original prompt
# and of edits that swap one place name.

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
# ## The same on Gemma-3-270m (base)
#
# A second small model for comparison (skipped in the fast test run, and when the optional Gemma package is not
# installed).

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
# ## What the models showed
#
# Numbers from the saved run. **On our models the paper's result is only partly reproduced.**
#
# - **SmolLM2-135M-Instruct does not think about politics here**: " liberal" and " conservative" both have
#   p ≈ 0.0004-0.0005 (rank ~260-280 of 49,152); its top guesses are " big" and " food".
# - **"Columbia" gets more influence than "South" for both targets.** Target " liberal": Columbia is first (18% of
#   the total), South sixth (7%). Target " conservative": Columbia second (16%, after "Tom"), South sixth (6%). The two
#   maps are almost the same (Columbia/South ≈ 2.7 for both), so the paper's split, "South" behind
#   " conservative", does not appear.
# - **The contrastive scope** (" liberal" rather than " conservative") isolates what separates the two words:
#   Columbia first (17%), South only 3% (11th).
# - **The counterfactual edits agree with the contrastive scope**: replacing "Columbia" by "Alabama" moves the
#   log-odds liberal/conservative by -0.33 (towards conservative), by "college" -0.42; replacing "the South" by
#   "the North" or "California" moves it by +0.02 / +0.07. In this model Columbia carries some political signal and
#   the South almost none, and both effects are small.
# - **Gemma-3-270m (base)** is a little closer to the paper: for " liberal", Columbia (4th, 8%) beats South (7th,
#   6%); for " conservative" the two tie (0.40 each, 5%). The contrastive scope again puts Columbia ahead (3rd, 11%,
#   against 5%), and the edits tell the same story (Columbia → Alabama -0.48; the South edits at most +0.09).
# - So on both small models, Columbia is the place that moves the liberal/conservative balance, in the direction of
#   the stereotype; the South's association with " conservative" that the paper finds on larger models is absent
#   (SmolLM2) or only visible as a tie (Gemma).
