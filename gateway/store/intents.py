"""Intents: what a process is about to do upstream, until the row recording it is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import Columns, batches, insert, intents

T = intents.c


@dataclass(frozen=True)
class IntentRow:
    id: str
    kind: str  # copy, batch
    subject: str  # the gateway file id (copy) or batch id (batch)
    deployment_id: str
    input_id: str | None
    holder: str
    lease_until: float
    created_at: float


INTENT = Columns(IntentRow, intents)
_INSERT = insert(intents, INTENT.names)
_END = intents.delete().where(T.id == sa.bindparam("id"))
_RENEW = intents.update().where(T.holder == sa.bindparam("holder")) \
    .values(lease_until=sa.bindparam("lease_until"))
_STALE = sa.select(*INTENT.columns).where(T.lease_until < sa.bindparam("now")) \
    .order_by(T.lease_until).limit(sa.bindparam("limit"))
# Conditional on the lease having run out: of two janitors, one takes each intent.
_TAKE = intents.update().where(T.id == sa.bindparam("id"), T.lease_until < sa.bindparam("now")) \
    .values(holder=sa.bindparam("holder"), lease_until=sa.bindparam("lease_until"))
_HOLDER = sa.select(T.holder).where(T.id == sa.bindparam("id"))
_OTHERS_LIVE = sa.select(sa.func.count()).select_from(intents).where(
    T.id != sa.bindparam("id"), T.kind == sa.bindparam("kind"),
    T.deployment_id == sa.bindparam("deployment_id"),
    sa.or_(T.subject == sa.bindparam("subject"), T.input_id == sa.bindparam("input_id")),
    T.lease_until >= sa.bindparam("now"))

_BATCH_EXISTS = sa.select(sa.func.count()).select_from(batches) \
    .where(batches.c.id == sa.bindparam("id"))


class Intents:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def begin(self, row: IntentRow) -> None:
        await self.db.execute(_INSERT, INTENT.values(row))

    async def end(self, intent_id: str) -> None:
        await self.db.execute(_END, {"id": intent_id})

    async def renew(self, holder: str, lease_until: float) -> None:
        await self.db.execute(_RENEW, {"holder": holder, "lease_until": lease_until})

    async def take_stale(self, holder: str, now: float, lease: float,
                         limit: int) -> list[IntentRow]:
        """Intents whose process is gone, now held by `holder` for `lease` seconds."""
        taken = []
        for r in await self.db.fetch_all(_STALE, {"now": now, "limit": limit}):
            row = INTENT.read(r)
            await self.db.execute(_TAKE, {"id": row.id, "now": now, "holder": holder,
                                          "lease_until": now + lease})
            if await self.db.fetch_val(_HOLDER, {"id": row.id}) == holder:
                taken.append(row)
        return taken

    async def others_live(self, row: IntentRow, now: float) -> bool:
        """Whether a live process is doing the same kind of thing on the same deployment and
        subject (or copy): what it makes upstream is not yet recorded, and must not be taken
        for a dead process's leftover."""
        return bool(await self.db.fetch_val(_OTHERS_LIVE, {
            "id": row.id, "kind": row.kind, "deployment_id": row.deployment_id,
            "subject": row.subject, "input_id": row.input_id, "now": now}))

    async def recorded_batches(self, deployment_id: str, natives: Sequence[str]) -> set[str]:
        """Which of these native batch ids the gateway has a batch for."""
        if not natives:
            return set()
        rows = await self.db.fetch_all(
            sa.select(batches.c.provider_batch_id).where(
                batches.c.deployment_id == deployment_id,
                batches.c.provider_batch_id.in_(list(natives))))
        return {r["provider_batch_id"] for r in rows}

    async def batch_exists(self, batch_id: str) -> bool:
        return bool(await self.db.fetch_val(_BATCH_EXISTS, {"id": batch_id}))
