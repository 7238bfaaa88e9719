"""What the process's retrieves share: one upstream poll per batch at a time, and a note of
each batch they polled, which the background poller turns into a later due time (so the
poller does not call the provider again right after a retrieve did)."""

from __future__ import annotations

import time
from typing import Any

from gateway.singleflight import SingleFlight

# Notes kept between two poller ticks at most; beyond (no poller running), new ones are dropped.
MAX_NOTES = 100_000


class ReadThrough:
    __slots__ = ("flights", "notes")

    def __init__(self) -> None:
        self.flights: SingleFlight[str, dict[str, Any]] = SingleFlight()
        self.notes: dict[str, tuple[float, int]] = {}  # batch id → (polled at, created at)

    def polled(self, batch_id: str, created_at: int) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes[batch_id] = (time.time(), created_at)

    def take_notes(self) -> dict[str, tuple[float, int]]:
        notes, self.notes = self.notes, {}
        return notes
