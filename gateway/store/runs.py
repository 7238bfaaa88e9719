"""Batches the gateway runs itself (gateway/selfrun): the run rows, the checkpoint of finished
lines, and the per-deployment leases that give one instance the running of a deployment's runs.

Every write a runner makes goes through `checkpoint` or `finish`, which renew the runner's
lease in the same transaction and refuse (`LeaseLost`) when another instance holds it: a runner
that lost its lease can never record a line the new holder also records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from gateway.store.batches import BATCH, BatchRow
from gateway.store.db import Database
from gateway.store.schema import Columns, batches, insert, run_leases, run_results, runs

UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


def _status_in(*statuses: str) -> sa.ColumnElement[bool]:
    # Not `in_()`: its expanding parameter cannot be compiled ahead with other parameters.
    return sa.or_(*(runs.c.status == s for s in statuses))


T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Run a transaction to its end even when the caller is cancelled, then let the cancel
    through: one cut off between BEGIN and COMMIT can leave a pooled SQLite connection inside
    it, holding the write lock for every other query."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


class LeaseLost(Exception):
    """Another instance runs this deployment's runs now."""


@dataclass(frozen=True)
class RunRow:
    id: str
    batch_id: str
    deployment_id: str
    file_id: str
    endpoint: str
    first_line: int
    total: int
    status: str
    completed: int = 0
    failed: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    created_at: int = 0
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_bytes: int | None = None
    error_bytes: int | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class Tally:
    """What one checkpoint adds to a run's counts; tokens None: no response reported any."""

    completed: int = 0
    failed: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


RUN = Columns(RunRow, runs)
_p = sa.bindparam
_INSERT = insert(runs, (*RUN.names, "updated_at"))
_BY_ID = sa.select(*RUN.columns).where(runs.c.id == _p("id"))
_CANCEL = runs.update().where(
    runs.c.id == _p("id"), _status_in("validating", "in_progress")
).values(status="cancelling", cancelling_at=_p("now"), updated_at=_p("now"))
# Runs whose batch row exists: a crash between `submit` and the batch's insert leaves a run
# nobody can see, which is never started.
_UNFINISHED = (
    sa.select(*RUN.columns)
    .where(runs.c.deployment_id == _p("deployment_id"), _status_in(*UNFINISHED),
           sa.exists().where(batches.c.id == runs.c.batch_id))
    .order_by(runs.c.created_at, runs.c.id)
)
_DONE_LINES = (
    sa.select(run_results.c.line)
    .where(run_results.c.run_id == _p("run_id"), run_results.c.line > _p("after"))
    .order_by(run_results.c.line).limit(_p("limit"))
)
_RESULTS = (
    sa.select(run_results.c.line, run_results.c.failed, run_results.c.result)
    .where(run_results.c.run_id == _p("run_id"), run_results.c.line > _p("after"))
    .order_by(run_results.c.line).limit(_p("limit"))
)
_DELETE_RESULTS = run_results.delete().where(run_results.c.run_id == _p("run_id"))
_COUNTS = runs.update().where(runs.c.id == _p("id")).values(
    completed=runs.c.completed + _p("completed"), failed=runs.c.failed + _p("failed"),
    updated_at=_p("now"),
)
_TOKENS = runs.update().where(runs.c.id == _p("id")).values({
    name: sa.func.coalesce(runs.c[name], 0) + _p(name)
    for name in ("input_tokens", "output_tokens", "total_tokens")
})
_STATUS = sa.select(runs.c.status, runs.c.expires_at).where(runs.c.id == _p("id"))
_LEASE_HOLDER = sa.select(run_leases.c.holder).where(
    run_leases.c.deployment_id == _p("deployment_id"))
_RENEW = run_leases.update().where(
    run_leases.c.deployment_id == _p("deployment_id"), run_leases.c.holder == _p("holder")
).values(lease_until=_p("lease_until"))
_RELEASE = run_leases.delete().where(
    run_leases.c.deployment_id == _p("deployment_id"), run_leases.c.holder == _p("holder"))
_BATCH = sa.select(*BATCH.columns).where(batches.c.id == _p("id"))


class Runs:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert_result = db.insert(run_results).values(
            run_id=_p("run_id"), line=_p("line"), failed=_p("failed"), result=_p("result"),
        ).on_conflict_do_nothing()
        # Atomic per row on both databases: of two instances claiming a deployment whose lease
        # ran out, one wins; the holder itself renews.
        lease = db.insert(run_leases).values(
            deployment_id=_p("deployment_id"), holder=_p("holder"), lease_until=_p("lease_until"))
        self._claim = lease.on_conflict_do_update(
            index_elements=[run_leases.c.deployment_id],
            set_={"holder": lease.excluded.holder, "lease_until": lease.excluded.lease_until},
            where=sa.or_(run_leases.c.lease_until < _p("now"),
                         run_leases.c.holder == lease.excluded.holder),
        )

    # -- rows ----------------------------------------------------------------------------------

    async def insert(self, row: RunRow) -> None:
        await self.db.execute(_INSERT, {**RUN.values(row), "updated_at": time.time()})

    async def get(self, run_id: str) -> RunRow | None:
        r = await self.db.fetch_row(_BY_ID, {"id": run_id})
        return RUN.read(r) if r else None

    async def cancel(self, run_id: str) -> RunRow | None:
        """Mark a run that has not ended `cancelling` (a run past that stays as it is)."""
        await self.db.execute(_CANCEL, {"id": run_id, "now": int(time.time())})
        return await self.get(run_id)

    async def unfinished(self, deployment_id: str) -> list[RunRow]:
        rows = await self.db.fetch_all(_UNFINISHED, {"deployment_id": deployment_id})
        return [RUN.read(r) for r in rows]

    async def deployments_with_work(self, deployment_ids: Sequence[str]) -> set[str]:
        if not deployment_ids:
            return set()
        rows = await self.db.fetch_all(
            sa.select(runs.c.deployment_id).where(
                runs.c.deployment_id.in_(list(deployment_ids)), _status_in(*UNFINISHED),
            ).distinct())
        return {r["deployment_id"] for r in rows}

    async def batch(self, batch_id: str) -> BatchRow | None:
        """The gateway batch a run belongs to (any owner: the runner is the gateway itself)."""
        r = await self.db.fetch_row(_BATCH, {"id": batch_id})
        return BATCH.read(r) if r else None

    # -- leases --------------------------------------------------------------------------------

    async def claim(self, deployment_id: str, holder: str, ttl: float) -> bool:
        """Take or renew the running of a deployment's runs; True when `holder` has it."""
        now = time.time()
        await self.db.execute(self._claim, {"deployment_id": deployment_id, "holder": holder,
                                            "lease_until": now + ttl, "now": now})
        return bool(await self.db.fetch_val(_LEASE_HOLDER,
                                            {"deployment_id": deployment_id}) == holder)

    async def release(self, deployment_id: str, holder: str) -> None:
        """Give a deployment up at once (shutting down): another instance need not wait."""
        await self.db.execute(_RELEASE, {"deployment_id": deployment_id, "holder": holder})

    async def _hold(self, deployment_id: str, holder: str, ttl: float) -> None:
        # Renewing first locks the lease row (PostgreSQL): a claimer waits for this
        # transaction and then finds the lease fresh.
        await self.db.execute(_RENEW, {"deployment_id": deployment_id, "holder": holder,
                                       "lease_until": time.time() + ttl})
        if await self.db.fetch_val(_LEASE_HOLDER, {"deployment_id": deployment_id}) != holder:
            raise LeaseLost(deployment_id)

    # -- progress ------------------------------------------------------------------------------

    async def done_lines(self, run_id: str, after: int, limit: int) -> list[int]:
        """Line numbers above `after` that have a result, ascending."""
        rows = await self.db.fetch_all(_DONE_LINES,
                                       {"run_id": run_id, "after": after, "limit": limit})
        return [int(r["line"]) for r in rows]

    async def checkpoint(
        self, run: RunRow, holder: str, ttl: float,
        results: Sequence[tuple[int, bool, bytes]], tally: Tally,
    ) -> tuple[str, int | None]:
        """Record finished lines (line, failed, result line) and their counts as one, if
        `holder` still runs the deployment; the run's status and expiry as they are now."""
        return await to_the_end(self._checkpoint(run, holder, ttl, results, tally))

    async def _checkpoint(
        self, run: RunRow, holder: str, ttl: float,
        results: Sequence[tuple[int, bool, bytes]], tally: Tally,
    ) -> tuple[str, int | None]:
        async with self.db.transaction():
            await self._hold(run.deployment_id, holder, ttl)
            if results:
                await self.db.execute_many(self._insert_result, [
                    {"run_id": run.id, "line": line, "failed": failed, "result": result}
                    for line, failed, result in results
                ])
                await self.db.execute(_COUNTS, {"id": run.id, "completed": tally.completed,
                                                "failed": tally.failed, "now": time.time()})
            if tally.total_tokens is not None:
                await self.db.execute(_TOKENS, {
                    "id": run.id, "input_tokens": tally.input_tokens or 0,
                    "output_tokens": tally.output_tokens or 0,
                    "total_tokens": tally.total_tokens})
            r = await self.db.fetch_row(_STATUS, {"id": run.id})
        if r is None:
            raise LeaseLost(run.id)  # the run is gone: nothing more to do for it
        return str(r["status"]), r["expires_at"]

    async def results(self, run_id: str, after: int, limit: int) -> list[tuple[int, bool, bytes]]:
        rows = await self.db.fetch_all(_RESULTS, {"run_id": run_id, "after": after,
                                                  "limit": limit})
        return [(int(r["line"]), bool(r["failed"]), bytes(r["result"])) for r in rows]

    async def move(self, run: RunRow, holder: str, ttl: float, status: str,
                   **values: int | str | None) -> str:
        """Set an unfinished run's status (and fields) if `holder` still runs it; the status
        it has after that (another one when a cancel came first)."""
        return await to_the_end(self._move(run, holder, ttl, status, **values))

    async def _move(self, run: RunRow, holder: str, ttl: float, status: str,
                    **values: int | str | None) -> str:
        async with self.db.transaction():
            await self._hold(run.deployment_id, holder, ttl)
            await self.db.execute(
                runs.update().where(runs.c.id == run.id, _status_in(*UNFINISHED))
                .values(status=status, updated_at=time.time(), **values))
            current = await self.db.fetch_val(_STATUS, {"id": run.id})
        return str(current)

    async def finish(self, run: RunRow, holder: str, ttl: float, status: str,
                     **values: int | str | None) -> str:
        """End a run: its final status and result sizes, its checkpoint rows gone."""
        return await to_the_end(self._finish(run, holder, ttl, status, **values))

    async def _finish(self, run: RunRow, holder: str, ttl: float, status: str,
                      **values: int | str | None) -> str:
        async with self.db.transaction():
            current = await self._move(run, holder, ttl, status, **values)
            if current == status:
                await self.db.execute(_DELETE_RESULTS, {"run_id": run.id})
        return current
