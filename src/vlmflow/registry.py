"""One small registry type for every extension point (models, datasets, analyses)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import VlmflowError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to entries, filled by a decorator; duplicates and unknown names are errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def deco(entry: T) -> T:
            if name in self._entries:
                raise VlmflowError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            doc = help or (getattr(entry, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return entry

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise VlmflowError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def describe(self) -> dict[str, str]:
        """Name -> one-line description, for ``vlmflow list``."""
        return {name: self._help[name] for name in sorted(self._entries)}
