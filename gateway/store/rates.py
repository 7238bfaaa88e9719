"""Requests per minute, counted in the database so that every instance sees one count.

A fixed window per principal and minute: one statement per request adds 1 to each of the
caller's limited principals (key, user, team) unless that principal already reached its limit,
and answers which ones it added to. The upsert is atomic per row on both databases, so two
instances can never both take a window's last request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import rate_windows

WINDOW_SECONDS = 60


class RateWindows:
    def __init__(self, db: Database) -> None:
        self.db = db
        # One statement per number of principals (1 to 3), compiled once each.
        self._count: dict[int, Any] = {}
        self._swept = 0

    def _statement(self, n: int) -> Any:
        stmt = self._count.get(n)
        if stmt is None:
            ins = self.db.insert(rate_windows).values([
                {"principal": sa.bindparam(f"p{i}"), "window_start": sa.bindparam("w"),
                 "requests": 1, "rpm_limit": sa.bindparam(f"l{i}")}
                for i in range(n)
            ])
            stmt = ins.on_conflict_do_update(
                index_elements=[rate_windows.c.principal, rate_windows.c.window_start],
                set_={"requests": rate_windows.c.requests + 1,
                      "rpm_limit": ins.excluded.rpm_limit},
                where=rate_windows.c.requests < ins.excluded.rpm_limit,
            ).returning(rate_windows.c.principal)
            self._count[n] = stmt
        return stmt

    async def take(self, limits: Sequence[tuple[str, int]], window_start: int) -> set[str]:
        """Count one request for each (principal, rpm_limit ≥ 1) in the window starting at
        `window_start`; the principals that had room (the others are at their limit)."""
        values: dict[str, Any] = {"w": window_start}
        for i, (principal, limit) in enumerate(limits):
            values[f"p{i}"] = principal
            values[f"l{i}"] = limit
        rows = await self.db.fetch_all(self._statement(len(limits)), values)
        if window_start > self._swept:
            # Once a minute per process: windows that ended are of no use to anyone.
            self._swept = window_start
            await self.db.execute(rate_windows.delete().where(
                rate_windows.c.window_start < window_start - WINDOW_SECONDS))
        return {r["principal"] for r in rows}
