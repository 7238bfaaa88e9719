"""Batches, their usage (recorded once each) and the leases that share the background
refresh of unfinished batches between instances."""

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
_LEASE_HOLDER = sa.select(leases.c.holder).where(leases.c.batch_id == sa.bindparam("batch_id"))


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
        # The conditional upsert is atomic per row on both databases: of two instances
        # claiming the same batch, only one finds the old lease expired.
        lease = ins(leases).values(batch_id=sa.bindparam("batch_id"),
                                   holder=sa.bindparam("holder"),
                                   lease_until=sa.bindparam("lease_until"))
        self._claim = lease.on_conflict_do_update(
            index_elements=[leases.c.batch_id],
            set_={"holder": lease.excluded.holder, "lease_until": lease.excluded.lease_until},
            where=leases.c.lease_until < sa.bindparam("now"),
        )

    async def insert(self, row: BatchRow) -> None:
        await self.db.execute(_INSERT, {**BATCH.values(row), "updated_at": time.time()})

    async def get(self, owner: str, batch_id: str) -> BatchRow | None:
        r = await self.db.lookup(_OWNED, {"id": batch_id, "owner": owner})
        return BATCH.read(r) if r else None

    async def update(
        self, batch_id: str, *, status: str, terminal: bool, obj: dict[str, Any]
    ) -> None:
        await self.db.execute(_UPDATE, BATCH.encode({
            "status": status, "terminal": terminal, "object": obj, "batch_id": batch_id,
            "updated_at": time.time(),
        }))

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
        """Up to `limit` unfinished batches on `deployment_ids` whose lease ran out, now leased
        to `holder`. The least recently claimed come first, so a batch whose upstream keeps
        failing cannot starve the others."""
        now = time.time()
        candidates = await self.db.fetch_all(
            sa.select(batches.c.id)
            .select_from(batches.outerjoin(leases, leases.c.batch_id == batches.c.id))
            .where(
                batches.c.terminal.is_(False),
                batches.c.deployment_id.in_(list(deployment_ids)),
                sa.or_(leases.c.lease_until.is_(None), leases.c.lease_until < now),
            )
            .order_by(sa.func.coalesce(leases.c.lease_until, 0), batches.c.seq)
            .limit(limit)
        )
        claimed: list[BatchRow] = []
        for candidate in candidates:
            batch_id = candidate["id"]
            await self.db.execute(self._claim, {
                "batch_id": batch_id, "holder": holder, "lease_until": now + ttl, "now": now,
            })
            if await self.db.fetch_val(_LEASE_HOLDER, {"batch_id": batch_id}) == holder:
                r = await self.db.fetch_row(_BY_ID, {"id": batch_id})
                if r is not None:
                    claimed.append(BATCH.read(r))
        return claimed

    async def page(
        self, owner: str, *, after: str | None, limit: int, model_groups: Sequence[str] | None
    ) -> tuple[list[BatchRow], bool]:
        # Keyset pagination on the insertion sequence: newest first, `after` strictly older.
        q = sa.select(*BATCH.columns).where(batches.c.owner == owner)
        if model_groups:
            q = q.where(batches.c.model_group.in_(list(model_groups)))
        if after:
            cursor = (
                sa.select(batches.c.seq)
                .where(batches.c.id == after, batches.c.owner == owner)
                .scalar_subquery()
            )
            q = q.where(batches.c.seq < cursor)
        rows = await self.db.fetch_all(q.order_by(batches.c.seq.desc()).limit(limit + 1))
        return [BATCH.read(r) for r in rows[:limit]], len(rows) > limit
