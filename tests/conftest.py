"""Fixtures shared by every test; the helpers they use live in tests/helpers.py
(importable as ``helpers``: pytest's ``pythonpath`` setting puts tests/ on the path)."""

from __future__ import annotations

import os

# no test reaches the model hub (CI has none): a hub name fails at once instead of
# after the client's network retries; set before transformers reads it at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def llama():
    return make_model("llama")


@pytest.fixture(scope="module")
def llama64():
    """A float64 tiny Llama shared by a module's tests (each checks it is left unchanged where it matters)."""
    return make_model("llama", torch.float64)


@pytest.fixture
def gpt2_64():
    return make_model("gpt2", torch.float64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama and the word-level test tokenizer, saved as a checkpoint folder (what
    ``--model PATH`` and ``load_model(path)`` read), once per test module."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder
