"""Batches, their usage (recorded once each) and the schedule that shares the background
refresh of unfinished batches between instances.

The schedule is the lease table: one row per unfinished batch, written with the batch and
deleted when it finishes. `lease_until` is when the batch is next due. A poller claims due rows
(oldest due first) by moving `lease_until` forward in one atomic statement, so of several
instances exactly one gets each row, and nobody else polls it before the new time; a dead
instance's rows simply fall due again."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import Columns, batches, insert, leases, usage


@dataclass(frozen=True)
class BatchRow:
    id: str
    owner: str
    deployment_id: str
    model_group: str
    provider_batch_id: str
    input_file_id: str
    created_at: int
    status: str
    terminal: bool
    object: dict[str, Any]


BATCH = Columns(BatchRow, batches)

_INSERT = insert(batches, (*BATCH.names, "updated_at"))
_BY_ID = sa.select(*BATCH.columns).where(batches.c.id == sa.bindparam("id"))
_OWNED = _BY_ID.where(batches.c.owner == sa.bindparam("owner"))
_UPDATE = (
    batches.update().where(batches.c.id == sa.bindparam("batch_id"))
    .values({name: sa.bindparam(name) for name in ("status", "terminal", "object", "updated_at")})
)
_NEW_LEASE = insert(leases, ("batch_id", "holder", "lease_until"))
_END_LEASE = leases.delete().where(leases.c.batch_id == sa.bindparam("batch_id"))
# Moves a batch's next due time later, never earlier (a retrieve polled it, or it backs off).
_POSTPONE = (
    leases.update()
    .where(leases.c.batch_id == sa.bindparam("batch_id"),
           leases.c.lease_until < sa.bindparam("until"))
    .values(lease_until=sa.bindparam("until"))
)
_SCHEDULED = sa.select(sa.func.count()).select_from(leases)


@functools.cache
def _usage_page(of_owner: bool) -> sa.Select[Any]:
    q = sa.select(usage).order_by(usage.c.recorded_at.desc(), usage.c.batch_id)
    if of_owner:
        q = q.where(usage.c.owner == sa.bindparam("owner"))
    return q.limit(sa.bindparam("limit"))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Batches:
    def __init__(self, db: Database) -> None:
        self.db = db
        ins = db.insert
        self._record_usage = ins(usage).values(
            {c.name: sa.bindparam(c.name) for c in usage.c}
        ).on_conflict_do_nothing()

    async def insert(self, row: BatchRow) -> None:
        """A new batch; unfinished, it is due for the background refresh at once."""
        now = time.time()
        async with self.db.transaction():
            await self.db.execute(_INSERT, {**BATCH.values(row), "updated_at": now})
            if not row.terminal:
                await self.db.execute(_NEW_LEASE,
                                      {"batch_id": row.id, "holder": "", "lease_until": now})

    async def get(self, owner: str | None, batch_id: str) -> BatchRow | None:
        """The batch `batch_id` of `owner`; None as owner: of any owner (the master key)."""
        if owner is None:
            r = await self.db.lookup(_BY_ID, {"id": batch_id})
        else:
            r = await self.db.lookup(_OWNED, {"id": batch_id, "owner": owner})
        return BATCH.read(r) if r else None

    async def update(
        self, batch_id: str, *, status: str, terminal: bool, obj: dict[str, Any]
    ) -> None:
        values = BATCH.encode({"status": status, "terminal": terminal, "object": obj,
                               "batch_id": batch_id, "updated_at": time.time()})
        if not terminal:
            await self.db.execute(_UPDATE, values)
            return
        async with self.db.transaction():  # finished: off the schedule, in the same breath
            await self.db.execute(_UPDATE, values)
            await self.db.execute(_END_LEASE, {"batch_id": batch_id})

    async def record_usage(self, row: BatchRow, obj: dict[str, Any]) -> None:
        """The usage of a finished batch, once: a second call for the same batch is a no-op."""
        counts = obj.get("request_counts") or {}
        reported = obj.get("usage")
        tokens: dict[str, Any] = reported if isinstance(reported, dict) else {}
        await self.db.execute(self._record_usage, {
            "batch_id": row.id,
            "owner": row.owner,
            "model_group": row.model_group,
            "deployment_id": row.deployment_id,
            "status": obj["status"],
            "requests_completed": int(counts.get("completed") or 0),
            "requests_failed": int(counts.get("failed") or 0),
            "input_tokens": _int_or_none(tokens.get("input_tokens")),
            "output_tokens": _int_or_none(tokens.get("output_tokens")),
            "total_tokens": _int_or_none(tokens.get("total_tokens")),
            "recorded_at": int(time.time()),
        })

    async def list_usage(self, owner: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self.db.fetch_all(_usage_page(owner is not None),
                                       {"owner": owner, "limit": limit})
        return [dict(r) for r in rows]

    async def claim_unfinished(
        self, holder: str, deployment_ids: Sequence[str], limit: int, ttl: float
    ) -> list[BatchRow]:
        """Up to `limit` unfinished batches on `deployment_ids` that are due, oldest due first,
        now leased to `holder` for `ttl` seconds (their next due time). Read and moved in one
        transaction: SQLite's takes the write lock first; on PostgreSQL the rows are locked
        and concurrent claimers skip them and take the next due ones."""
        if not deployment_ids or limit <= 0:
            return []
        now = time.time()
        due = (
            sa.select(*BATCH.columns)
            .select_from(leases.join(batches, batches.c.id == leases.c.batch_id))
            .where(leases.c.lease_until <= now, batches.c.terminal.is_(False),
                   batches.c.deployment_id.in_(list(deployment_ids)))
            .order_by(leases.c.lease_until, leases.c.batch_id)
            .limit(limit)
            .with_for_update(of=leases, skip_locked=True)  # SQLite: the transaction's lock
        )
        async with self.db.transaction():
            rows = await self.db.fetch_all(due)
            if rows:
                await self.db.execute(
                    leases.update().where(leases.c.batch_id.in_([r["id"] for r in rows]))
                    .values(holder=holder, lease_until=now + ttl))
        return [BATCH.read(r) for r in rows]

    async def postpone(self, due: Sequence[tuple[str, float]]) -> None:
        """Move each (batch id, time) not due before that time: later, never earlier."""
        if due:
            await self.db.execute_many(
                _POSTPONE, [{"batch_id": b, "until": until} for b, until in due])

    async def scheduled(self) -> int:
        """How many batches the background refresh has to keep fresh (all deployments)."""
        return int(await self.db.fetch_val(_SCHEDULED) or 0)

    async def page(
        self, owner: str | None, *, after: str | None, limit: int,
        model_groups: Sequence[str] | None,
    ) -> tuple[list[tuple[str, str]], bool]:
        """A page of `owner`'s batches (None: every tenant's, for the master key), newest
        first, as (id, the batch object's JSON as stored): a list answers them as they are."""
        groups = list(model_groups or ())
        values: dict[str, Any] = {"owner": owner, "after": after, "limit": limit + 1,
                                  **{f"g{i}": g for i, g in enumerate(groups)}}
        rows = await self.db.fetch_all(
            _page_query(owner is not None, len(groups), after is not None), values)
        return [(r["id"], r["object"]) for r in rows[:limit]], len(rows) > limit


@functools.lru_cache(maxsize=64)  # shapes differ by the number of groups asked for
def _page_query(by_owner: bool, groups: int, after: bool) -> sa.Select[Any]:
    """One statement per shape of a list, so it is compiled once (see store.db)."""
    # Keyset pagination on the insertion sequence: newest first, `after` strictly older.
    q = sa.select(batches.c.id, batches.c.object)
    cursor = sa.select(batches.c.seq).where(batches.c.id == sa.bindparam("after"))
    if by_owner:
        q = q.where(batches.c.owner == sa.bindparam("owner"))
        cursor = cursor.where(batches.c.owner == sa.bindparam("owner"))
    if groups:
        q = q.where(batches.c.model_group.in_([sa.bindparam(f"g{i}") for i in range(groups)]))
    if after:
        q = q.where(batches.c.seq < cursor.scalar_subquery())
    return q.order_by(batches.c.seq.desc()).limit(sa.bindparam("limit"))
