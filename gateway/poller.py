"""Background refresh of unfinished batches, so a batch's end (and its usage) is recorded even
if nobody retrieves it. Every instance runs one; leases in the database keep two instances
from polling the same batch, and a dead instance's batches are picked up when its leases
run out."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from gateway import metrics
from gateway.errors import GatewayError
from gateway.runtime import Gateway
from gateway.tracking import refresh

log = logging.getLogger("gateway.poller")


class Poller:
    def __init__(self, gw: Gateway, interval: float, batch_size: int = 50) -> None:
        self.gw = gw
        self.interval = interval
        self.batch_size = batch_size

    async def poll_once(self) -> int:
        """Refresh the unfinished batches this instance could claim; returns how many."""
        holder = secrets.token_hex(8)
        # Only batches on deployments this instance is configured with: it cannot reach others.
        rows = await self.gw.store.claim_unfinished(
            holder, list(self.gw.deployments), self.batch_size, self.interval
        )
        for row in rows:
            try:
                await refresh(self.gw, row)
            except GatewayError as e:
                log.warning("refreshing batch %s failed: %s", row.id, e.message)
        return len(rows)

    async def run(self) -> None:
        await every(self.interval, self.poll_once, "batch poll")


async def every(seconds: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `job` every `seconds`, for ever; a failure is logged, never the end of the loop (a
    database blip must not stop background work)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:
            log.exception("%s failed", what)
        else:
            metrics.background_succeeded(what)
