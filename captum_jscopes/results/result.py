"""The result of an attribution: Captum's ``LLMAttributionResult`` plus free-form
metadata, readable text per token, word and span views, a lossless JSON form,
inline display in Jupyter, and small helpers (top tokens, attention-sink share).

A ``ScopeResult`` IS an ``LLMAttributionResult``, so Captum's own
``plot_token_attr`` / ``plot_seq_attr`` keep working on it (they show the
readable text, see :mod:`captum_jscopes.core.text`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor

from captum_jscopes.core.text import Span, groups_from_display, input_texts, output_texts, token_labels
from captum_jscopes.results.spans import aggregate, aggregation_rule, char_spans, position_spans, word_spans
from captum_jscopes.scopes.registry import SCOPES

PathLike = Union[str, Path]

_FORMAT = "captum_jscopes.ScopeResult"
_FORMAT_VERSION = 1

# dtypes a JSON file can hold without loss: every value of these is exactly a
# Python float / int / bool.
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_INT_DTYPES = {"uint8", "int8", "int16", "int32", "int64"}


class ScopeResult(LLMAttributionResult):
    """An ``LLMAttributionResult`` with a ``metadata`` dict.

    Args (keyword only, as in Captum):
        input_tokens: list[str], n tokens (raw tokenizer pieces, e.g. ``"Ġcat"``).
        output_tokens: list[str], m explained (target) tokens.
        seq_attr: 1-D tensor (n,): score of each input token for the whole output.
        token_attr: optional 2-D tensor (m, n): one row per output token.
        output_probs: optional 1-D tensor (m,): model probability of each output token.
        inp: optional Captum ``InterpretableInput`` (not saved to JSON). Its
            tokenizer, if any, decodes the input tokens for ``input_display``.
        metadata: optional JSON-serialisable dict, free-form. Usual keys:
            "scope", "model", "settings", "versions", "prediction" ({"token", "prob"}),
            "position", "target". Default: empty dict.
        input_display: optional list[str] (n,): readable text per input token.
            Default: computed on first use by :func:`captum_jscopes.core.text.input_texts`
            (a group's text on its first token, "" on the others, so that
            ``"".join(input_display)`` is the decoded prompt).
        output_display: optional list[str] (m,): the same for the output tokens.
            Default: ``metadata["target"]`` cut along the output tokens, which
            restores the spaces Captum's stripped output tokens lack, else the
            output tokens decoded as pieces.

    Raises:
        TypeError / ValueError when tokens are not lists of str or the tensors
        do not have the shapes above.
    """

    # The parent is a dataclass whose generated __eq__ compares tensors with
    # ``==`` and fails; ours compares them bitwise. Mutable: not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        *,
        input_tokens: Sequence[str],
        output_tokens: Sequence[str],
        seq_attr: Any,
        token_attr: Any = None,
        output_probs: Any = None,
        inp: Any = None,
        metadata: Optional[dict] = None,
        input_display: Optional[Sequence[str]] = None,
        output_display: Optional[Sequence[str]] = None,
    ) -> None:
        input_tokens = _check_tokens(input_tokens, "input_tokens")
        output_tokens = _check_tokens(output_tokens, "output_tokens")
        n, m = len(input_tokens), len(output_tokens)
        seq_attr = _check_shape(seq_attr, "seq_attr", (n,))
        token_attr = _check_shape(token_attr, "token_attr", (m, n))
        output_probs = _check_shape(output_probs, "output_probs", (m,))
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict or None, not {type(metadata).__name__}")
        super().__init__(
            input_tokens=input_tokens, output_tokens=output_tokens, seq_attr=seq_attr,
            token_attr=token_attr, output_probs=output_probs, inp=inp,
        )  # fmt: skip
        # A copy, so later edits of the caller's dict do not change the result.
        self.metadata: dict = dict(metadata or {})
        # Computed lazily: grouping a 3000-token prompt costs decode calls that
        # a result nobody looks at should not pay.
        self._input_display = _check_display(input_display, n, "input_display")
        self._output_display = _check_display(output_display, m, "output_display")
        #: for a word or span view, the token-level result it was made from (not saved)
        self.source: Optional["ScopeResult"] = None

    # ------------------------------------------------------------ readable text
    @property
    def input_display(self) -> list[str]:
        """Readable text per input token (n,), e.g. ``["I", " love", " 🍣", "", ""]``
        for ``I``, ``Ġlove``, ``ĠðŁ``, ``į``, ``£``: a group of tokens that only
        together decode cleanly has its text on its first token and "" on the rest."""
        if self._input_display is None:
            self._input_display = input_texts(self.input_tokens, self.inp)
        return self._input_display

    @property
    def output_display(self) -> list[str]:
        """Readable text per output token (m,), leading spaces kept (``[" New", " York"]``)."""
        if self._output_display is None:
            self._output_display = output_texts(self.output_tokens, self.metadata.get("target"))
        return self._output_display

    def groups(self) -> list[Span]:
        """The readable groups of the input tokens: smallest runs that decode
        cleanly, as :class:`~captum_jscopes.core.text.Span` (text, positions)."""
        return groups_from_display(self.input_display)

    # ------------------------------------------------------------ words and spans
    def words(self, rule: Optional[str] = None) -> "ScopeResult":
        """The same result over words instead of tokens (see
        :func:`captum_jscopes.results.spans.word_spans` for what a word is).

        Args:
            rule: how token scores combine, ``"l2"`` (root of the sum of squares)
                or ``"sum"``. Default: from ``metadata["scope"]`` and its settings:
                "l2" for semantic and temperature, "sum" for fisher and for any
                scope under ``reduce="input"``; another scope raises.
        Returns:
            a ScopeResult with one input "token" per word: ``input_tokens`` are
            the words' raw pieces joined, ``input_display`` their text,
            ``token_attr`` (m, n_words) each row aggregated with ``rule``,
            ``seq_attr`` (n_words,) the sum of those rows (as for tokens; without
            ``token_attr``, ``seq_attr`` aggregated with ``rule``), output tokens
            and probabilities unchanged, ``metadata["view"] = {"unit": "words",
            "rule", "positions"}`` and ``.source`` the token-level result.
        """
        return self._view(word_spans(self.groups()), "words", rule)

    def spans(
        self,
        positions: Optional[Sequence[Sequence[int]]] = None,
        *,
        chars: Optional[Sequence[tuple[int, int]]] = None,
        rule: Optional[str] = None,
    ) -> "ScopeResult":
        """The result over spans you choose, like :meth:`words`.

        Args:
            positions: one sequence of token positions per span, e.g.
                ``[[0, 1], [2, 3, 4]]``; each is widened to whole readable groups.
            chars: instead, character ranges ``[start, end)`` of
                ``"".join(result.input_display)`` (the decoded prompt); a span
                holds every token that overlaps its range.
            rule: as in :meth:`words`.
        Tokens in no span are left out; spans may overlap.
        """
        if (positions is None) == (chars is None):
            raise ValueError("give exactly one of positions= and chars=")
        groups = self.groups()
        chosen = position_spans(groups, positions) if chars is None else char_spans(groups, chars)
        return self._view(chosen, "spans", rule)

    def _view(self, chosen: list[Span], unit: str, rule: Optional[str]) -> "ScopeResult":
        if rule is None:
            rule = aggregation_rule(self.metadata.get("scope"), self.metadata.get("settings"))
        token_attr = None if self.token_attr is None else aggregate(self.token_attr, chosen, rule)
        if token_attr is not None:
            seq_attr = token_attr.sum(0)
        else:
            seq_attr = aggregate(self.seq_attr, chosen, rule)
        raw = list(self.input_tokens)
        view = ScopeResult(
            **_captum_fields(
                self, input_tokens=["".join(raw[p] for p in s.positions) for s in chosen], seq_attr=seq_attr,
                token_attr=token_attr,
            ),
            metadata={
                **self.metadata,
                "view": {"unit": unit, "rule": rule, "positions": [list(s.positions) for s in chosen]},
            },
            input_display=[s.text for s in chosen],
            output_display=self.output_display,
        )
        view.source = self
        return view

    # ------------------------------------------------------------ Captum's plots
    def plot_token_attr(self, show: bool = False):  # type: ignore[override]
        """Captum's ``plot_token_attr``, labelled with the readable text and
        drawn with the CJK/emoji font fallback of :mod:`captum_jscopes.display.fonts`."""
        return self._captum_plot("plot_token_attr", show)

    def plot_seq_attr(self, show: bool = False):  # type: ignore[override]
        """Captum's ``plot_seq_attr``, labelled with the readable text."""
        return self._captum_plot("plot_seq_attr", show)

    def _captum_plot(self, method: str, show: bool):
        # Imported here: the fonts pull in matplotlib, not needed to hold results.
        from captum_jscopes.display.fonts import drawable_labels, use_fonts

        inputs, outputs = drawable_labels([token_labels(self.input_display), self.output_display])
        readable = LLMAttributionResult(**_captum_fields(self, input_tokens=inputs, output_tokens=outputs))
        with use_fonts():
            return getattr(LLMAttributionResult, method)(readable, show)

    # ------------------------------------------------------------------ wrap
    @classmethod
    def from_captum(
        cls, result: LLMAttributionResult, metadata: Optional[dict] = None
    ) -> "ScopeResult":
        """Wrap any Captum ``LLMAttributionResult`` (e.g. a baseline's).

        Tensors are shared, not copied. If ``result`` is already a ScopeResult,
        its metadata and display texts are kept and the metadata updated with ``metadata``.
        """
        if not isinstance(result, LLMAttributionResult):
            raise TypeError(
                f"from_captum expects a captum LLMAttributionResult, not {type(result).__name__}"
            )
        merged = dict(getattr(result, "metadata", None) or {})
        merged.update(metadata or {})
        return cls(
            **_captum_fields(result),
            inp=result.inp,
            metadata=merged,
            input_display=getattr(result, "_input_display", None),
            output_display=getattr(result, "_output_display", None),
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """Plain JSON-ready dict. Tensors become {"dtype", "shape", "data"} with
        the values as float64 (exact for float16/bfloat16/float32/float64).
        ``input_tokens``/``output_tokens`` are the raw pieces (lossless);
        ``input_display``/``output_display`` the readable text per token.
        ``inp`` is not stored.

        Raises ValueError if a tensor holds NaN/inf, TypeError if the metadata
        is not JSON-serialisable.
        """
        _check_metadata_json(self.metadata)
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "input_tokens": list(self.input_tokens),
            "output_tokens": list(self.output_tokens),
            "input_display": list(self.input_display),
            "output_display": list(self.output_display),
            "seq_attr": _tensor_to_dict(self.seq_attr, "seq_attr"),
            "token_attr": _tensor_to_dict(self.token_attr, "token_attr"),
            "output_probs": _tensor_to_dict(self.output_probs, "output_probs"),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ScopeResult":
        """Inverse of ``to_dict`` (tensors come back on CPU with their dtype).
        Files written before the display fields existed read as before; their
        display text is computed from the raw pieces. Settings stored under a
        former name are read under today's (each scope's ``renamed_settings``, e.g. the
        Fisher Scope's estimator key; :func:`renamed_settings`)."""
        if not isinstance(data, dict):
            raise TypeError(f"from_dict expects a dict, not {type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a saved ScopeResult: 'format' is {data.get('format')!r}")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"unsupported ScopeResult format version {data.get('version')!r} "
                f"(this library reads version {_FORMAT_VERSION})"
            )
        missing = {"input_tokens", "output_tokens", "seq_attr"} - data.keys()
        if missing:
            raise ValueError(f"saved ScopeResult lacks the keys {sorted(missing)}")
        return cls(
            input_tokens=data["input_tokens"],
            output_tokens=data["output_tokens"],
            seq_attr=_tensor_from_dict(data["seq_attr"], "seq_attr"),
            token_attr=_tensor_from_dict(data.get("token_attr"), "token_attr"),
            output_probs=_tensor_from_dict(data.get("output_probs"), "output_probs"),
            metadata=_upgrade_metadata(data.get("metadata") or {}),
            input_display=data.get("input_display"),
            output_display=data.get("output_display"),
        )

    def save_json(self, path: PathLike, *, indent: Optional[int] = None) -> Path:
        """Write ``to_dict()`` as JSON (parent folders are created). Returns the path.

        Raises ValueError if a score is NaN/inf (JSON has no NaN)."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load_json(cls, path: PathLike) -> "ScopeResult":
        """Read a file written by ``save_json``; equal to the saved result."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    # --------------------------------------------------------------- helpers
    def top_tokens(
        self, k: int = 5, row: Optional[int] = None, *, raw: bool = False
    ) -> list[tuple[int, str, float]]:
        """The k highest-scoring input tokens, best first, as (index, text, score).

        Args:
            k: how many (fewer if the prompt is shorter). Default 5.
            row: None ranks by ``seq_attr``; an int ranks by ``token_attr[row]``
                (the scores for output token ``row``).
            raw: give the raw tokenizer piece (``"ĠðŁ"``) instead of the readable
                text. Default False: the readable text (``" love"``), and for a
                token that is part of a character, the character and its place,
                ``" 🍣 (2/3)"``.
        Ties keep the earlier token first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        scores = self.scores(row).detach().to("cpu", torch.float64)
        order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
        names = list(self.input_tokens) if raw else token_labels(self.input_display, numbered=True)
        return [(i, names[i], float(scores[i])) for i in order[:k]]

    def scores(self, row: Optional[int] = None) -> Tensor:
        """``seq_attr`` (row=None) or ``token_attr[row]``: 1-D tensor (n,)."""
        if row is None:
            return self.seq_attr
        if self.token_attr is None:
            raise ValueError("row was given but this result has no token_attr")
        m = self.token_attr.shape[0]
        if isinstance(row, bool) or not isinstance(row, int) or not -m <= row < m:
            raise ValueError(f"row must be an int in [0, {m}), got {row!r}")
        return self.token_attr[row]

    def _repr_html_(self) -> str:
        # Imported here: the page's colours pull in matplotlib, not needed to hold results.
        from captum_jscopes.display.html import render_html

        return render_html(self)

    def __repr__(self) -> str:
        scope = self.metadata.get("scope", "?")
        return (
            f"ScopeResult(scope={scope!r}, n_input_tokens={len(self.input_tokens)}, "
            f"output_tokens={self.output_tokens!r})"
        )

    def __eq__(self, other: object) -> bool:
        """Same tokens, display texts, metadata, and tensors equal bitwise with the same dtype."""
        if not isinstance(other, ScopeResult):
            return NotImplemented
        return (
            list(self.input_tokens) == list(other.input_tokens)
            and list(self.output_tokens) == list(other.output_tokens)
            and self.input_display == other.input_display
            and self.output_display == other.output_display
            and self.metadata == other.metadata
            and _same_tensor(self.seq_attr, other.seq_attr)
            and _same_tensor(self.token_attr, other.token_attr)
            and _same_tensor(self.output_probs, other.output_probs)
        )


def sink_share(scores: Any, k: int = 1) -> Tensor:
    """Share of the total score held by the first k positions (the attention sinks).

    It is literally the first k positions: excluded tokens (e.g. a BOS scored 0)
    are NOT skipped, so drop them from ``scores`` first if you want the first k
    scored tokens.

    Args:
        scores: non-negative scores, 1-D (seq,) or 2-D (batch, seq); tensor or array-like.
        k: number of leading positions, 1 <= k <= seq. Default 1.
    Returns:
        float64 tensor: 0-d for 1-D input, (batch,) for 2-D input. Values in
        [0, 1]; NaN where all scores of a row are zero (share undefined).
    Raises:
        ValueError for other shapes, negative or NaN scores, or a bad k.
    """
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be 1-D (seq,) or 2-D (batch, seq), got shape {tuple(s.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s.shape[-1]:
        raise ValueError(f"k must be an int in [1, {s.shape[-1]}] (the sequence length), got {k!r}")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    if (s < 0).any():
        raise ValueError("sink_share needs non-negative scores (take .abs() of signed attributions)")
    return s[..., :k].sum(-1) / s.sum(-1)


# ---------------------------------------------------------------- internals
def renamed_settings() -> dict[str, str]:
    """Keys of ``metadata["settings"]`` that earlier versions wrote under another name,
    former -> today's: what each registered scope declares (``renamed_settings``)."""
    return {old: new for cls in SCOPES.values() for old, new in cls.renamed_settings.items()}


def _upgrade_metadata(metadata: Any) -> Any:
    """``metadata`` with its settings under today's names (:func:`renamed_settings`),
    in their order; today's name wins where a file holds both. Not changed in place."""
    settings = metadata.get("settings") if isinstance(metadata, dict) else None
    renamed = renamed_settings()
    if not isinstance(settings, dict) or not any(old in settings for old in renamed):
        return metadata
    upgraded = {}
    for key, value in settings.items():
        if key in renamed and renamed[key] in settings:
            continue
        upgraded[renamed.get(key, key)] = value
    return {**metadata, "settings": upgraded}


_CAPTUM_FIELDS = ("input_tokens", "output_tokens", "seq_attr", "token_attr", "output_probs")


def _captum_fields(result: LLMAttributionResult, **changed: Any) -> dict:
    """The Captum fields of ``result`` by name (the tensors shared, not copied),
    those named in ``changed`` replaced: what a copy or a view of it is built from."""
    return {**{name: getattr(result, name) for name in _CAPTUM_FIELDS}, **changed}


def _check_tokens(tokens: Any, name: str) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a list of str, not {type(tokens).__name__}")
    bad = [t for t in tokens if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must hold only str, found {type(bad[0]).__name__} {bad[0]!r}")
    return list(tokens)


def _check_display(display: Any, n: int, name: str) -> Optional[list[str]]:
    if display is None:
        return None
    display = _check_tokens(display, name)
    if len(display) != n:
        raise ValueError(f"{name} has {len(display)} texts for {n} tokens")
    return display


def _check_shape(values: Any, name: str, shape: tuple[int, ...]) -> Optional[Tensor]:
    """Tensor of ``values`` (None stays None), or ValueError if its shape is not ``shape``."""
    if values is None:
        return None
    t = values if isinstance(values, Tensor) else torch.as_tensor(values)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t


def _check_metadata_json(metadata: dict) -> None:
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata is not JSON-serialisable: {err}") from err


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensor_to_dict(t: Optional[Tensor], name: str) -> Optional[dict]:
    """{"dtype", "shape", "data" (flat list)}; floats stored as float64, which
    holds every float16/bfloat16/float32 value exactly (json writes the
    shortest repr that reads back to the same float64)."""
    if t is None:
        return None
    t = t.detach().cpu()
    dtype = _dtype_name(t)
    if dtype in _FLOAT_DTYPES:
        flat = t.to(torch.float64).flatten()
        if not torch.isfinite(flat).all():
            raise ValueError(f"{name} contains NaN or inf; refusing to save it (JSON has no NaN)")
        data: list = flat.tolist()
    elif dtype in _INT_DTYPES or dtype == "bool":
        data = t.flatten().tolist()
    else:
        raise TypeError(f"{name} has dtype {dtype}, which cannot be saved to JSON without loss")
    return {"dtype": dtype, "shape": list(t.shape), "data": data}


def _tensor_from_dict(d: Optional[dict], name: str) -> Optional[Tensor]:
    if d is None:
        return None
    if not isinstance(d, dict) or not {"dtype", "shape", "data"} <= d.keys():
        raise ValueError(f"saved {name} must be a dict with 'dtype', 'shape' and 'data'")
    dtype = d["dtype"]
    if dtype in _FLOAT_DTYPES:
        # Parse as float64 first: the stored values are exact float64 images of
        # the original values, so the cast back is exact.
        t = torch.tensor(d["data"], dtype=torch.float64).to(getattr(torch, dtype))
    elif dtype in _INT_DTYPES or dtype == "bool":
        t = torch.tensor(d["data"], dtype=getattr(torch, dtype))
    else:
        raise ValueError(f"saved {name} has unsupported dtype {dtype!r}")
    shape = tuple(d["shape"])
    if t.numel() != math.prod(shape):
        raise ValueError(f"saved {name} has {t.numel()} values, which do not fill shape {shape}")
    return t.reshape(shape)


# Integer dtype of the same width, to compare floats bit by bit (so -0.0 != 0.0).
_SAME_WIDTH_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def _same_tensor(a: Optional[Tensor], b: Optional[Tensor]) -> bool:
    """True if both are None, or same dtype, shape and bits."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    as_int = _SAME_WIDTH_INT.get(a.dtype)
    if as_int is not None:
        a, b = a.contiguous().view(as_int), b.contiguous().view(as_int)
    return torch.equal(a, b)
