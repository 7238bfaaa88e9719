"""Background refresh of unfinished batches, so a batch's end (and its usage) is recorded even
if nobody retrieves it, and lists (answered from the database) stay fresh.

Every instance runs one `Poller`. The schedule is in the database (`store.batches`): each
unfinished batch has a due time, and a poller claims due batches oldest first by moving their
due time one `batch_poll_interval` on, in one transaction, so two instances never poll the same
batch within an interval and a dead instance's batches simply fall due for the others.

- Spread out: every tick (1/30 of the interval, 50 ms to 2 s) a poller claims at most the share
  of the interval that tick is worth (the batches scheduled * tick / interval, plus a quarter to
  catch up on a backlog), so 10,000 batches due at once are refreshed over the interval, not in
  a burst at its start, and stay spread after that (each next due time is an interval on).
- Bounded: at most `concurrency` polls run at once, and no more is claimed than can start soon.
- Backing off: a batch running for a long time is looked at less often: every `period(age)`
  seconds, the interval for its first 60 intervals, then a sixtieth of its age (a batch running
  for 5 hours is polled every 5 minutes with the default 60 s interval), at most 10 intervals,
  plus up to 10 % of the extra as jitter.
- No double calls: a retrieve that polled a batch moves its due time too (noted in memory and
  written each tick), and a poll running for a retrieve is shared with the poller's.

So two polls of a batch are at least an interval apart, and a batch younger than 60
intervals is refreshed at least every interval plus two ticks and the time a poll waits to
start (measured: under a tenth of the interval) while the pollers keep up; the first pass of
a starting instance comes one interval after its start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable

from gateway import metrics
from gateway.errors import GatewayError
from gateway.runtime import Gateway
from gateway.store import BatchRow
from gateway.tracking import shared_refresh

log = logging.getLogger("gateway.poller")

# A batch is polled at least every `age / BACKOFF_AGE_SHARE` seconds once that is longer than
# the interval, and at least every `MAX_BACKOFF` intervals.
BACKOFF_AGE_SHARE = 60
MAX_BACKOFF = 10
JITTER = 0.1  # of the time added by backing off
CATCH_UP = 1.25  # claim rate over the steady one: room to work off a backlog


def period(interval: float, age: float) -> float:
    """Seconds between two polls of a batch that has been running `age` seconds."""
    return min(max(interval, age / BACKOFF_AGE_SHARE), MAX_BACKOFF * interval)


def next_due(interval: float, polled_at: float, created_at: float) -> float:
    wait = period(interval, polled_at - created_at)
    extra = wait - interval
    return polled_at + wait + (random.uniform(0, JITTER * extra) if extra > 0 else 0.0)


class Poller:
    def __init__(self, gw: Gateway, interval: float, concurrency: int = 64) -> None:
        self.gw = gw
        self.interval = interval
        self.tick = min(max(interval / 30, 0.05), 2.0)
        self.concurrency = concurrency
        self.holder = secrets.token_hex(8)
        self.running: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None

    def share(self, scheduled: int) -> int:
        """How many batches one tick may claim: this tick's part of refreshing every
        scheduled batch once per interval, with room to catch up."""
        return math.ceil(scheduled * self.tick / self.interval * CATCH_UP)

    async def tick_once(self) -> int:
        """Write the due times retrieves moved, claim this tick's share of due batches and
        start polling them; returns how many were claimed."""
        await self._postpone_polled()
        share = self.share(await self.gw.store.batches.scheduled())
        # Never more waiting than two ticks' worth: a slow provider is not claimed ahead of
        # what can be polled (those batches stay due, for this instance or another).
        want = min(share, max(2 * share, 4 * self.concurrency) - len(self.running))
        rows = await self._claim(want)
        for row in rows:
            task = asyncio.create_task(self._refresh(row))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        return len(rows)

    async def poll_once(self) -> int:
        """Claim every due batch (up to `4 * concurrency`) and refresh them, waiting for the
        end: a whole pass at once, for tests and tools."""
        await self._postpone_polled()
        rows = await self._claim(4 * self.concurrency)
        await asyncio.gather(*(self._refresh(r) for r in rows))
        return len(rows)

    async def _claim(self, limit: int) -> list[BatchRow]:
        if limit <= 0:
            return []
        # Only batches on deployments this instance is configured with: it cannot reach others.
        # Due again one interval and one tick on: the poll itself may start up to a tick
        # after the claim, and two polls of a batch are never less than an interval apart.
        rows = await self.gw.store.batches.claim_unfinished(
            self.holder, list(self.gw.deployments), limit, self.interval + self.tick)
        now = time.time()
        later = [(r.id, next_due(self.interval, now, r.created_at)) for r in rows
                 if period(self.interval, now - r.created_at) > self.interval]
        await self.gw.store.batches.postpone(later)  # long-running ones: backed off
        return rows

    async def _postpone_polled(self) -> None:
        notes = self.gw.reads.take_notes()
        if notes:
            await self.gw.store.batches.postpone([
                (batch_id, next_due(self.interval, polled_at, created_at))
                for batch_id, (polled_at, created_at) in notes.items()
            ])

    async def _refresh(self, row: BatchRow) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            try:
                await shared_refresh(self.gw, row, note=False)
            except GatewayError as e:
                log.warning("refreshing batch %s failed: %s", row.id, e.message)
            except Exception:
                log.exception("refreshing batch %s failed", row.id)

    async def run(self) -> None:
        """Tick for ever, the first time one interval after start; polls still running when
        this is cancelled are cancelled with it."""
        try:
            await asyncio.sleep(self.interval)
            while True:
                started = time.monotonic()
                try:
                    await self.tick_once()
                except Exception:
                    log.exception("batch poll failed")
                else:
                    metrics.background_succeeded("batch poll")
                await asyncio.sleep(max(self.tick - (time.monotonic() - started), 0.0))
        finally:
            for task in list(self.running):
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)


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
