"""Small values adapters keep per deployment (`ProviderContext.state`)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import adapter_state

_ONE = sa.and_(adapter_state.c.deployment_id == sa.bindparam("deployment_id"),
               adapter_state.c.key == sa.bindparam("key"))
_GET = sa.select(adapter_state.c.value).where(_ONE)
_DELETE = adapter_state.delete().where(_ONE)


class AdapterState:
    def __init__(self, db: Database) -> None:
        self.db = db
        new = db.insert(adapter_state).values(
            deployment_id=sa.bindparam("deployment_id"), key=sa.bindparam("key"),
            value=sa.bindparam("value"), updated_at=sa.bindparam("updated_at"),
        )
        self._put = new.on_conflict_do_update(
            index_elements=[adapter_state.c.deployment_id, adapter_state.c.key],
            set_={"value": new.excluded.value, "updated_at": new.excluded.updated_at},
        )

    async def get(self, deployment_id: str, key: str) -> bytes | None:
        value = await self.db.fetch_val(_GET, {"deployment_id": deployment_id, "key": key})
        return bytes(value) if value is not None else None

    async def put(self, deployment_id: str, key: str, value: bytes) -> None:
        await self.db.execute(self._put, {"deployment_id": deployment_id, "key": key,
                                          "value": value, "updated_at": time.time()})

    async def delete(self, deployment_id: str, key: str) -> None:
        await self.db.execute(_DELETE, {"deployment_id": deployment_id, "key": key})
