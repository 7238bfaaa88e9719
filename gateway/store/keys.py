"""Virtual keys (stored by hash), and the lookup every request makes: a key and, for a
retrieve, one of its batches, in one query."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.store.batches import BATCH, BatchRow
from gateway.store.db import Database
from gateway.store.schema import Columns, batches, insert, keys


@dataclass(frozen=True)
class KeyRow:
    id: str
    key_alias: str | None
    team_id: str | None
    user_id: str | None
    models: list[str]
    metadata: dict[str, Any]
    created_at: int
    expires_at: int | None


KEY = Columns(KeyRow, keys)

_INSERT = insert(keys, (*KEY.names, "key_hash"))
_BY_HASH = sa.select(*KEY.columns).where(keys.c.key_hash == sa.bindparam("key_hash"))
_BY_ID = sa.select(*KEY.columns).where(keys.c.id == sa.bindparam("id"))
_PAGE = (
    sa.select(*KEY.columns).order_by(keys.c.created_at.desc(), keys.c.id)
    .offset(sa.bindparam("offset")).limit(sa.bindparam("limit"))
)
_COUNT = sa.select(sa.func.count()).select_from(keys)

# A key and one of its batches (`b_`-prefixed columns, NULL when it has none by that id) in one
# round trip: the whole database work of a retrieve.
_k, _b = keys.alias("k"), batches.alias("b")
_JOINED_BATCH, _b_columns = BATCH.labeled(_b, "b_")
_KEY_AND_BATCH = (
    sa.select(*(_k.c[name] for name in KEY.names), *_b_columns)
    .select_from(_k.outerjoin(
        _b, sa.and_(_b.c.id == sa.bindparam("batch_id"), _b.c.owner == _k.c.id)
    ))
    .where(_k.c.key_hash == sa.bindparam("key_hash"))
)


class Keys:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        key_hash: str,
        *,
        models: list[str],
        key_alias: str | None,
        team_id: str | None,
        user_id: str | None,
        metadata: dict[str, Any],
        expires_at: int | None,
    ) -> KeyRow:
        row = KeyRow(
            id="key_" + key_hash[:24], key_alias=key_alias, team_id=team_id, user_id=user_id,
            models=models, metadata=metadata, created_at=int(time.time()), expires_at=expires_at,
        )
        await self.db.execute(_INSERT, {**KEY.values(row), "key_hash": key_hash})
        return row

    async def by_hash(self, key_hash: str) -> KeyRow | None:
        r = await self.db.lookup(_BY_HASH, {"key_hash": key_hash})
        return KEY.read(r) if r else None

    async def and_batch(
        self, key_hash: str, batch_id: str
    ) -> tuple[KeyRow | None, BatchRow | None]:
        r = await self.db.lookup(_KEY_AND_BATCH, {"batch_id": batch_id, "key_hash": key_hash})
        if r is None:
            return None, None
        return KEY.read(r), (None if r["b_id"] is None else _JOINED_BATCH.read(r))

    async def by_id(self, key_id: str) -> KeyRow | None:
        r = await self.db.fetch_row(_BY_ID, {"id": key_id})
        return KEY.read(r) if r else None

    async def page(self, offset: int, limit: int) -> tuple[list[KeyRow], int]:
        rows = await self.db.fetch_all(_PAGE, {"offset": offset, "limit": limit})
        total = await self.db.fetch_val(_COUNT)
        return [KEY.read(r) for r in rows], int(total)

    async def delete(self, key_ids: Sequence[str]) -> list[str]:
        async with self.db.transaction():
            found = await self.db.fetch_all(
                sa.select(keys.c.id).where(keys.c.id.in_(list(key_ids)))
            )
            ids_found = [r["id"] for r in found]
            if ids_found:
                await self.db.execute(keys.delete().where(keys.c.id.in_(ids_found)))
        return ids_found
