"""A small per-process cache whose entries expire a fixed time after they were stored.

For rows read on every request (keys, batches): the lifetime is the staleness the caller
accepts, written down where it is used. A lifetime of 0 turns the cache off. Memory is
bounded: when `max_entries` is reached, expired entries go first, then everything."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    __slots__ = ("_entries", "max_entries", "seconds")

    def __init__(self, seconds: float, max_entries: int = 10_000) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic()
        if len(self._entries) >= self.max_entries and key not in self._entries:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = (now + self.seconds, value)

    def replace(self, key: K, value: V) -> None:
        """A newer value for an entry that is still there, keeping its expiry (so a value
        learnt later never outlives what the entry promised)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries[key] = (entry[0], value)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
