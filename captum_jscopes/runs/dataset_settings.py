"""What a dataset run computes for every prompt: :class:`DatasetSettings`, stored
in ``run.json`` (a rerun with other settings is refused), with the flags of
``jscopes attribute-dataset`` in its fields' metadata. Read through
:mod:`captum_jscopes.runs.dataset`, which uses it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from captum_jscopes.core.continuation import NEXT_UNITS, check_next
from captum_jscopes.core.settings import Settings
from captum_jscopes.runs.explain import find_setting, resolve_scope_settings, scope_options
from captum_jscopes.scopes.registry import SCOPES, scope_class

__all__ = ["DatasetSettings", "ALL_SCOPES"]

#: the ``scopes`` value (and ``--scope`` choice) that stands for every scope
ALL_SCOPES = "all"


class _ScopeChoices:
    """The ``--scope`` choices: the registry's names and "all", read when a parser
    is built, so that a scope registered after this module's import is offered too."""

    def __iter__(self) -> Iterator[str]:
        return iter((*SCOPES, ALL_SCOPES))


@dataclass(frozen=True, init=False)
class DatasetSettings(Settings):
    """What is computed for every prompt; stored in ``run.json``, so a rerun into
    the same folder with other settings is refused.

    Each field's ``metadata`` holds its command-line flag and help text:
    ``jscopes attribute-dataset`` makes its options from them
    (:func:`captum_jscopes.cli.flags.add_dataclass_flags`), so a new setting is
    one field here. The scopes' own options have their flags made from the
    scopes' ``Options`` (:mod:`captum_jscopes.cli.scope_flags`).

    Attributes:
        scopes: scope names of :data:`captum_jscopes.scopes.registry.SCOPES` (a single name
            is accepted, and "all" means every scope); kept in the registry's order,
            duplicates dropped. Default: all of them.
        text_field: field (column) of the source holding the prompt. Default "text".
        target_field: field holding the continuation to explain (e.g. " Paris").
            Default None: the model's top-1 next token is explained.
        chat: wrap each prompt in the chat template; only the user's tokens are
            scored. Default False.
        keep_special: also show and score special tokens (BOS, chat markers).
            Default False.
        next: for prompts without a target, what of the model's greedy
            continuation is explained: "token" (default), "char" or "word"
            (:func:`captum_jscopes.core.continuation.continuation`).
        scope_settings: the scopes' own options as settings ``{"<scope>_<option>":
            value}`` (e.g. ``{"fisher_k": 4, "semantic_rules": "lrp"}``),
            every option of every registered scope's ``Options`` included. Checked
            and kept in today's names, and only where they differ from the scope's
            default (:func:`~captum_jscopes.runs.explain.resolve_scope_settings`).
            They can also be given as keywords, ``DatasetSettings(fisher_k=4)``
            (a scope's deprecated option name, ``<scope>_<old name>``, with a
            DeprecationWarning), and read as attributes, ``settings.fisher_k``
            (the scope's default when not set). Stored flat in ``run.json``, only
            for the chosen scopes, so that they do not block other reruns. Default: none.
    """

    scopes: tuple[str, ...] = field(
        default=tuple(SCOPES),
        metadata={
            "flag": "--scope",
            "choices": _ScopeChoices(),
            "help": "a scope to run; repeat for several (default: all)",
        },
    )
    text_field: str = field(
        default="text", metadata={"flag": "--text-field", "metavar": "NAME", "help": "field holding the prompt (default: text)"}
    )
    target_field: Optional[str] = field(
        default=None,
        metadata={
            "flag": "--target-field",
            "metavar": "NAME",
            "help": "field holding the continuation to explain, with its leading space (e.g. ' Paris'); "
            "default: the model's top-1 prediction",
        },
    )
    chat: bool = field(
        default=False,
        metadata={"flag": "--chat", "help": "wrap each prompt in the chat template; only the user's tokens are scored"},
    )
    keep_special: bool = field(
        default=False,
        metadata={
            "flag": "--keep-special",
            "help": "also show and score special tokens (BOS, chat markers); by default they are left out, "
            "as attention sinks they would dominate the map",
        },
    )
    next: str = field(
        default="token",
        metadata={
            "flag": "--next",
            "choices": NEXT_UNITS,
            "help": "without a target, explain the model's next token (default), or its greedy continuation "
            "on to the end of a character (char: no byte fragment) or of a word (word: to the next space or "
            "punctuation, at most 8 tokens)",
        },
    )
    scope_settings: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, *args: Any, **settings: Any) -> None:
        """The fields, by position or keyword, and the scopes' settings as
        keywords (``semantic_rules="lrp"``): merged into ``scope_settings``."""
        fields = dataclasses.fields(self)
        if len(args) > len(fields):
            raise TypeError(f"DatasetSettings takes at most {len(fields)} positional arguments, got {len(args)}")
        given = dict(zip((f.name for f in fields), args))
        twice = sorted(set(given) & set(settings))
        if twice:
            raise TypeError(f"DatasetSettings got several values for {', '.join(twice)}")
        given.update(settings)
        names = {f.name for f in fields}
        scoped = {**dict(given.pop("scope_settings", None) or {}),
                  **{key: given.pop(key) for key in list(given) if key not in names}}
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, given.get(f.name, default))
        # stacklevel 3: a warning points at the caller of DatasetSettings(...)
        object.__setattr__(self, "scope_settings", resolve_scope_settings(scoped, stacklevel=3))
        self._check()

    def _check(self) -> None:
        chosen = (self.scopes,) if isinstance(self.scopes, str) else tuple(self.scopes)
        if not chosen:
            raise ValueError("scopes is empty: choose at least one of " + ", ".join(SCOPES))
        if ALL_SCOPES in chosen:
            chosen = tuple(SCOPES)
        for name in chosen:
            scope_class(name)  # ValueError naming the known scopes
        # Registry order, so that the same choice in another order is the same run.json.
        object.__setattr__(self, "scopes", tuple(name for name in SCOPES if name in chosen))
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"text_field must be a non-empty string, got {self.text_field!r}")
        if self.target_field is not None and (not isinstance(self.target_field, str) or not self.target_field):
            raise ValueError(f"target_field must be None or a non-empty string, got {self.target_field!r}")
        for name in ("chat", "keep_special"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        for name in self.scopes:
            _check_scope_options(name, self.scope_settings)
        check_next(self.next)

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are no field: a scope's setting, <scope>_<option>
        if not name.startswith("_"):
            try:
                setting, _ = find_setting(name)
            except KeyError:
                pass
            else:
                return vars(self).get("scope_settings", {}).get(setting.key, setting.default)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "scope_settings")
                    + tuple(sorted(self.scope_settings.items())))

    @classmethod
    def of(cls, settings: Optional["DatasetSettings"] = None, **overrides: Any) -> "DatasetSettings":
        """``settings`` (default: the defaults) with ``overrides`` applied: fields,
        and scopes' settings (``semantic_rules="lrp"``), which replace the ones
        ``settings`` holds; a TypeError names a keyword that is neither."""
        names = {f.name for f in dataclasses.fields(cls)}
        scoped = {key: overrides.pop(key) for key in list(overrides) if key not in names and _names_a_setting(key)}
        made = super().of(settings, **overrides)
        if not scoped:
            return made
        # stacklevel 3: a warning points at the caller of of()
        changed = resolve_scope_settings(scoped, drop_defaults=False, stacklevel=3)
        return dataclasses.replace(made, scope_settings={**made.scope_settings, **changed})

    def to_dict(self) -> dict:
        """The settings as stored in ``run.json`` (JSON types): the fields, and the
        scopes' settings flat, ``<scope>_<option>``, only those of the chosen scopes
        (so that they do not block other reruns)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                if f.name != "scope_settings"}
        data["scopes"] = list(self.scopes)
        for key, value in self.scope_settings.items():
            if find_setting(key)[0].scope.name in self.scopes:
                data[key] = value
        return data

    @staticmethod
    def upgrade_dict(data: dict) -> dict:
        """Settings as an earlier version stored them (``to_dict``) in today's
        form: a scope's deprecated option name (``<scope>_<old name>``; the Fisher
        Scope's estimator was stored under its former name) read as its option's,
        and values equal to the scope's default (earlier versions stored the Fisher
        Scope's estimator also when it was the default) left out, as
        :meth:`to_dict` leaves them out now. ``data`` is not changed; settings that
        cannot be read are returned as they are (and then differ from any run's)."""
        names = {f.name for f in dataclasses.fields(DatasetSettings)}
        scoped = {key: value for key, value in data.items() if key not in names}
        try:
            upgraded = resolve_scope_settings(scoped, strict=False, warn=False)
        except (TypeError, ValueError):
            return data
        # runs from before "next" existed explained the next token
        return {"next": "token", **{key: value for key, value in data.items() if key in names}, **upgraded}


def _check_scope_options(scope: str, settings: Mapping[str, Any]) -> None:
    """The scope's options from ``settings`` checked as far as they can be without
    a model (the scope's ``make_options``; a scope with an estimator, the Fisher
    Scope, builds it from its options, k, n_probes, budget, ..., and has it check
    tol and max_passes): a bad one is a ValueError or TypeError naming the scope,
    before any model loads (not once per prompt). What depends on the model's
    width is checked when it runs."""
    cls = scope_class(scope)
    try:
        options = cls.make_options(**scope_options(scope, settings))
        estimator_of = getattr(cls, "estimator_of", None)
        check_tol = getattr(estimator_of(options), "check_tol", None) if callable(estimator_of) else None
        if callable(check_tol):
            check_tol(getattr(options, "tol", None), getattr(options, "max_passes", None))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{scope} scope: {err}") from None


def _names_a_setting(key: str) -> bool:
    try:
        find_setting(key)
    except KeyError:
        return False
    return True
