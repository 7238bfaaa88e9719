"""Files, each input's copies on deployments (made once, leased to one maker, retried with
backoff), batch result files (minted once per batch and kind), and the retention query."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import Columns, copies, files, insert


@dataclass(frozen=True)
class Copy:
    """One deployment's copy of an input file."""

    deployment_id: str
    provider_file_id: str | None
    state: str  # "ready" | "pending" | "failed"
    attempts: int = 0


@dataclass(frozen=True)
class FileRow:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    status: str
    model_groups: list[str]
    source_model: str | None
    request_count: int | None = None
    kept_key: str | None = None  # where the file store keeps its content
    source_batch: str | None = None  # result files: the batch (gateway id) ...
    result_kind: str | None = None  # ... and which result: "output" | "errors"
    expires_at: int | None = None  # asked at upload (`expires_after`); None: kept
    endpoint: str | None = None  # input files: their lines' `url` (None: uploaded before v14)
    copies: tuple[Copy, ...] = ()

    def copy_on(self, deployment_id: str) -> Copy | None:
        return next((c for c in self.copies if c.deployment_id == deployment_id), None)


FILE = Columns(FileRow, files)
COPY = Columns(Copy, copies)

_p = sa.bindparam
_INSERT = insert(files, FILE.names)
# A file being deleted is gone for every caller from the first step of its deletion on.
DELETING = "deleting"
_VISIBLE = files.c.status != DELETING
_BY_ID = sa.select(*FILE.columns).where(files.c.id == _p("id"), _VISIBLE)
_OWNED = _BY_ID.where(files.c.owner == _p("owner"))
_MARK_DELETING = files.update().where(
    files.c.id == _p("id"), files.c.owner == _p("owner")
).values(status=DELETING)
_BEING_DELETED = (
    sa.select(*FILE.columns).where(files.c.status == DELETING).order_by(files.c.seq)
    .limit(_p("limit"))
)
_DELETE = files.delete().where(files.c.id == _p("id"), files.c.owner == _p("owner"))
_RESULT_ID = sa.select(files.c.id).where(
    files.c.source_batch == _p("batch_id"), files.c.result_kind == _p("kind")
)
_INSERT_COPY = insert(copies, ("file_id", *COPY.names, "next_attempt_at", "lease_until"))
_COPIES = (
    sa.select(*COPY.columns).where(copies.c.file_id == _p("file_id"))
    .order_by(copies.c.deployment_id)
)
# Only the owner's file's copies: the owner is checked here too, not only by the caller.
_DELETE_COPIES = copies.delete().where(
    copies.c.file_id == _p("file_id"),
    sa.exists().where(files.c.id == _p("file_id"), files.c.owner == _p("owner")),
)
_ONE = sa.and_(copies.c.file_id == _p("file_id"), copies.c.deployment_id == _p("deployment_id"))
_DELETE_COPY = copies.delete().where(_ONE)
_COPY_HOLDER = sa.select(copies.c.holder).where(_ONE, copies.c.state == "pending")
_ATTEMPTS = sa.select(copies.c.attempts).where(_ONE)
_COPY_MADE = copies.update().where(_ONE).values(
    state="ready", provider_file_id=_p("provider_file_id"), holder=None, lease_until=0.0
)
_COPY_FAILED = copies.update().where(_ONE).values(
    state="failed", attempts=_p("attempts"), next_attempt_at=_p("retry_at"), holder=None,
    lease_until=0.0,
)
_INPUTS_BEFORE = (
    sa.select(*FILE.columns)
    .where(files.c.purpose == "batch", files.c.created_at < _p("before"))
    .order_by(files.c.seq).limit(_p("limit"))
)
_EXPIRED = (
    sa.select(*FILE.columns).where(files.c.expires_at < _p("now"), _VISIBLE)
    .order_by(files.c.expires_at).limit(_p("limit"))
)


@functools.cache
def _page(everyone: bool, purpose: bool, after: bool, ascending: bool) -> sa.Select[Any]:
    """A page of an owner's files (or, `everyone`, of every owner's): one statement per shape,
    compiled once."""
    q = sa.select(*FILE.columns).where(_VISIBLE)
    cursor = sa.select(files.c.seq).where(files.c.id == _p("after"))
    if not everyone:
        q = q.where(files.c.owner == _p("owner"))
        cursor = cursor.where(files.c.owner == _p("owner"))
    if purpose:
        q = q.where(files.c.purpose == _p("purpose"))
    if after:
        seq = cursor.scalar_subquery()
        q = q.where(files.c.seq > seq if ascending else files.c.seq < seq)
    return q.order_by(files.c.seq.asc() if ascending else files.c.seq.desc()).limit(_p("limit"))


class Files:
    def __init__(self, db: Database) -> None:
        self.db = db
        # A new copy, or one not `ready` whose lease ran out (with `due_only`, also only once
        # its retry time has come), now `pending` and leased to the holder.
        new = db.insert(copies).values(
            file_id=_p("file_id"), deployment_id=_p("deployment_id"), provider_file_id=None,
            state="pending", attempts=0, next_attempt_at=_p("now"), holder=_p("holder"),
            lease_until=_p("lease_until"),
        )
        takeover = sa.and_(copies.c.state != "ready", copies.c.lease_until < _p("now"))
        self._claim = {
            due_only: new.on_conflict_do_update(
                index_elements=[copies.c.file_id, copies.c.deployment_id],
                set_={"holder": new.excluded.holder, "lease_until": new.excluded.lease_until,
                      "state": "pending"},
                where=sa.and_(takeover, copies.c.next_attempt_at <= _p("now"))
                if due_only else takeover,
            )
            for due_only in (False, True)
        }
        self._mint = db.insert(files).values(
            {name: _p(name) for name in FILE.names}
        ).on_conflict_do_nothing()

    async def insert(self, row: FileRow, retry_at: float = 0.0) -> None:
        """A new file and its copies; failed copies are made again from `retry_at` on."""
        async with self.db.transaction():
            await self.db.execute(_INSERT, FILE.values(row))
            if row.copies:
                await self.db.execute_many(_INSERT_COPY, [
                    {**COPY.values(c), "file_id": row.id, "next_attempt_at": retry_at,
                     "lease_until": 0.0}
                    for c in row.copies
                ])

    async def get(self, owner: str | None, file_id: str) -> FileRow | None:
        """A file of `owner` (None: of anyone, for the master key)."""
        r = await self.db.fetch_row(
            _BY_ID if owner is None else _OWNED, {"id": file_id, "owner": owner}
        )
        return None if r is None else FILE.read(r, await self._copies(file_id))

    async def _copies(self, file_id: str) -> tuple[Copy, ...]:
        return tuple(
            COPY.read(c) for c in await self.db.fetch_all(_COPIES, {"file_id": file_id})
        )

    async def page(
        self, owner: str | None, *, purpose: str | None, after: str | None, limit: int,
        ascending: bool,
    ) -> tuple[list[FileRow], bool]:
        """A page of `owner`'s files (None: every tenant's, for the master key)."""
        rows = await self.db.fetch_all(
            _page(owner is None, bool(purpose), bool(after), ascending),
            {"owner": owner, "purpose": purpose, "after": after, "limit": limit + 1},
        )
        return [FILE.read(r) for r in rows[:limit]], len(rows) > limit

    async def mark_deleting(self, owner: str, file_id: str) -> None:
        await self.db.execute(_MARK_DELETING, {"id": file_id, "owner": owner})

    async def being_deleted(self, limit: int) -> list[FileRow]:
        """Files whose deletion started and has not finished (a crash, an upstream error)."""
        rows = await self.db.fetch_all(_BEING_DELETED, {"limit": limit})
        return [FILE.read(r, await self._copies(r["id"])) for r in rows]

    async def delete(self, owner: str, file_id: str) -> None:
        async with self.db.transaction():
            await self.db.execute(_DELETE_COPIES, {"file_id": file_id, "owner": owner})
            await self.db.execute(_DELETE, {"id": file_id, "owner": owner})

    async def delete_copy(self, file_id: str, deployment_id: str) -> None:
        await self.db.execute(_DELETE_COPY, {"file_id": file_id, "deployment_id": deployment_id})

    async def claim_copy(
        self, file_id: str, deployment_id: str, holder: str, ttl: float, *, due_only: bool
    ) -> bool:
        """Take the job of making a copy (a new one, or one not `ready` whose lease ran out;
        with `due_only`, also only once its retry time has come). True if `holder` got it."""
        now = time.time()
        one = {"file_id": file_id, "deployment_id": deployment_id}
        await self.db.execute(self._claim[due_only],
                              {**one, "holder": holder, "now": now, "lease_until": now + ttl})
        return bool(await self.db.fetch_val(_COPY_HOLDER, one) == holder)

    async def copy_made(self, file_id: str, deployment_id: str, provider_file_id: str) -> None:
        await self.db.execute(_COPY_MADE, {"file_id": file_id, "deployment_id": deployment_id,
                                           "provider_file_id": provider_file_id})

    async def copy_failed(self, file_id: str, deployment_id: str, backoff: float) -> None:
        """Mark a copy failed; it is made again after `backoff` doubled per earlier attempt
        (capped at a day)."""
        one = {"file_id": file_id, "deployment_id": deployment_id}
        attempts = (await self.db.fetch_val(_ATTEMPTS, one) or 0) + 1
        wait = min(backoff * 2 ** (attempts - 1), 86_400.0)
        await self.db.execute(_COPY_FAILED,
                              {**one, "attempts": attempts, "retry_at": time.time() + wait})

    async def copies_due(
        self, deployment_ids: Sequence[str], limit: int
    ) -> list[tuple[str, str, str]]:
        """(owner, file id, deployment id) of failed copies whose retry time has come."""
        now = time.time()
        rows = await self.db.fetch_all(
            sa.select(files.c.owner, copies.c.file_id, copies.c.deployment_id)
            .select_from(copies.join(files, files.c.id == copies.c.file_id))
            .where(
                copies.c.state != "ready",
                copies.c.next_attempt_at <= now,
                copies.c.lease_until < now,
                copies.c.deployment_id.in_(list(deployment_ids)),
            )
            .order_by(copies.c.next_attempt_at)
            .limit(limit)
        )
        return [(r["owner"], r["file_id"], r["deployment_id"]) for r in rows]

    async def inputs_created_before(self, before: int, limit: int) -> list[FileRow]:
        """Input files uploaded before `before` (unix seconds), oldest first."""
        rows = await self.db.fetch_all(_INPUTS_BEFORE, {"before": before, "limit": limit})
        return [FILE.read(r, await self._copies(r["id"])) for r in rows]

    async def expired(self, now: int, limit: int) -> list[FileRow]:
        """Files whose `expires_at` has passed, soonest first."""
        rows = await self.db.fetch_all(_EXPIRED, {"now": now, "limit": limit})
        return [FILE.read(r, await self._copies(r["id"])) for r in rows]

    async def mint_result_file(self, row: FileRow) -> str:
        """The gateway id of a batch's result file (`row.source_batch`, `row.result_kind`),
        minted on first sight. Idempotent under concurrency: the unique (batch, kind) index
        decides which mint wins; everyone returns the winner's id."""
        existing = await self.result_file_id(row.source_batch or "", row.result_kind or "")
        if existing:
            return existing
        await self.db.execute(self._mint, FILE.values(row))
        winner = await self.result_file_id(row.source_batch or "", row.result_kind or "")
        assert winner is not None
        return winner

    async def result_file_id(self, batch_id: str, kind: str) -> str | None:
        value = await self.db.fetch_val(_RESULT_ID, {"batch_id": batch_id, "kind": kind})
        return str(value) if value is not None else None
