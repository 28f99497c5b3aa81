"""The scope table and what each scope carries: a scope registered from outside the
package works everywhere the built-in ones do, and no code outside a scope's own
module branches on a scope's name or class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import BOS, make_model, make_tokenizer, random_ids

from captum_jscopes import (
    FisherScope,
    JacobianScope,
    LLMScopeAttribution,
    SemanticScope,
    TemperatureScope,
    linearity_check,
    register_scope,
)
from captum_jscopes.bench.methods import METHODS
from captum_jscopes.results.spans import aggregation_rule
from captum_jscopes.scopes.registry import SCOPES, scope_class

PACKAGE = Path(__file__).resolve().parents[2] / "captum_jscopes"


class EntropyScope(JacobianScope):
    """v = dH/dy: which tokens drive the entropy of the next-token distribution."""

    name = "entropy_test"
    explains = "the entropy of the next-token distribution"

    def directions(self, forward, targets):
        p = forward.probs()
        log_p = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
        dh_dz = -p * (log_p + (-(p * log_p).sum(-1, keepdim=True)))
        return (dh_dz @ forward.weight.to(p))[None]

    def readout(self, hidden, logits, targets):
        log_p = torch.log_softmax(logits, dim=-1)
        return -(log_p.exp() * log_p).sum(-1)


@pytest.fixture
def entropy_scope():
    register_scope(EntropyScope)
    yield EntropyScope
    SCOPES.pop(EntropyScope.name, None)


def _prompt(n: int = 6) -> torch.Tensor:
    ids = random_ids(1, n, seed=5)
    ids[0, 0] = BOS
    return ids


def test_registered_scope_equals_brute_force_entropy_gradient(entropy_scope):
    """The scope's scores are ||dH/dx_t|| of a float64 model, from autograd on H itself."""
    model = make_model("llama", dtype=torch.float64)
    ids = _prompt()
    scores = entropy_scope(model, exclude_special_tokens=False).attribute(ids)[0]
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    log_p = torch.log_softmax(model(inputs_embeds=x).logits[0, -1], -1)
    (grad,) = torch.autograd.grad(-(log_p.exp() * log_p).sum(), x)
    torch.testing.assert_close(scores, grad[0].norm(dim=-1), rtol=1e-8, atol=1e-12)


def test_registered_scope_works_everywhere(entropy_scope, tmp_path):
    model, tokenizer = make_model("llama"), make_tokenizer()
    ids = _prompt()
    assert scope_class("entropy_test") is entropy_scope
    # the Captum wrapper, and the span rule read off the class
    from captum.attr import TextTokenInput

    result = LLMScopeAttribution(entropy_scope(model, tokenizer), tokenizer).attribute(
        TextTokenInput("the cat sat on the", tokenizer), target=" mat"
    )
    assert result.metadata["scope"] == "entropy_test" and result.token_attr.shape[0] == 1
    assert aggregation_rule("entropy_test") == "l2"
    # the linearity check moves along the scope's own gradient
    check = linearity_check(entropy_scope(model, tokenizer, exclude_special_tokens=False), ids, tokens=[1, 2])
    assert check.perturbation == "gradient" and check.tokens.tolist() == [1, 2]
    assert bool((check.radius[[1, 2]] > 0).all())
    # the benchmarks' method table
    method = METHODS["entropy_test"]
    assert method.backward_passes(16) == 1 and not method.randomised
    scores = method.scores(model, tokenizer, ids, target=3)
    torch.testing.assert_close(scores, entropy_scope(model, tokenizer).attribute(ids)[0])


def test_registration_errors():
    with pytest.raises(TypeError, match="JacobianScope subclass"):
        register_scope(object)

    class Nameless(JacobianScope):
        pass

    with pytest.raises(ValueError, match="name of its own"):
        register_scope(Nameless)

    class Clash(JacobianScope):
        name = "semantic"

    with pytest.raises(ValueError, match="registered already"):
        register_scope(Clash)
    assert SCOPES["semantic"] is SemanticScope


@pytest.mark.parametrize("scope", [SemanticScope, TemperatureScope, FisherScope])
def test_each_scope_answers_what_consumers_ask(scope):
    options = scope.make_options()
    assert scope.backward_passes(options, 64) >= 1
    assert isinstance(scope.randomised(options), bool)
    assert scope.span_rule in ("l2", "sum") and scope.perturbation in ("gradient", "isotropic")
    with pytest.raises(TypeError, match="no_such_option"):
        scope.make_options(no_such_option=1)
    assert SCOPES[scope.name] is scope


def test_semantic_costs_n_steps_and_refuses_them_locally():
    assert SemanticScope.backward_passes(SemanticScope.make_options(n_steps=8), 64) == 8
    with pytest.raises(ValueError, match="n_steps"):
        SemanticScope.local_options(SemanticScope.make_options(n_steps=8))


# what "branching on a scope" looks like: a comparison with a scope's name, or an
# isinstance / class test of a scope class
_BRANCH = re.compile(
    r"""(==|!=|\bin)\s*\(?\s*["'](semantic|temperature|fisher)["']"""
    r"""|["'](semantic|temperature|fisher)["']\s*(==|!=|in\b|not\s+in\b)"""
    r"""|isinstance\([^)]*(Semantic|Temperature|Fisher)Scope"""
)


def test_no_code_outside_a_scope_module_branches_on_a_scope():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "scopes":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _BRANCH.search(code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
