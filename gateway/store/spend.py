"""Spend: holds on running batches, the atomic budget check, pricing a finished batch once,
and the spend logs.

A create takes a *hold* (its estimated cost, charged to its key, user and team) in the same
transaction as the budget check, after locking the key's, user's and team's rows: two creates
that share a level are serialized there and each sees the other's hold, so two creates on the
last cent cannot both pass, on any number of instances (PostgreSQL: `SELECT ... FOR UPDATE`;
SQLite: the transaction holds the database's write lock). When the batch is priced the hold
goes and the real cost is added to each level's `spend`, once (the spend log's unique
`request_id` decides which of several concurrent settlements does it).
"""

from __future__ import annotations

import calendar
import datetime
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.store.db import Database, Row
from gateway.store.schema import keys, spend_holds, spend_logs, teams, users

log = logging.getLogger("gateway.spend")

# A hold whose create never reached its batch (the instance died mid-create) stops counting
# after this long; a create takes seconds.
STALE_HOLD_SECONDS = 600.0
USER_OWNER_PREFIX = "user:"

_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d|w|mo)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _add_months(ts: int, months: int) -> int:
    t = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    month0 = t.month - 1 + months
    year, month = t.year + month0 // 12, month0 % 12 + 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return int(t.replace(year=year, month=month, day=day).timestamp())


def window_end(start: int, duration: str) -> int | None:
    """When a budget window of `duration` ('30s', '1h', '7d', '2w', '1mo') that started at
    `start` ends; None for a malformed duration (never stored: the API checks it)."""
    m = _DURATION.match(duration)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    if unit == "mo":
        return _add_months(start, n)
    return start + n * _SECONDS[unit]


def current_window(
    spend: float, reset_at: int | None, duration: str | None, now: float
) -> tuple[float, int | None]:
    """The spend and reset time as of `now`: once `reset_at` has passed the window starts
    over (spend 0) and the next reset is a whole number of durations after the last one, so
    every instance computes the same windows."""
    if reset_at is None or duration is None or now < reset_at:
        return spend, reset_at
    step = window_end(reset_at, duration)
    if step is None or step <= reset_at:
        return spend, reset_at
    if not duration.endswith("mo"):
        width = step - reset_at
        return 0.0, reset_at + (int((now - reset_at) // width) + 1) * width
    while reset_at <= now:
        reset_at = _add_months(reset_at, int(duration[:-2]))
    return 0.0, reset_at


@dataclass(frozen=True)
class LevelBudget:
    """One level (key, user or team) as a budget check sees it."""

    level: str  # "key" | "user" | "team"
    id: str
    spend: float  # priced finished batches in the current window
    reserved: float  # holds of its batches not priced yet
    max_budget: float | None
    budget_reset_at: int | None

    @property
    def exceeded(self) -> bool:
        return self.max_budget is not None and self.spend + self.reserved >= self.max_budget


@dataclass(frozen=True)
class Cost:
    """A batch's cost worked out by the caller, in USD; None: unpriced."""

    usd: float | None


@dataclass(frozen=True)
class Charge:
    """Whom a batch is charged to."""

    api_key: str | None
    user_id: str | None
    team_id: str | None


# (table, its id column, the holds' column naming it), in the order rows are locked.
_LEVELS: tuple[tuple[str, sa.Table, sa.Column[Any], sa.Column[Any]], ...] = (
    ("key", keys, keys.c.id, spend_holds.c.api_key),
    ("user", users, users.c.user_id, spend_holds.c.user_id),
    ("team", teams, teams.c.team_id, spend_holds.c.team_id),
)


def _ids(charge: Charge) -> tuple[str | None, ...]:
    return charge.api_key, charge.user_id, charge.team_id


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Spend:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._log_insert = db.insert(spend_logs).values(
            {c.name: sa.bindparam(c.name) for c in spend_logs.c if c.name != "seq"}
        ).on_conflict_do_nothing(index_elements=[spend_logs.c.request_id]) \
            .returning(spend_logs.c.seq)

    # -- budgets and holds ---------------------------------------------------------------------

    async def _levels(self, charge: Charge, now: float) -> list[LevelBudget]:
        """Each level's budget, its row locked until the transaction ends (key, user, team:
        always in that order, so two transactions never wait on each other in a cycle)."""
        out: list[LevelBudget] = []
        live = sa.or_(spend_holds.c.batch_id.is_not(None),
                      spend_holds.c.created_at > now - STALE_HOLD_SECONDS)
        for (name, table, id_column, hold_column), level_id in zip(
                _LEVELS, _ids(charge), strict=True):
            if level_id is None:
                continue
            r = await self.db.fetch_row(
                sa.select(table.c.spend, table.c.max_budget, table.c.budget_duration,
                          table.c.budget_reset_at)
                .where(id_column == level_id).with_for_update())
            if r is None:
                continue
            reserved = await self.db.fetch_val(
                sa.select(sa.func.coalesce(sa.func.sum(spend_holds.c.estimate), 0.0))
                .where(hold_column == level_id, live))
            spend, reset_at = current_window(float(r["spend"] or 0.0), r["budget_reset_at"],
                                             r["budget_duration"], now)
            out.append(LevelBudget(name, level_id, spend, float(reserved or 0.0),
                                   r["max_budget"], reset_at))
        return out

    async def hold(self, hold_id: str, charge: Charge, estimate: float) -> LevelBudget | None:
        """Check every level's budget and, if none is spent, hold `estimate` against them;
        the level that is spent otherwise (nothing held)."""
        now = time.time()
        async with self.db.transaction():
            for budget in await self._levels(charge, now):
                if budget.exceeded:
                    return budget
            await self.db.execute(spend_holds.insert().values(
                hold_id=hold_id, batch_id=None, api_key=charge.api_key, user_id=charge.user_id,
                team_id=charge.team_id, estimate=estimate, input_price=None, output_price=None,
                created_at=now))
            # Holds of creates that died halfway no longer count; drop them now and then.
            await self.db.execute(spend_holds.delete().where(
                spend_holds.c.batch_id.is_(None),
                spend_holds.c.created_at < now - STALE_HOLD_SECONDS))
        return None

    async def release(self, hold_id: str) -> None:
        """The create failed: nothing runs, nothing is held."""
        await self.db.execute(spend_holds.delete().where(spend_holds.c.hold_id == hold_id))

    async def attach(self, hold_id: str, batch_id: str, estimate: float,
                     input_price: float | None, output_price: float | None) -> None:
        """The create placed batch `batch_id`: the hold now waits for its end, to be priced
        at these prices (per token; None: unpriced)."""
        async with self.db.transaction():
            priced = await self.db.fetch_val(
                sa.select(spend_logs.c.seq).where(spend_logs.c.request_id == batch_id))
            if priced is not None:  # already seen finished (by a poller) before this
                await self.release(hold_id)
                return
            await self.db.execute(
                spend_holds.update().where(spend_holds.c.hold_id == hold_id).values(
                    batch_id=batch_id, estimate=estimate, input_price=input_price,
                    output_price=output_price))

    # -- pricing a finished batch --------------------------------------------------------------

    async def settle(
        self, *, batch_id: str, owner: str, model_group: str, created_at: float,
        status: str, usage: dict[str, Any], cost: Cost | None = None,
    ) -> bool:
        """Price the finished batch `batch_id` and add its cost to its key, user and team,
        once: False if it was priced before (by this or another instance). The price is the
        one held at create, unless `cost` is given (a batch that ran on several deployments,
        each at its own price)."""
        now = time.time()
        async with self.db.transaction():
            hold = await self.db.fetch_row(
                sa.select(spend_holds).where(spend_holds.c.batch_id == batch_id)
                .with_for_update())
            charge = self._charge(hold, owner)
            input_tokens = _tokens(usage.get("input_tokens"))
            output_tokens = _tokens(usage.get("output_tokens"))
            usd: float | None = None
            if cost is not None:
                usd = cost.usd
            elif hold is not None and hold["input_price"] is not None \
                    and hold["output_price"] is not None \
                    and input_tokens is not None and output_tokens is not None:
                usd = input_tokens * hold["input_price"] + output_tokens * hold["output_price"]
            seq = await self.db.fetch_val(self._log_insert, {
                "request_id": batch_id, "api_key": charge.api_key, "user_id": charge.user_id,
                "team_id": charge.team_id, "model_group": model_group, "status": status,
                "prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                "total_tokens": _tokens(usage.get("total_tokens")), "spend": usd,
                "start_time": float(created_at), "end_time": now,
            })
            if seq is None:
                return False
            if hold is not None:
                await self.db.execute(
                    spend_holds.delete().where(spend_holds.c.hold_id == hold["hold_id"]))
            if usd:
                await self._add(charge, usd, now)
        if usd is None:
            priced = hold is not None and hold["input_price"] is not None
            log.warning("batch %s (model group %r) finished unpriced: its cost is recorded as "
                        "null (%s)", batch_id, model_group,
                        "its provider reported no tokens" if priced else
                        "no batch price known for its deployment: set model_info."
                        "input_cost_per_token_batches and output_cost_per_token_batches")
        return True

    @staticmethod
    def _charge(hold: Row | None, owner: str) -> Charge:
        if hold is not None:
            return Charge(hold["api_key"], hold["user_id"], hold["team_id"])
        # A batch created before spend tracking: its owner is all that is known.
        if owner.startswith(USER_OWNER_PREFIX):
            return Charge(None, owner[len(USER_OWNER_PREFIX):], None)
        return Charge(owner if owner.startswith("key_") else None, None, None)

    async def _add(self, charge: Charge, cost: float, now: float) -> None:
        for (_, table, id_column, _), level_id in zip(_LEVELS, _ids(charge), strict=True):
            if level_id is None:
                continue
            r = await self.db.fetch_row(
                sa.select(table.c.spend, table.c.budget_duration, table.c.budget_reset_at)
                .where(id_column == level_id).with_for_update())
            if r is None:
                continue  # deleted meanwhile
            spend, reset_at = current_window(float(r["spend"] or 0.0), r["budget_reset_at"],
                                             r["budget_duration"], now)
            await self.db.execute(table.update().where(id_column == level_id)
                                  .values(spend=spend + cost, budget_reset_at=reset_at))

    # -- spend logs ----------------------------------------------------------------------------

    async def logs(
        self, *, api_key: str | None, user_id: str | None, team_id: str | None,
        request_id: str | None, start: float | None, end: float | None, offset: int,
        limit: int,
        owner_key: str | None = None, owner_user: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of spend logs (newest first) and how many match. `owner_key` /
        `owner_user` restrict to one caller's (a virtual key's view)."""
        c = spend_logs.c
        where: list[Any] = [col == v for col, v in (
            (c.api_key, api_key), (c.user_id, user_id), (c.team_id, team_id),
            (c.request_id, request_id)) if v is not None]
        if start is not None:
            where.append(c.start_time >= start)
        if end is not None:
            where.append(c.start_time < end)
        if owner_user is not None:
            where.append(c.user_id == owner_user)
        elif owner_key is not None:
            where.append(c.api_key == owner_key)
        rows = await self.db.fetch_all(
            sa.select(spend_logs).where(*where).order_by(c.start_time.desc(), c.seq.desc())
            .offset(offset).limit(limit))
        total = await self.db.fetch_val(
            sa.select(sa.func.count()).select_from(spend_logs).where(*where))
        return [dict(r) for r in rows], int(total)
