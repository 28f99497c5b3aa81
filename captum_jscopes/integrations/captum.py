"""Captum's LLM attribution wrapper, extended to the Jacobian Scopes.

``LLMScopeAttribution`` is Captum's ``LLMGradientAttribution`` with the scopes
added to its supported methods. Swapping a scope into an existing Captum script
is one line::

    attr = LLMGradientAttribution(LayerIntegratedGradients(model, emb), tokenizer)
    attr = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer)

Captum's own gradient methods still run through it unchanged, so baselines and
scopes are compared on identical inputs.
"""

from __future__ import annotations

import math
import warnings

from typing import Any, Optional, Union

import torch
from captum.attr import InterpretableInput, LLMGradientAttribution, TextTokenInput
from torch import Tensor

from captum_jscopes.core.captum_compat import prompt_token_ids, target_token_ids
from captum_jscopes.core.continuation import check_next, continuation
from captum_jscopes.core.forward import ScopeForward, module_device
from captum_jscopes.core.provenance import model_name, versions
from captum_jscopes.core.text import output_texts, output_token_texts, token_pieces
from captum_jscopes.core.tokens import encode_target
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.scopes.base import JacobianScope


class LLMScopeAttribution(LLMGradientAttribution):
    """Attribute a generated or given continuation of a prompt, token by token.

    Args:
        attr_method: a Jacobian Scope (Semantic, Temperature, Fisher) or one of
            Captum's gradient methods that ``LLMGradientAttribution`` supports
            (LayerIntegratedGradients, LayerGradientXActivation, LayerGradientShap).
        tokenizer: the model's tokenizer.
    """

    SUPPORTED_METHODS = LLMGradientAttribution.SUPPORTED_METHODS + (JacobianScope,)

    def attribute(  # type: ignore[override]
        self,
        inp: InterpretableInput,
        target: Union[str, Tensor, tuple, None] = None,
        gen_args: Optional[dict[str, Any]] = None,
        *,
        next: Optional[str] = None,
        progress: bool = False,
        forward: Optional[ScopeForward] = None,
        **kwargs: Any,
    ) -> ScopeResult:
        """
        Args:
            inp: a Captum ``TextTokenInput`` (its ``skip_tokens`` are honoured:
                those tokens are left out of the result), or :func:`chat_input`'s.
            target: the continuation to explain, as a string or a tensor of token
                ids; None generates it with ``gen_args`` as Captum does (or, with
                ``next``, the model's greedy continuation). A pair
                ``(target, foil)`` (each a string or token ids), e.g.
                ``(" liberal", " conservative")``, explains "target rather than
                foil" with a scope that takes a target (the Semantic Scope's
                contrast ``w_target - w_foil``): at the first token where the two
                differ, after their shared tokens (teacher-forced), one row. A
                foil that starts with the whole target (or the reverse) is a
                ValueError.
            gen_args: generation arguments when ``target`` is None (Captum's
                default: 25 greedy new tokens).
            next: with ``target=None``, explain the model's greedy continuation in
                units a reader reads: ``"token"`` (the next token), ``"char"`` (on
                to the end of a character: no byte fragment left) or ``"word"``
                (on to the next space or punctuation, at most 8 tokens); see
                :func:`captum_jscopes.core.continuation.continuation`. It starts
                from ``gen_args["max_new_tokens"]`` greedy tokens (default 1).
                Default None: Captum's generation.
            progress: show a tqdm progress bar on stderr while a scope works
                through the target tokens (one tick per token, all from the same
                forward pass) or the ``n_steps`` of a path-integrated scope.
                Default False. Ignored by Captum's own methods.
            forward: a :class:`~captum_jscopes.core.forward.ScopeForward` over
                :meth:`model_inputs`' ids and positions, shared by several scopes
                (one forward for all; see :func:`captum_jscopes.runs.explain.explain_scopes`).
                Default None: the scope runs its own.
            **kwargs: for a scope, its options (e.g. ``method="exact"`` for Fisher,
                ``exclude_special_tokens=False``); for a Captum method, the
                arguments of its ``attribute`` (e.g. ``n_steps``).
        Returns:
            :class:`ScopeResult` (a Captum ``LLMAttributionResult``): ``token_attr``
            (n_target_tokens, n_input_tokens), ``seq_attr`` (their sum over target
            tokens), ``output_probs`` (probability of each target token, scopes
            only), input and output tokens. For a scope, every target token is
            attributed from ONE teacher-forced forward pass over prompt + target,
            and scores are L2 norms over the embedding dimension (Captum's methods
            sum signed values). ``metadata`` records what ``save_json`` needs to
            reproduce the call: "model" (:func:`model_name`), "prompt", "target",
            "settings" (chat, keep_special, the scope's options, dtype, device)
            and "versions" (:func:`versions`); with ``next``, "next"; with a
            (target, foil) pair, "contrast" (``{"foil", "foil_token",
            "foil_prob", "target_token", "after"}``: the foil's text, the two
            tokens compared, the foil token's probability and the shared text
            before them), "target" being the explained target token.
        """
        foil = None
        if isinstance(target, tuple):
            if len(target) != 2:
                raise ValueError(f"a contrastive target is a (target, foil) pair, got {len(target)} items")
            target, foil = (self._token_ids(part, name) for part, name in zip(target, ("target", "foil")))
        if next is not None:
            target = self._continuation(inp, target, gen_args, next)
        if not isinstance(self.attr_method, JacobianScope):
            if foil is not None:
                raise ValueError(f"{type(self.attr_method).__name__} takes no (target, foil) pair; a contrast needs a "
                                 "scope that takes a target (the Semantic Scope)")
            result = super().attribute(inp, target, gen_args, **kwargs)
            metadata = {"method": type(self.attr_method).__name__, "model": model_name(self.model), "versions": versions()}
            return ScopeResult.from_captum(result, metadata)
        if foil is not None and not self.attr_method.takes_target:
            raise ValueError(f"the {self.attr_method.name} scope explains {self.attr_method.explains} and takes no "
                             "target, so no (target, foil) pair either")
        target_tokens = target_token_ids(self, inp, target, gen_args)
        prompt, targets, ids, positions = self.model_inputs(inp, target_tokens, foil)
        target_tokens = targets[:, 0] if targets.dim() == 2 else targets
        n_prompt = prompt.shape[1]
        scope_targets = targets[None] if self.attr_method.takes_target else None
        output = self.attr_method.scope_output(ids, positions, scope_targets, progress=progress, forward=forward,
                                               **kwargs)
        token_attr = output.scores[0, :, :n_prompt]
        itp_mask = getattr(inp, "itp_mask", None)
        if itp_mask is not None:
            token_attr = token_attr[:, itp_mask[0].to(token_attr.device).bool()]
        probs = torch.softmax(output.logits[0], dim=-1)
        output_probs = probs.gather(-1, target_tokens[:, None].to(probs.device))[:, 0]
        extra: dict[str, Any] = {}
        if next is not None:
            extra["next"] = next
        if foil is not None:
            extra["contrast"] = self._contrast_metadata(target_tokens, targets, ids[0, n_prompt:], foil, probs)
        info = run_info(self.attr_method)
        if info:
            extra["run_info"] = info
        target_text = self.tokenizer.decode(target_tokens.tolist())
        return ScopeResult(
            input_tokens=list(inp.values),
            output_tokens=token_pieces(target_tokens, self.tokenizer),  # raw pieces, as input_tokens: lossless
            # the readable text: a lone byte of a character as its escaped byte ("\\xf0"), not the piece's letter
            output_display=output_texts(output_token_texts(target_tokens, self.tokenizer), target_text),
            seq_attr=token_attr.sum(0).detach().cpu(),
            token_attr=token_attr.detach().cpu(),
            output_probs=output_probs.detach().cpu(),
            inp=inp,
            metadata={
                "scope": self.attr_method.name,
                "method": type(self.attr_method).__name__,
                "model": model_name(self.model),
                "prompt": _prompt_text(inp, prompt[0], self.tokenizer),
                "target": target_text,
                "settings": self._settings(inp, kwargs),
                "versions": versions(),
                **extra,
            },
        )

    def model_inputs(
        self, inp: InterpretableInput, target_tokens: Tensor, foil_tokens: Optional[Any] = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What a scope call runs on: the prompt's ids (1, n), the target ids (m,),
        and the teacher-forced input ``ids`` (1, n + m - 1) with the explained
        ``positions`` (1, m): position n - 1 + k predicts target token k.

        With ``foil_tokens`` (ids of a foil, "target rather than foil"): the
        targets are ONE pair (1, 2), ``[[target[k], foil[k]]]`` at the first
        index k where target and foil differ, ``ids`` are the prompt and the
        shared tokens ``target[:k]`` (1, n + k) and ``positions`` (1, 1) is its
        last column. A ValueError when one starts with the whole other."""
        target_tokens = torch.as_tensor(target_tokens).flatten().long()
        if target_tokens.numel() == 0:
            raise ValueError("the target is empty: it encodes to no tokens")
        prompt = prompt_token_ids(self, inp).to(self.device)
        target_tokens = target_tokens.to(prompt.device)
        if foil_tokens is not None:
            k = contrast_index(target_tokens.tolist(), torch.as_tensor(foil_tokens).flatten().tolist(), self.tokenizer)
            foil = torch.as_tensor(foil_tokens).flatten().long().to(prompt.device)
            ids = torch.cat([prompt, target_tokens[None, :k]], dim=1)
            pair = torch.stack([target_tokens[k], foil[k]])[None]
            return prompt, pair, ids, torch.tensor([[ids.shape[1] - 1]], device=prompt.device)
        ids = torch.cat([prompt, target_tokens[None, :-1]], dim=1)
        positions = (prompt.shape[1] - 1 + torch.arange(target_tokens.numel(), device=prompt.device))[None]
        return prompt, target_tokens, ids, positions

    def _token_ids(self, part: Any, name: str) -> Tensor:
        """The ids of one side of a (target, foil) pair: a string, an int, or ids."""
        if isinstance(part, str):
            return torch.tensor(encode_target(self.tokenizer, part))
        if isinstance(part, bool) or not isinstance(part, (int, Tensor, list)):
            raise TypeError(f"the {name} of a (target, foil) pair must be a string or token ids, "
                            f"not {type(part).__name__}")
        ids = torch.as_tensor(part).flatten().long()
        if ids.numel() == 0:
            raise ValueError(f"the {name} is empty: it holds no token")
        return ids

    def _continuation(self, inp: InterpretableInput, target: Any, gen_args: Optional[dict], next: str) -> Tensor:
        """The greedy continuation ``next=`` asks for, as target ids."""
        check_next(next)
        if target is not None:
            raise ValueError("next= extends the model's own continuation: give no target with it")
        n = (gen_args or {}).get("max_new_tokens", 1)
        return torch.tensor(continuation(self.model, self.tokenizer, prompt_token_ids(self, inp), next=next,
                                         min_tokens=n))

    def _contrast_metadata(self, explained: Tensor, pair: Tensor, shared: Tensor, foil: Tensor, probs: Tensor) -> dict:
        """``metadata["contrast"]``: the foil's text, the explained pair's tokens and
        probabilities, and the shared tokens before them (teacher-forced)."""
        decode = self.tokenizer.decode
        return {
            "foil": decode(foil.tolist()),
            "foil_token": decode([int(pair[0, 1])]),
            "foil_prob": float(probs[0, int(pair[0, 1])]),
            "target_token": decode([int(explained[0])]),
            "after": decode(shared.tolist()),
        }

    def _settings(self, inp: InterpretableInput, options: dict) -> dict:
        """The settings of a scope call, with the same keys as ``jscopes attribute``
        writes (chat, keep_special, the scope's settings, dtype, device) plus any other
        option of the scope (e.g. ``n_steps``), so JSON written from Python and
        from the command line read alike."""
        scope = self.attr_method
        options = dict(options)
        excluded = options.pop("exclude_special_tokens", None)
        excluded = scope.exclude_special_tokens if excluded is None else excluded
        chat = isinstance(inp, ChatTokenInput)
        settings: dict[str, Any] = {
            "chat": chat,
            # keep_special as the CLI means it: special tokens scored and, in a chat, the template shown
            "keep_special": not excluded and (not chat or inp.keep_special),
        }
        options.pop("token_mask", None)  # a tensor, not a setting one can write down
        # the rest are the scope's own options, written down as the scope does (defaults
        # included, so they cannot drift)
        settings.update(scope.settings(scope.make_options(**options)))
        settings["dtype"] = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        settings["device"] = str(module_device(self.model.get_input_embeddings()))
        return settings


def contrast_index(target: list[int], foil: list[int], tokenizer: Any = None) -> int:
    """The first index where the token ids of a target and its foil differ: the
    token at which the model chooses between them. A ValueError when they are the
    same or one starts with the whole other (no token tells them apart)."""
    for k, (a, b) in enumerate(zip(target, foil)):
        if a != b:
            return k
    def text(ids: list[int]) -> str:
        return repr(tokenizer.decode(ids)) if tokenizer is not None else str(ids)
    if len(target) == len(foil):
        raise ValueError(f"the target and the foil are the same ({text(target)}): the contrast is zero")
    longer, shorter = ("foil", "target") if len(foil) > len(target) else ("target", "foil")
    raise ValueError(f"the {longer} {text(foil if longer == 'foil' else target)} starts with the whole {shorter} "
                     f"{text(target if shorter == 'target' else foil)}: no token tells them apart; give a foil that "
                     "differs from the target in some token")


def _prompt_text(inp: InterpretableInput, prompt_ids: Tensor, tokenizer: Any) -> str:
    """The prompt as text: a chat input's user message, else the decoded prompt
    (Captum's ``TextTokenInput`` does not keep the text it was given) without
    special tokens such as BOS, which the tokenizer added, not the user."""
    message = getattr(inp, "message", None)
    if isinstance(message, str):
        return message
    return tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=True)


def chat_prompt(tokenizer: Any, message: str, *, system: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """Token ids of ``message`` wrapped in the tokenizer's chat template (with the
    generation prompt), and a bool mask of the tokens of the user's message.

    Returns:
        input_ids (1, n) and user_mask (1, n). Pass ``token_mask=user_mask`` to a
        scope's ``attribute`` to score only the user's words.
    """
    if not isinstance(message, str) or not message.strip():
        raise ValueError("the chat message is empty")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; build the prompt yourself")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    start = text.rfind(message)
    if start < 0:
        raise ValueError("the chat template rewrote the message; cannot locate its tokens")
    end = start + len(message)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoded["offset_mapping"][0]
    user_mask = (offsets[:, 0] < end) & (offsets[:, 1] > start)
    return encoded["input_ids"], user_mask[None]


class ChatTokenInput(TextTokenInput):
    """A Captum ``TextTokenInput`` for a chat-formatted prompt whose interpretable
    tokens are only those of the user's message (template markers and the system
    prompt are kept in the model input but not attributed), or with
    ``keep_special=True`` every token of the formatted prompt (``keep_template=``
    is its deprecated name)."""

    def __init__(
        self, tokenizer: Any, message: str, *, system: Optional[str] = None, baselines: int = 0,
        keep_special: bool = False, keep_template: Optional[bool] = None,
    ) -> None:
        keep_special = _keep_special(keep_special, keep_template)
        input_ids, user_mask = chat_prompt(tokenizer, message, system=system)
        # kept for the result's metadata: the prompt as the user wrote it, and how it was shown
        self.message, self.system, self.keep_special = message, system, keep_special
        if keep_special:
            user_mask = torch.ones_like(user_mask)
        self.inp_tensor = input_ids
        self.itp_mask = user_mask
        self.itp_tensor = input_ids[user_mask].unsqueeze(0)
        self.skip_tokens = None
        self.values = tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist())
        self.tokenizer = tokenizer
        self.n_itp_features = len(self.values)
        self.baselines = baselines


def chat_input(
    tokenizer: Any, message: str, *, system: Optional[str] = None, keep_special: bool = False,
    keep_template: Optional[bool] = None,
) -> ChatTokenInput:
    """The chat prompt as a Captum input for :class:`LLMScopeAttribution`: the
    user's tokens are attributed, or every token with ``keep_special=True`` (the
    name the CLI, ``explain`` and ``DatasetSettings`` use; ``keep_template=`` is
    its deprecated name)."""
    return ChatTokenInput(tokenizer, message, system=system, keep_special=_keep_special(keep_special, keep_template))


def _keep_special(keep_special: bool, keep_template: Optional[bool]) -> bool:
    if keep_template is None:
        return keep_special
    warnings.warn("keep_template= is deprecated; use keep_special=", DeprecationWarning, stacklevel=3)
    return keep_special or keep_template


def run_info(scope: Any) -> dict:
    """What a scope's last call ran, as JSON values (``metadata["run_info"]``): its
    ``last_info`` (the Fisher Scope: the path, k, n_probes, the passes spent, and
    with the krylov estimator the estimated relative error of the map, ``rel_error``,
    and the ``tol`` it was run to), times left out (the same call gives the same
    metadata); empty for a scope without one."""
    info = getattr(scope, "last_info", None)
    if not isinstance(info, dict):
        return {}
    kept = {}
    for key, value in info.items():
        if str(key).endswith("seconds"):
            continue
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
            kept[str(key)] = value
    return kept
