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
# # 02 · Instruction understanding: which words of an instruction drive the answer
#
# The paper's first case study asks which words of an instruction a model relies on when it answers. Here we
# send chat-formatted instructions to the instruct model (SmolLM2-135M-Instruct), check first that it answers
# them, and attribute the answer to the words of the **user's message only**: the chat template's markers and
# the default system prompt ("You are a helpful AI assistant named SmolLM, ...") stay in the model input, but get
# no score.

# %%
import torch
from IPython.display import Image, display

from captum_jscopes.display.notebook import tutorial

FAST, OUT, show = tutorial("02_instructions")  # JSCOPES_TUTORIAL_FAST=1 (the test suite) runs a reduced size


# %%
from captum_jscopes import load_model

model, tokenizer = load_model(progress=False)

# %% [markdown]
# ## Does the model follow the instructions?
#
# Attributing an answer the model does not give would explain nothing, so we look at its greedy replies first.
# Each instruction comes with the word we expect in the answer (the "key word" we explain later).

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
# The content of every answer is right, but the 135M model ignores the format ("one word") and answers with a
# short sentence. We explain the sentence it actually produces.
#
# ## Which instruction words drive each answer token?
#
# `chat_input` builds a Captum input whose interpretable tokens are the user's message only. `LLMScopeAttribution`
# teacher-forces the model's own answer and explains every answer token with the Semantic Scope (target = that
# token), all from one forward pass. Each line below is one answer token (in red) and the instruction coloured by
# its influence on it.

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
# The same as a matrix: each row is one answer token, each column one instruction token, and a cell holds the
# token's share of that row's total influence.

# %%
from matplotlib.figure import Figure

from captum_jscopes.display.visualize import display_token, plot_token_heatmap, save_heatmap


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
# The key word of the answer, alone:

# %%
answer_words = [display_token(t).strip() for t in result.output_tokens]
row = answer_words.index(word.strip())
key_png = save_heatmap(result, OUT / "key_word.png", row=row, title=f"Semantic Scope, answer word {word!r}")
display(Image(filename=str(key_png)))
print("top instruction tokens:", [(display_token(t), round(s, 2)) for _, t, s in result.top_tokens(4, row=row)])

# %% [markdown]
# ## The standalone API, and the three scopes
#
# `chat_prompt` gives the token ids of the chat-formatted prompt and a mask of the user's tokens. We append the
# answer up to the key word, explain the prediction of the key word at the last position, and pass
# `token_mask` so that only the user's words are scored. The Semantic Scope explains the key word's logit,
# the Temperature Scope the model's confidence, the Fisher Scope the whole next-token distribution.

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
# ## All instructions
#
# For each instruction: the probability of the key word in the model's answer and the instruction tokens that
# drive it most (Semantic Scope, share of the row's total).

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
# ## What the model showed
#
# Numbers from the saved run (SmolLM2-135M-Instruct).
#
# - **The model gets every answer right but ignores the format instruction**: asked for one word, it replies with a
#   sentence ("The opposite of hot is cold.", "The capital of France is Paris.").
# - **The content words of the instruction drive the answer word.** Semantic Scope on the key word:
#   "cold" ← "opposite" 26%, "hot" 13%; "short" ← "tall" 23%, "opposite" 19%; "Paris" ← "capital" 24%,
#   "France" 14%; "Rome" ← "capital" 17%, "Italy" 13% (with "the" at 16%).
# - **The format word "word" is in the top three for three of the four answers (13-17%)**, although the model does
#   not follow the format. A large gradient says the logit is sensitive to a token, not that the model obeys it.
# - On "cold", the three scopes agree on the order of the content words but differ in concentration: Semantic
#   "opposite" 26% / "hot" 13% / "word" 17%; Temperature 21% / 15% / 15%; **Fisher 46% / 26% / 9%**. The Fisher Scope,
#   which explains the whole next-token distribution, is the one that sets the format instruction aside.
# - Along the whole answer (the matrix), "opposite" dominates almost every row: the answer restates the question
#   ("The opposite of hot is ..."), and the restated "hot" draws on the instruction's "hot".
# - The paper shows this case study on larger instruction-tuned models; at 135M parameters the picture is the same
#   in kind (content words first), with a weaker grip on the format instruction.
