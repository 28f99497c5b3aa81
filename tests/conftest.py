"""Fixtures shared by every test; the helpers they use live in tests/helpers.py
(importable as ``helpers``: pytest's ``pythonpath`` setting puts tests/ on the path)."""

from __future__ import annotations

import pytest
import torch
from helpers import make_model, make_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def llama():
    return make_model("llama")


@pytest.fixture
def gpt2_64():
    return make_model("gpt2", torch.float64)
