"""A bounded memo for hot paths: a dict that empties itself when full.

Clearing everything at the bound is cruder than LRU but costs nothing per hit, and the entries
(parsed requests, normalised paths, compiled plans, verdicts) are cheap to rebuild."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Memo"]

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.max_entries:
            self.clear()
        self[key] = value
        return value
