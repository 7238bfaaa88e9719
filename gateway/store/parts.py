"""The parts of split batches (gateway/split): which lines each part covers, where it runs, what
its provider last said, and the lease of a part being submitted.

A part is submitted by whoever holds its lease (`claim_*` are conditional updates read back, so
of two instances exactly one takes a part); a submitter that dies stops renewing and its part
is taken over once the lease has run out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.store.batches import BATCH, BatchRow
from gateway.store.db import Database
from gateway.store.schema import Columns, batch_parts, batches, insert, leases

SUBMITTING = "submitting"
P = batch_parts.c
_p = sa.bindparam


@dataclass(frozen=True)
class PartRow:
    batch_id: str
    part: int
    first_line: int
    total: int
    attempt: int
    deployment_id: str
    model_group: str
    input_id: str | None
    provider_batch_id: str | None
    status: str
    terminal: bool
    object: dict[str, Any]
    holder: str
    lease_until: float
    error_code: str | None = None
    error_message: str | None = None

    @property
    def last_line(self) -> int:
        return self.first_line + self.total - 1


PART = Columns(PartRow, batch_parts)
_INSERT = insert(batch_parts, (*PART.names, "updated_at"))
_OF_BATCH = sa.select(*PART.columns).where(P.batch_id == _p("batch_id")).order_by(P.part)
_ONE = sa.select(*PART.columns).where(P.batch_id == _p("batch_id"), P.part == _p("part"))
_WHERE = (P.batch_id == _p("batch_id"), P.part == _p("part"))
_HOLDER = sa.select(P.holder).where(*_WHERE)
_RENEW = batch_parts.update().where(*_WHERE, P.holder == _p("holder"),
                                    P.status == SUBMITTING).values(lease_until=_p("until"))
# A part whose submitter died (lease run out) is taken over as it is, copy included.
_RESUME = batch_parts.update().where(
    *_WHERE, P.status == SUBMITTING, P.lease_until < _p("now")
).values(holder=_p("holder"), lease_until=_p("until"), updated_at=_p("now"))
_BATCH_BY_ID = sa.select(*BATCH.columns).where(batches.c.id == _p("id"))


class Parts:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, batch: BatchRow, parts: Sequence[PartRow]) -> None:
        """A split batch and its parts, together (due for the background refresh at once)."""
        now = time.time()
        async with self.db.transaction():
            await self.db.execute(insert(batches, (*BATCH.names, "updated_at")),
                                  {**BATCH.values(batch), "updated_at": now})
            await self.db.execute(insert(leases, ("batch_id", "holder", "lease_until")),
                                  {"batch_id": batch.id, "holder": "", "lease_until": now})
            await self.db.execute_many(_INSERT, [{**PART.values(p), "updated_at": now}
                                                 for p in parts])

    async def discard(self, batch_id: str) -> None:
        """A split batch none of whose parts could be submitted: as if never created."""
        async with self.db.transaction():
            await self.db.execute(batch_parts.delete().where(P.batch_id == batch_id))
            await self.db.execute(leases.delete().where(leases.c.batch_id == batch_id))
            await self.db.execute(batches.delete().where(batches.c.id == batch_id))

    async def of(self, batch_id: str) -> list[PartRow]:
        return [PART.read(r) for r in await self.db.fetch_all(_OF_BATCH,
                                                              {"batch_id": batch_id})]

    async def get(self, batch_id: str, part: int) -> PartRow | None:
        r = await self.db.fetch_row(_ONE, {"batch_id": batch_id, "part": part})
        return PART.read(r) if r else None

    async def batch(self, batch_id: str) -> BatchRow | None:
        """The batch row as the database has it now (any owner: read by the gateway)."""
        r = await self.db.fetch_row(_BATCH_BY_ID, {"id": batch_id})
        return BATCH.read(r) if r else None

    # -- leases --------------------------------------------------------------------------------

    async def _held(self, batch_id: str, part: int, holder: str) -> bool:
        return bool(await self.db.fetch_val(_HOLDER, {"batch_id": batch_id, "part": part})
                    == holder)

    async def resume(self, batch_id: str, part: int, holder: str, ttl: float) -> bool:
        """Take over a part whose submitter's lease ran out; True when `holder` has it."""
        now = time.time()
        await self.db.execute(_RESUME, {"batch_id": batch_id, "part": part, "holder": holder,
                                        "until": now + ttl, "now": now})
        return await self._held(batch_id, part, holder)

    async def retry(self, row: PartRow, holder: str, ttl: float, deployment_id: str,
                    model_group: str) -> bool:
        """Take a failed first attempt for a second on `deployment_id`; True when `holder`
        has it (another instance may have taken it first)."""
        now = time.time()
        await self.db.execute(
            batch_parts.update().where(
                P.batch_id == row.batch_id, P.part == row.part, P.attempt == row.attempt,
                P.status == "failed")
            .values(attempt=row.attempt + 1, deployment_id=deployment_id,
                    model_group=model_group, input_id=None, provider_batch_id=None,
                    status=SUBMITTING, terminal=False, object="{}", holder=holder,
                    lease_until=now + ttl, error_code=None, error_message=None,
                    updated_at=now))
        return await self._held(row.batch_id, row.part, holder)

    async def renew(self, batch_id: str, part: int, holder: str, ttl: float) -> None:
        await self.db.execute(_RENEW, {"batch_id": batch_id, "part": part, "holder": holder,
                                       "until": time.time() + ttl})

    async def move(self, batch_id: str, part: int, deployment_id: str, model_group: str,
                   attempt: int) -> None:
        """A part not yet submitted goes to another deployment (its own was full or down)."""
        await self._set(batch_id, part, deployment_id=deployment_id, model_group=model_group,
                        input_id=None, attempt=attempt)

    # -- progress ------------------------------------------------------------------------------

    async def _set(self, batch_id: str, part: int, **values: Any) -> None:
        await self.db.execute(
            batch_parts.update().where(P.batch_id == batch_id, P.part == part)
            .values(updated_at=time.time(), **PART.encode(values)))

    async def copied(self, batch_id: str, part: int, input_id: str | None) -> None:
        await self._set(batch_id, part, input_id=input_id)

    async def submitted(self, batch_id: str, part: int, provider_batch_id: str, status: str,
                        terminal: bool, obj: dict[str, Any]) -> None:
        await self._set(batch_id, part, provider_batch_id=provider_batch_id, status=status,
                        terminal=terminal, object=obj, holder="", lease_until=0.0)

    async def failed(self, batch_id: str, part: int, code: str, message: str) -> None:
        """A part that could not be submitted: it ends failed with this reason."""
        await self._set(batch_id, part, status="failed", terminal=True, error_code=code,
                        error_message=message[:512], holder="", lease_until=0.0)

    async def seen(self, batch_id: str, part: int, status: str, terminal: bool,
                   obj: dict[str, Any]) -> None:
        """What the part's provider reports now."""
        await self._set(batch_id, part, status=status, terminal=terminal, object=obj)
