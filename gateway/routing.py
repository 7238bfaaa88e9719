"""Choosing a deployment for new work: round-robin over the deployments that hold the file,
skipping ones that recently failed (429, 5xx, timeouts, full) until their cool-down passes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

DEFAULT_COOLDOWN = 30.0


class Router:
    def __init__(self) -> None:
        self._turn = itertools.count()
        self._cool_until: dict[str, float] = {}

    def order(self, deployment_ids: Sequence[str]) -> list[str]:
        """Every candidate once: healthy ones first, in rotating order, cooling ones last."""
        if not deployment_ids:
            return []
        start = next(self._turn) % len(deployment_ids)
        rotated = [*deployment_ids[start:], *deployment_ids[:start]]
        now = time.monotonic()
        healthy = [d for d in rotated if self._cool_until.get(d, 0.0) <= now]
        cooling = sorted(
            (d for d in rotated if self._cool_until.get(d, 0.0) > now),
            key=lambda d: self._cool_until[d],
        )
        return healthy + cooling

    def cool_down(self, deployment_id: str, seconds: float | None = None) -> None:
        self._cool_until[deployment_id] = time.monotonic() + (seconds or DEFAULT_COOLDOWN)

    def recovered(self, deployment_id: str) -> None:
        self._cool_until.pop(deployment_id, None)
