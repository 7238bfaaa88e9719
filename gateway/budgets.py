"""`max_budget` at batch create: a key, its user and its team each stop creating batches once
their spend reaches their budget.

What counts against a budget: the cost of the level's priced finished batches in the current
window (`budget_duration`), plus a *hold* for each of its batches still running: an estimate
taken when the batch is created (the input's size / 4 tokens at the deployment's input price:
rough, and blind to output) and replaced by the real cost when the batch is priced. A create
passes while spend + holds < max_budget, so the batch that crosses the budget is allowed (as
in LiteLLM) and every create after it is refused. The check and the hold are one transaction
on the level rows (gateway/store/spend.py), so concurrent creates on any number of instances
see each other's holds.
"""

from __future__ import annotations

import datetime
import math
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from gateway.auth import Principal
from gateway.errors import BadRequest
from gateway.pricing import prices_for
from gateway.runtime import Gateway
from gateway.store import Charge, FileRow, LevelBudget
from gateway.store.spend import current_window
from gateway.types import TERMINAL

BYTES_PER_TOKEN = 4


def iso(ts: float | None) -> str | None:
    """A timestamp as LiteLLM shows dates: ISO 8601, UTC."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


class Limited(Protocol):
    """A key, user or team row: what it may spend and how often it may call."""

    @property
    def max_budget(self) -> float | None: ...
    @property
    def budget_duration(self) -> str | None: ...
    @property
    def rpm_limit(self) -> int | None: ...
    @property
    def spend(self) -> float: ...
    @property
    def budget_reset_at(self) -> int | None: ...


def limit_fields(row: Limited) -> dict[str, Any]:
    """A key's, user's or team's limits and spend as its info and list answers show them: the
    current window's spend (a window that has ended shows 0 and the next reset, before
    anything is charged to it)."""
    spend, reset_at = current_window(row.spend, row.budget_reset_at, row.budget_duration,
                                     time.time())
    return {"max_budget": row.max_budget, "budget_duration": row.budget_duration,
            "rpm_limit": row.rpm_limit, "spend": spend, "budget_reset_at": iso(reset_at)}


class BudgetExceeded(BadRequest):
    def __init__(self, budget: LevelBudget, who: str) -> None:
        held = f" + ${budget.reserved:.6f} held by running batches" if budget.reserved else ""
        resets = f"; it resets at {iso(budget.budget_reset_at)}" if budget.budget_reset_at \
            else ""
        super().__init__(
            f"Budget exceeded for this {who}: spend ${budget.spend:.6f}{held} of max_budget "
            f"${budget.max_budget or 0:.6f}{resets}.",
            code="budget_exceeded",
        )
        self.budget = budget

    def body(self) -> bytes:
        b = self.budget
        figures = {"level": b.level, "id": b.id, "spend": b.spend, "reserved": b.reserved,
                   "max_budget": b.max_budget, "budget_reset_at": iso(b.budget_reset_at)}
        return msgspec.json.encode({"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code,
            "budget": figures,
        }})


def _who(level: LevelBudget) -> str:
    return "key" if level.level == "key" else f"key's {level.level} {level.id!r}"


@dataclass
class Hold:
    """A create's hold on its budgets, until the batch is placed (or the create fails)."""

    gw: Gateway
    hold_id: str
    owner: str
    tokens: int  # the input's estimated tokens

    async def placed(self, create: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """Await the create; on success the hold waits for the batch's price, else it goes."""
        try:
            obj = await create
        except BaseException:
            await self.gw.store.spend.release(self.hold_id)
            raise
        row = await self.gw.store.get_batch(self.owner, str(obj.get("id")))
        deployment = self.gw.deployments.get(row.deployment_id) if row else None
        if row is None or deployment is None:
            await self.gw.store.spend.release(self.hold_id)
            return obj
        prices = prices_for(deployment)
        await self.gw.store.spend.attach(
            self.hold_id, row.id, self.tokens * prices.input if prices else 0.0,
            prices.input if prices else None, prices.output if prices else None)
        if row.status in TERMINAL:  # finished in its create answer: price it now
            await self.gw.store.record_usage(row, row.object)
        return obj


async def admit(gw: Gateway, principal: Principal, file: FileRow, groups: list[str]) -> Hold:
    """Hold an estimate of the batch's cost against the caller's key, user and team, or
    answer 400 `budget_exceeded` naming the level that is spent."""
    key = principal.key
    tokens = math.ceil(file.bytes / BYTES_PER_TOKEN)
    hold = Hold(gw, "hold_" + uuid.uuid4().hex, principal.owner, tokens)
    # Until a deployment is chosen: the dearest input price among those that may run it.
    prices = [p.input for g in groups for d in gw.groups.get(g, [])
              if (p := prices_for(d)) is not None]
    charge = Charge(key.id if key else None, key.user_id if key else None,
                    key.team_id if key else None)
    spent = await gw.store.spend.hold(hold.hold_id, charge,
                                      tokens * max(prices) if prices else 0.0)
    if spent is not None:
        raise BudgetExceeded(spent, _who(spent))
    return hold
