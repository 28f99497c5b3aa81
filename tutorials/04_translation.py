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
# # 04 · Translation: the Fisher Scope aligns output words with source words
#
# In the paper, a model translates a German sentence ("German: ... English: ...") and the Fisher Scope on each
# output word lights up the source words it translates. The Fisher Scope explains the whole next-token
# distribution, so it needs no target: it asks which input tokens the prediction at that position is most
# sensitive to.
#
# **Model and language pair.** The default SmolLM2-135M-Instruct does not translate (its attempts are printed
# below). The embedded **Gemma-3-270m base** model translates short French and German sentences into English
# correctly, so this notebook uses Gemma on **French → English** and **German → English**. The fast test run
# uses the default model and only the French sentence; it checks that the code works, not the alignments.

# %%
import torch

from captum_jscopes.display.notebook import tutorial

FAST, OUT, show = tutorial("04_translation")  # JSCOPES_TUTORIAL_FAST=1 (the test suite) runs a reduced size


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
# ## Can the model translate?

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
# ## Fisher Scope along the output words
#
# We teacher-force the reference translation (here it is also Gemma's own output) as a multi-token target:
# `LLMScopeAttribution` attributes every output token from one forward pass over prompt + translation. Row `i` of
# `token_attr` holds the Fisher scores of the prompt tokens for the prediction of output token `i`.

# %%
import time

from captum.attr import TextTokenInput

from captum_jscopes import FisherScope, LLMScopeAttribution, SemanticScope
from captum_jscopes.display.visualize import display_token

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
# ## Alignment matrices
#
# Rows: output tokens. Columns: the source sentence's tokens. A cell is the source token's share of the row's
# Fisher score over the **whole** prompt (the rest of a row's share sits on the language labels and the line
# break). The bold frame marks the largest cell of each row.

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
# Does the largest cell of each content word sit on the source word it translates?

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
# ## Fisher versus Semantic
#
# The Semantic Scope explains one logit (the target word's) instead of the whole distribution. On the same
# translation it spreads more evenly; below, the expected source word's share of the row for each content word.

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
# ## What the model showed
#
# Numbers from the saved run (Gemma-3-270m base, CPU).
#
# - **Model and pair**: Gemma-3-270m translates both sentences exactly ("The black cat sleeps on the bed.", "The
#   dog plays in the garden."); the default SmolLM2-135M-Instruct does not ("The black cat on the leash.", "The dog
#   is a dog."). French → English and German → English, from a "French: ... / English:" prompt as in the paper.
# - **The Fisher Scope reproduces the paper's alignment**: every content word puts its largest share on the source
#   word it translates, 7 of 7: black → noir (36%), cat → chat (36%), sleeps → dort (65%), bed → lit (52%);
#   dog → Hund (37%), plays → spielt (50%), garden → Garten (37%).
# - The French word order swap shows: "black" reads "noir" first and "chat" second, "cat" the other way round,
#   which is the crossing in the left matrix.
# - Function words attach to the phrase they belong to: "on" to "dort", the "the" before "bed" to "lit",
#   "in" to "spielt" and "im", and the final "." to the source's ".".
# - **The Semantic Scope aligns less sharply**: the expected source word's share is about half of Fisher's
#   (16-38% against 36-65%) and spreads the rest over the whole prompt, the language labels included.
# - **Cost**: the Fisher Scope takes 6-8 s per sentence (7-8 output tokens) on a quiet 2-core CPU, against about a
#   second for the Semantic Scope (measured with `estimator="hutchinson"`, 40 passes; the default now,
#   `"krylov"`, takes the same time with 48, its JVPs stopping before the output head). Almost all of it is the
#   passes: the Fisher matrix over Gemma's 262k-token vocabulary is never formed (0.7 s per sentence for
#   the F side). The estimator of 0.1.0 (`estimator="deflated"`) formed it at every output position and took 16-20 s
#   (docs/fisher.md).
