"""Virtual keys (stored by hash), and the lookup every request makes: a key with what its
user and team allow and, for a retrieve, one of its owner's batches, in one query."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa

from gateway.store.batches import BATCH, BatchRow
from gateway.store.db import Database, Row
from gateway.store.schema import Columns, batches, insert, keys, teams, users

USER_OWNER_PREFIX = "user:"


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
    blocked: bool = False
    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    spend: float = 0.0  # of the current budget window (gateway/store/spend.py)
    budget_reset_at: int | None = None

    @property
    def owner(self) -> str:
        """Who its files and batches belong to: its user (so every key of the user reaches
        them), else the key itself. `_OWNER` is the same in SQL."""
        return USER_OWNER_PREFIX + self.user_id if self.user_id else self.id


@dataclass(frozen=True)
class Level:
    """What a key's user or team allows: model groups (empty: all), whether it is blocked,
    its requests per minute."""

    id: str
    models: list[str]
    blocked: bool
    rpm_limit: int | None = None


@dataclass(frozen=True)
class KeyAccess:
    """A key and its user and team (None: it has none, or the row is gone)."""

    key: KeyRow
    user: Level | None
    team: Level | None


KEY = Columns(KeyRow, keys)

_p = sa.bindparam
_INSERT = insert(keys, (*KEY.names, "key_hash"))
_BY_HASH = sa.select(*KEY.columns).where(keys.c.key_hash == _p("key_hash"))
_BY_ID = sa.select(*KEY.columns).where(keys.c.id == _p("id"))

# A key, its user's and team's models and blocked flags, and (for a retrieve) one batch of
# the key's owner (`b_`-prefixed columns, NULL when it has none by that id): one round trip,
# the whole database work of a request.
_k, _u, _t, _b = keys.alias("k"), users.alias("u"), teams.alias("t"), batches.alias("b")
_OWNER = sa.func.coalesce(sa.literal_column("'user:'", sa.String) + _k.c.user_id, _k.c.id)
_ACCESS = [
    *(_k.c[name] for name in KEY.names),
    _u.c.user_id.label("u_id"), _u.c.models.label("u_models"), _u.c.blocked.label("u_blocked"),
    _t.c.team_id.label("t_id"), _t.c.models.label("t_models"), _t.c.blocked.label("t_blocked"),
    _u.c.rpm_limit.label("u_rpm_limit"), _t.c.rpm_limit.label("t_rpm_limit"),
]
_WITH_LEVELS = _k.outerjoin(_u, _u.c.user_id == _k.c.user_id) \
    .outerjoin(_t, _t.c.team_id == _k.c.team_id)
_ACCESS_BY_HASH = sa.select(*_ACCESS).select_from(_WITH_LEVELS) \
    .where(_k.c.key_hash == _p("key_hash"))
_JOINED_BATCH, _b_columns = BATCH.labeled(_b, "b_")
_ACCESS_AND_BATCH = (
    sa.select(*_ACCESS, *_b_columns)
    .select_from(_WITH_LEVELS.outerjoin(
        _b, sa.and_(_b.c.id == _p("batch_id"), _b.c.owner == _OWNER)
    ))
    .where(_k.c.key_hash == _p("key_hash"))
)

_unjson = msgspec.json.decode


def _level(r: Row, prefix: str) -> Level | None:
    level_id = r[prefix + "id"]
    if level_id is None:
        return None
    return Level(level_id, _unjson(r[prefix + "models"]), bool(r[prefix + "blocked"]),
                 r[prefix + "rpm_limit"])


def _access(r: Row) -> KeyAccess:
    return KeyAccess(KEY.read(r), _level(r, "u_"), _level(r, "t_"))


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
        blocked: bool = False,
        max_budget: float | None = None,
        budget_duration: str | None = None,
        rpm_limit: int | None = None,
    ) -> KeyRow:
        row = KeyRow(
            id="key_" + key_hash[:24], key_alias=key_alias, team_id=team_id, user_id=user_id,
            models=models, metadata=metadata, created_at=int(time.time()), expires_at=expires_at,
            blocked=blocked, max_budget=max_budget, budget_duration=budget_duration,
            rpm_limit=rpm_limit,
        )
        await self.db.execute(_INSERT, {**KEY.values(row), "key_hash": key_hash})
        return row

    async def hash_exists(self, key_hash: str) -> bool:
        return await self.db.lookup(_BY_HASH, {"key_hash": key_hash}) is not None

    async def by_hash(self, key_hash: str) -> KeyRow | None:
        r = await self.db.lookup(_BY_HASH, {"key_hash": key_hash})
        return KEY.read(r) if r else None

    async def access(self, key_hash: str) -> KeyAccess | None:
        r = await self.db.lookup(_ACCESS_BY_HASH, {"key_hash": key_hash})
        return _access(r) if r else None

    async def and_batch(
        self, key_hash: str, batch_id: str
    ) -> tuple[KeyAccess | None, BatchRow | None]:
        r = await self.db.lookup(_ACCESS_AND_BATCH, {"batch_id": batch_id, "key_hash": key_hash})
        if r is None:
            return None, None
        return _access(r), (None if r["b_id"] is None else _JOINED_BATCH.read(r))

    async def by_id(self, key_id: str) -> KeyRow | None:
        r = await self.db.fetch_row(_BY_ID, {"id": key_id})
        return KEY.read(r) if r else None

    async def by_alias(self, aliases: Sequence[str]) -> list[KeyRow]:
        rows = await self.db.fetch_all(
            sa.select(*KEY.columns).where(keys.c.key_alias.in_(list(aliases))))
        return [KEY.read(r) for r in rows]

    async def page(
        self, offset: int, limit: int, *, team_id: str | None = None,
        user_id: str | None = None, key_alias: str | None = None,
    ) -> tuple[list[KeyRow], int]:
        where = [column == value for column, value in (
            (keys.c.team_id, team_id), (keys.c.user_id, user_id), (keys.c.key_alias, key_alias),
        ) if value is not None]
        rows = await self.db.fetch_all(
            sa.select(*KEY.columns).where(*where)
            .order_by(keys.c.created_at.desc(), keys.c.id).offset(offset).limit(limit)
        )
        total = await self.db.fetch_val(sa.select(sa.func.count()).select_from(keys).where(*where))
        return [KEY.read(r) for r in rows], int(total)

    async def update(self, key_id: str, values: dict[str, Any]) -> KeyRow | None:
        if values:
            await self.db.execute(
                keys.update().where(keys.c.id == key_id).values(**KEY.encode(dict(values)))
            )
        return await self.by_id(key_id)

    async def rehash(self, key_id: str, key_hash: str) -> KeyRow | None:
        """A new secret for the key `key_id`: same id, owner and settings; the old one stops
        working with this statement."""
        await self.db.execute(
            keys.update().where(keys.c.id == key_id).values(key_hash=key_hash))
        return await self.by_id(key_id)

    async def delete(self, key_ids: Sequence[str]) -> list[str]:
        async with self.db.transaction():
            found = await self.db.fetch_all(
                sa.select(keys.c.id).where(keys.c.id.in_(list(key_ids)))
            )
            ids_found = [r["id"] for r in found]
            if ids_found:
                await self.db.execute(keys.delete().where(keys.c.id.in_(ids_found)))
        return ids_found
