"""Persistence: every table and every query of the gateway, on SQLite or PostgreSQL.

`Store` is the one object the rest of the gateway uses; it hands each call to a repository
(`keys`, `files`, `batches`, `state`) over one `Database` (`db`: asyncpg or aiosqlite). The
tables and migrations are in `schema`. Every lookup of a file or batch takes the owner, so
another key's id is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store import schema
from gateway.store.batches import Batches, BatchRow
from gateway.store.db import Database, driver_url
from gateway.store.files import Copy, FileRow, Files
from gateway.store.idempotency import IdempotencyKeys
from gateway.store.intents import Intents
from gateway.store.keys import KeyAccess, KeyRow, Keys, Level
from gateway.store.parts import Parts
from gateway.store.principals import TeamRow, Teams, UserRow, Users
from gateway.store.rates import RateWindows
from gateway.store.runs import Runs
from gateway.store.spend import Charge, Cost, LevelBudget, Spend
from gateway.store.state import AdapterState
from gateway.store.webhooks import DeliveryRow, WebhookOutbox

__all__ = ["BatchRow", "Charge", "Copy", "Cost", "Database", "FileRow", "KeyAccess", "KeyRow",
           "Level", "LevelBudget", "Store", "TeamRow", "UserRow", "driver_url"]


class Store:
    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.url = self.db.url
        self.is_postgres = self.db.is_postgres
        self.dialect: sa.Dialect = self.db.dialect
        self.keys = Keys(self.db)
        self.files = Files(self.db)
        self.batches = Batches(self.db)
        self.state = AdapterState(self.db)
        self.users = Users(self.db)
        self.teams = Teams(self.db)
        self.webhooks = WebhookOutbox(self.db)
        self.spend = Spend(self.db)
        self.rates = RateWindows(self.db)
        self.runs = Runs(self.db)  # batches the gateway runs itself (gateway/selfrun)
        self.idempotency = IdempotencyKeys(self.db)
        self.intents = Intents(self.db)
        self.parts = Parts(self.db)  # split batches (gateway/split)

    async def connect(self) -> None:
        await self.db.connect()
        await self.migrate()

    async def disconnect(self) -> None:
        await self.db.disconnect()

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> None:
        await schema.migrate(self.db)

    async def create(self, *tables: sa.Table) -> None:
        await schema.create(self.db, *tables)

    async def columns(self, table: str) -> set[str]:
        return await schema.columns(self.db, table)

    # -- keys ----------------------------------------------------------------------------------

    async def insert_key(
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
        return await self.keys.insert(
            key_hash, models=models, key_alias=key_alias, team_id=team_id, user_id=user_id,
            metadata=metadata, expires_at=expires_at,
        )

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        return await self.keys.by_hash(key_hash)

    async def key_access(self, key_hash: str) -> KeyAccess | None:
        """A key with its user's and team's models and blocked flags: one query."""
        return await self.keys.access(key_hash)

    async def key_and_batch(
        self, key_hash: str, batch_id: str
    ) -> tuple[KeyAccess | None, BatchRow | None]:
        return await self.keys.and_batch(key_hash, batch_id)

    async def key_by_id(self, key_id: str) -> KeyRow | None:
        return await self.keys.by_id(key_id)

    async def list_keys(self, offset: int, limit: int) -> tuple[list[KeyRow], int]:
        return await self.keys.page(offset, limit)

    async def delete_keys(self, key_ids: Sequence[str]) -> list[str]:
        return await self.keys.delete(key_ids)

    # -- files ---------------------------------------------------------------------------------

    async def insert_file(self, row: FileRow, retry_at: float = 0.0) -> None:
        await self.files.insert(row, retry_at)

    async def get_file(self, owner: str | None, file_id: str) -> FileRow | None:
        return await self.files.get(owner, file_id)

    async def list_files(
        self, owner: str | None, *, purpose: str | None, after: str | None, limit: int,
        ascending: bool,
    ) -> tuple[list[FileRow], bool]:
        return await self.files.page(
            owner, purpose=purpose, after=after, limit=limit, ascending=ascending
        )

    async def delete_file(self, owner: str, file_id: str) -> None:
        await self.files.delete(owner, file_id)

    async def mark_deleting(self, owner: str, file_id: str) -> None:
        await self.files.mark_deleting(owner, file_id)

    async def being_deleted(self, limit: int) -> list[FileRow]:
        return await self.files.being_deleted(limit)

    async def delete_copy(self, file_id: str, deployment_id: str) -> None:
        await self.files.delete_copy(file_id, deployment_id)

    async def claim_copy(
        self, file_id: str, deployment_id: str, holder: str, ttl: float, *, due_only: bool
    ) -> bool:
        return await self.files.claim_copy(file_id, deployment_id, holder, ttl,
                                           due_only=due_only)

    async def copy_made(self, file_id: str, deployment_id: str, provider_file_id: str) -> None:
        await self.files.copy_made(file_id, deployment_id, provider_file_id)

    async def copy_failed(self, file_id: str, deployment_id: str, backoff: float) -> None:
        await self.files.copy_failed(file_id, deployment_id, backoff)

    async def copies_due(
        self, deployment_ids: Sequence[str], limit: int
    ) -> list[tuple[str, str, str]]:
        return await self.files.copies_due(deployment_ids, limit)

    async def inputs_created_before(self, before: int, limit: int) -> list[FileRow]:
        return await self.files.inputs_created_before(before, limit)

    async def mint_result_file(self, row: FileRow) -> str:
        return await self.files.mint_result_file(row)

    async def result_file_id(self, batch_id: str, kind: str) -> str | None:
        return await self.files.result_file_id(batch_id, kind)

    # -- adapter state -------------------------------------------------------------------------

    async def state_get(self, deployment_id: str, key: str) -> bytes | None:
        return await self.state.get(deployment_id, key)

    async def state_put(self, deployment_id: str, key: str, value: bytes) -> None:
        await self.state.put(deployment_id, key, value)

    async def state_delete(self, deployment_id: str, key: str) -> None:
        await self.state.delete(deployment_id, key)

    # -- batches -------------------------------------------------------------------------------

    async def insert_batch(self, row: BatchRow) -> None:
        await self.batches.insert(row)

    async def get_batch(self, owner: str | None, batch_id: str) -> BatchRow | None:
        return await self.batches.get(owner, batch_id)

    async def update_batch(
        self, batch_id: str, *, status: str, terminal: bool, obj: dict[str, Any]
    ) -> None:
        await self.batches.update(batch_id, status=status, terminal=terminal, obj=obj)

    async def record_usage(self, row: BatchRow, obj: dict[str, Any],
                           cost: Cost | None = None) -> None:
        """A finished batch's usage and its cost (added to its key's, user's and team's
        spend), both once, together; `cost` when the prices held at create do not apply."""
        reported = obj.get("usage")
        async with self.db.transaction():
            await self.batches.record_usage(row, obj)
            await self.spend.settle(
                batch_id=row.id, owner=row.owner, model_group=row.model_group,
                created_at=row.created_at, status=str(obj["status"]),
                usage=reported if isinstance(reported, dict) else {}, cost=cost,
            )

    async def list_usage(self, owner: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.batches.list_usage(owner, limit)

    async def claim_unfinished(
        self, holder: str, deployment_ids: Sequence[str], limit: int, ttl: float
    ) -> list[BatchRow]:
        return await self.batches.claim_unfinished(holder, deployment_ids, limit, ttl)

    async def list_batches(
        self, owner: str | None, *, after: str | None, limit: int,
        model_groups: Sequence[str] | None,
    ) -> tuple[list[tuple[str, str]], bool]:
        return await self.batches.page(owner, after=after, limit=limit,
                                       model_groups=model_groups)

    # -- webhook outbox ------------------------------------------------------------------------

    async def enqueue_webhooks(
        self, *, batch_id: str, owner: str, event_id: str, event_type: str, created_at: int,
        targets: Sequence[tuple[str, str, str | None]],
    ) -> None:
        await self.webhooks.enqueue(batch_id=batch_id, owner=owner, event_id=event_id,
                                    event_type=event_type, created_at=created_at,
                                    targets=targets)

    async def claim_webhooks(
        self, holder: str, endpoint_ids: Sequence[str], limit: int, ttl: float
    ) -> list[DeliveryRow]:
        return await self.webhooks.claim(holder, endpoint_ids, limit, ttl)

    async def webhook_outcome(
        self, row: DeliveryRow, holder: str, *, status: str, attempts: int,
        next_attempt_at: float, status_code: int | None, error: str | None,
    ) -> None:
        await self.webhooks.outcome(row, holder, status=status, attempts=attempts,
                                    next_attempt_at=next_attempt_at, status_code=status_code,
                                    error=error)

    async def list_webhook_deliveries(
        self, *, status: str | None, batch_id: str | None, limit: int
    ) -> list[DeliveryRow]:
        return await self.webhooks.page(status=status, batch_id=batch_id, limit=limit)
