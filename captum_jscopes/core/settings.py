"""What the settings dataclasses share (``AblationSettings``, ``DatasetSettings``):
a copy with some fields overridden, whose unknown keywords are a one-line error."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, TypeVar

__all__ = ["Settings"]

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin of a frozen settings dataclass."""

    #: former names of fields that :meth:`of` still accepts (a subclass maps them in :meth:`_renamed`)
    former_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def of(cls: type[S], settings: Optional[S] = None, **overrides: Any) -> S:
        """``settings`` (default: the defaults) with ``overrides`` applied; a
        TypeError names any keyword that is not a setting."""
        if settings is None:
            settings = cls()
        elif not isinstance(settings, cls):
            raise TypeError(f"settings must be of type {cls.__name__} or None, got {type(settings).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names) - set(cls.former_names))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; {cls.__name__} has {names}")
        overrides = cls._renamed(dict(overrides))
        return dataclasses.replace(settings, **overrides) if overrides else settings

    @classmethod
    def _renamed(cls, overrides: dict) -> dict:
        """``overrides`` with former names replaced by today's. Default: as given."""
        return overrides
