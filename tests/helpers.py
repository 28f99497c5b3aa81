"""Helpers shared by the tests: tiny randomly initialised Hugging Face causal LMs of many
architectures (real transformers models, built from configs in milliseconds)
and a tiny word-level tokenizer with a chat template."""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = (
    "the a cat dog sat on mat and ran to house red blue big small is was he she it they "
    "liked food went home Paris France capital of city Tom South Columbia liberal conservative "
    "one two three four five six seven eight nine ten , . ? !"
).split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
PAD, BOS, EOS = 0, 1, 2
VOCAB_SIZE = 64  # > len(VOCAB): some ids have no word, which the models do not care about

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} "
    "{% else %}{{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


_SIZES = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)
_IDS = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(hidden_size=16, num_key_value_heads=2, **_SIZES, **_IDS),
    "mistral": lambda: transformers.MistralConfig(hidden_size=16, num_key_value_heads=2, **_SIZES, **_IDS),
    "qwen2": lambda: transformers.Qwen2Config(hidden_size=16, num_key_value_heads=2, **_SIZES, **_IDS),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        hidden_size=16, num_key_value_heads=2, head_dim=4, sliding_window=4, **_SIZES, **_IDS
    ),
    "gemma2": lambda: transformers.Gemma2Config(
        hidden_size=16, num_key_value_heads=2, head_dim=4, final_logit_softcapping=2.0, **_SIZES, **_IDS
    ),
    "gpt2": lambda: transformers.GPT2Config(n_embd=16, n_layer=2, n_head=4, n_positions=64, **_IDS),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(hidden_size=16, **_SIZES, **_IDS),
    "phi": lambda: transformers.PhiConfig(hidden_size=16, **_SIZES, **_IDS),
}


def make_model(arch: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A tiny causal LM of the given architecture, in eval mode."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    if arch in ("gemma2", "gemma3"):  # random init is near-degenerate; widen it so scores differ
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


def save_checkpoint(folder, arch: str = "llama"):
    """``folder`` holding a tiny model of ``arch`` and the word-level test tokenizer, saved as a
    checkpoint (what ``--model FOLDER`` and ``load_model(FOLDER)`` read)."""
    make_model(arch).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids that avoid the special tokens (ids < len(SPECIALS))."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIALS), VOCAB_SIZE, (batch, length), generator=generator)


def snapshot(model: torch.nn.Module) -> dict:
    """Everything about a model a scope must leave untouched."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters(remove_duplicate=False)},
        "grad": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {
            k: (
                list(m._forward_hooks),
                list(m._forward_pre_hooks),
                list(m._backward_hooks),
                list(getattr(m, "_backward_pre_hooks", {})),
            )
            for k, m in model.named_modules()
        },
        "dtype": {k: v.dtype for k, v in model.state_dict().items()},
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key, value in before["params"].items():
        assert torch.equal(after["params"][key], value), f"parameter {key} changed"
    for key in ("requires_grad", "training", "hooks", "dtype"):
        assert after[key] == before[key], f"{key} changed"
    for key, value in before["grad"].items():
        other = after["grad"][key]
        assert (value is None) == (other is None) and (value is None or torch.equal(value, other)), f".grad of {key} changed"


def assert_unbiased(runs: torch.Tensor, exact: torch.Tensor, random_message: str) -> None:
    """The mean of ``runs`` (seeds, ..., n) equals ``exact`` within its standard error
    on every scored token (|z| < 4.5, and chi^2 per degree of freedom < 3), and the
    runs do differ from ``exact`` (an estimator that is exact proves nothing here)."""
    seeds = runs.shape[0]
    mean, spread = runs.mean(0), runs.std(0) / seeds**0.5
    assert (runs - exact).abs().max() > 1e-6 * exact.max(), random_message
    scored = exact > 0
    z = ((mean - exact) / spread)[scored]
    assert z.abs().max() < 4.5, z
    assert z.pow(2).mean() < 3.0, z  # chi^2 per degree of freedom ~ 1


def bos_prompt(n: int = 7, seed: int = 3) -> torch.Tensor:
    """(1, n) random ids that start with the BOS token."""
    ids = random_ids(1, n, seed=seed)
    ids[0, 0] = BOS
    return ids


def forward_of(model, ids, position=-1):
    """The library's one forward pass (``run_forward``) explaining ``position`` of one prompt."""
    from captum_jscopes.core.forward import prepare_inputs, resolve_positions, run_forward

    ids, mask = prepare_inputs(model, ids, None)
    return run_forward(model, ids, mask, resolve_positions(position, mask)[:, None])



def brute_force_scores(model, ids, position, target, foil, reduce="norm"):
    """Reference scores (n,) of every scope from full Jacobians (torch.autograd.functional.jacobian
    of the model's own logits and of the base model's last hidden state; no hooks, nothing of the
    library's engine): ``reduce="norm"`` reduces each token's VJP with the L2 norm (Fisher: the sum
    of the squares), ``"input"`` dots it with the token's embedding."""
    x0 = model.get_input_embeddings()(ids).detach()

    def logits(x):
        return model(inputs_embeds=x, use_cache=False).logits[0, position]

    def hidden(x):
        return model.base_model(inputs_embeds=x, use_cache=False).last_hidden_state[0, position]

    dz = torch.autograd.functional.jacobian(logits, x0)[:, 0]  # (V, n, e)
    dy = torch.autograd.functional.jacobian(hidden, x0)[:, 0]  # (d, n, e)
    if reduce == "input":  # one number per token: the VJP's dot with the embedding, kept as (.., n, 1)
        dz, dy = (dz * x0[0]).sum(-1, keepdim=True), (dy * x0[0]).sum(-1, keepdim=True)
    p = torch.softmax(logits(x0).detach(), -1)
    y = hidden(x0).detach()
    centred = dz - torch.einsum("c,cte->te", p, dz)[None]  # (e_c - p)^T dz/dx_t
    return {
        "semantic": dz[target].norm(dim=-1),
        "contrastive": (dz[target] - dz[foil]).norm(dim=-1),
        "temperature": torch.einsum("d,dte->te", y / y.norm(), dy).norm(dim=-1),
        "fisher": torch.einsum("c,cte->t", p, centred**2),
    }
