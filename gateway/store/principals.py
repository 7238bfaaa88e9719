"""Users and teams (LiteLLM's admin objects) and team membership. Their `models` narrow what
their keys may use and `blocked` stops their keys; see `Keys.access` for the one query that
reads them on every request."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import Columns, insert, keys, team_members, teams, users


@dataclass(frozen=True)
class UserRow:
    user_id: str
    user_email: str | None
    models: list[str]
    metadata: dict[str, Any]
    blocked: bool
    max_budget: float | None
    budget_duration: str | None
    rpm_limit: int | None
    created_at: int
    spend: float = 0.0  # of the current budget window (gateway/store/spend.py)
    budget_reset_at: int | None = None
    teams: list[str] = field(default_factory=list)  # rows of gateway_team_members


@dataclass(frozen=True)
class TeamRow:
    team_id: str
    team_alias: str | None
    models: list[str]
    metadata: dict[str, Any]
    blocked: bool
    max_budget: float | None
    budget_duration: str | None
    rpm_limit: int | None
    created_at: int
    spend: float = 0.0
    budget_reset_at: int | None = None
    members: list[tuple[str, str]] = field(default_factory=list)  # (user_id, role)


USER = Columns(UserRow, users)
TEAM = Columns(TeamRow, teams)

_p = sa.bindparam
_INSERT_USER = insert(users, USER.names)
_INSERT_TEAM = insert(teams, TEAM.names)
_INSERT_MEMBER = insert(team_members, ("team_id", "user_id", "role"))


async def _insert_new(db: Database, key: sa.Column[Any], value: str, insert_row: Any,
                      values: dict[str, Any]) -> bool:
    """Insert a row unless one with `key == value` exists; True if it was inserted."""
    async with db.transaction():
        if await db.fetch_val(sa.select(key).where(key == value)) is not None:
            return False
        await db.execute(insert_row, values)
    return True


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, row: UserRow) -> bool:
        """Add `row`; False if that user_id exists."""
        return await _insert_new(self.db, users.c.user_id, row.user_id, _INSERT_USER,
                                 USER.values(row))

    async def ensure(self, user_id: str) -> None:
        """The user `user_id`, created with no restriction if missing (as LiteLLM does for a
        key's `user_id`)."""
        stmt = self.db.insert(users).values(**USER.values(UserRow(
            user_id=user_id, user_email=None, models=[], metadata={}, blocked=False,
            max_budget=None, budget_duration=None, rpm_limit=None, created_at=int(time.time()),
        ))).on_conflict_do_nothing(index_elements=[users.c.user_id])
        await self.db.execute(stmt)

    async def get(self, user_id: str) -> UserRow | None:
        rows = await self.page(user_ids=[user_id], offset=0, limit=1)
        return rows[0][0] if rows[0] else None

    async def by_email(self, email: str) -> UserRow | None:
        uid = await self.db.fetch_val(
            sa.select(users.c.user_id).where(users.c.user_email == email)
            .order_by(users.c.created_at).limit(1)
        )
        return None if uid is None else await self.get(uid)

    async def page(
        self, *, user_ids: Sequence[str] | None = None, team_id: str | None = None,
        offset: int, limit: int,
    ) -> tuple[list[UserRow], int]:
        where: list[Any] = []
        if user_ids:
            where.append(users.c.user_id.in_(list(user_ids)))
        if team_id is not None:
            where.append(users.c.user_id.in_(
                sa.select(team_members.c.user_id).where(team_members.c.team_id == team_id)))
        rows = await self.db.fetch_all(
            sa.select(*USER.columns).where(*where)
            .order_by(users.c.created_at.desc(), users.c.user_id).offset(offset).limit(limit)
        )
        total = await self.db.fetch_val(sa.select(sa.func.count()).select_from(users).where(*where))
        ids = [r["user_id"] for r in rows]
        memberships: dict[str, list[str]] = {i: [] for i in ids}
        if ids:
            for m in await self.db.fetch_all(
                sa.select(team_members.c.user_id, team_members.c.team_id)
                .where(team_members.c.user_id.in_(ids)).order_by(team_members.c.team_id)
            ):
                memberships[m["user_id"]].append(m["team_id"])
        return [USER.read(r, memberships[r["user_id"]]) for r in rows], int(total)

    async def update(self, user_id: str, values: dict[str, Any]) -> None:
        if values:
            await self.db.execute(
                users.update().where(users.c.user_id == user_id).values(**USER.encode(values))
            )

    async def delete(self, user_ids: Sequence[str]) -> list[str]:
        """Delete these users, their keys and memberships; their files and batches stay
        (the master key still reads them). The ids that existed."""
        async with self.db.transaction():
            found = [r["user_id"] for r in await self.db.fetch_all(
                sa.select(users.c.user_id).where(users.c.user_id.in_(list(user_ids))))]
            if found:
                await self.db.execute(keys.delete().where(keys.c.user_id.in_(found)))
                await self.db.execute(
                    team_members.delete().where(team_members.c.user_id.in_(found)))
                await self.db.execute(users.delete().where(users.c.user_id.in_(found)))
        return found


class Teams:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, row: TeamRow) -> bool:
        """Add `row`; False if that team_id exists."""
        return await _insert_new(self.db, teams.c.team_id, row.team_id, _INSERT_TEAM,
                                 TEAM.values(row))

    async def exist(self, team_ids: Sequence[str]) -> set[str]:
        if not team_ids:
            return set()
        rows = await self.db.fetch_all(
            sa.select(teams.c.team_id).where(teams.c.team_id.in_(list(team_ids))))
        return {r["team_id"] for r in rows}

    async def get(self, team_id: str) -> TeamRow | None:
        rows = await self.find(team_ids=[team_id])
        return rows[0] if rows else None

    async def find(
        self, *, team_ids: Sequence[str] | None = None, user_id: str | None = None
    ) -> list[TeamRow]:
        where: list[Any] = []
        if team_ids is not None:
            where.append(teams.c.team_id.in_(list(team_ids)))
        if user_id is not None:
            where.append(teams.c.team_id.in_(
                sa.select(team_members.c.team_id).where(team_members.c.user_id == user_id)))
        rows = await self.db.fetch_all(
            sa.select(*TEAM.columns).where(*where)
            .order_by(teams.c.created_at.desc(), teams.c.team_id)
        )
        ids = [r["team_id"] for r in rows]
        members: dict[str, list[tuple[str, str]]] = {i: [] for i in ids}
        if ids:
            for m in await self.db.fetch_all(
                sa.select(team_members.c.team_id, team_members.c.user_id, team_members.c.role)
                .where(team_members.c.team_id.in_(ids)).order_by(team_members.c.user_id)
            ):
                members[m["team_id"]].append((m["user_id"], m["role"]))
        return [TEAM.read(r, members[r["team_id"]]) for r in rows]

    async def update(self, team_id: str, values: dict[str, Any]) -> None:
        if values:
            await self.db.execute(
                teams.update().where(teams.c.team_id == team_id).values(**TEAM.encode(values))
            )

    async def delete(self, team_ids: Sequence[str]) -> list[str]:
        """Delete these teams, their keys and memberships (as LiteLLM does); the ids found."""
        async with self.db.transaction():
            found = sorted(await self.exist(team_ids))
            if found:
                await self.db.execute(keys.delete().where(keys.c.team_id.in_(found)))
                await self.db.execute(
                    team_members.delete().where(team_members.c.team_id.in_(found)))
                await self.db.execute(teams.delete().where(teams.c.team_id.in_(found)))
        return found

    async def add_member(self, team_id: str, user_id: str, role: str) -> None:
        async with self.db.transaction():
            await self.db.execute(team_members.delete().where(
                team_members.c.team_id == team_id, team_members.c.user_id == user_id))
            await self.db.execute(_INSERT_MEMBER,
                                  {"team_id": team_id, "user_id": user_id, "role": role})

    async def remove_member(self, team_id: str, user_id: str) -> bool:
        async with self.db.transaction():
            was = await self.db.fetch_val(sa.select(team_members.c.user_id).where(
                team_members.c.team_id == team_id, team_members.c.user_id == user_id))
            await self.db.execute(team_members.delete().where(
                team_members.c.team_id == team_id, team_members.c.user_id == user_id))
        return was is not None

    async def set_memberships(self, user_id: str, team_ids: Sequence[str]) -> None:
        """`user_id` is a member (role `user`) of exactly these teams; roles of teams kept."""
        async with self.db.transaction():
            current = {r["team_id"] for r in await self.db.fetch_all(
                sa.select(team_members.c.team_id).where(team_members.c.user_id == user_id))}
            gone = current - set(team_ids)
            if gone:
                await self.db.execute(team_members.delete().where(
                    team_members.c.user_id == user_id, team_members.c.team_id.in_(sorted(gone))))
            for team_id in team_ids:
                if team_id not in current:
                    await self.db.execute(_INSERT_MEMBER,
                                          {"team_id": team_id, "user_id": user_id, "role": "user"})
