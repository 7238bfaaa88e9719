"""`Idempotency-Key` records: who holds a key while its request runs, and the answer it gave."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import idempotency_keys

T = idempotency_keys.c
_ONE = sa.and_(T.owner == sa.bindparam("owner"), T.route == sa.bindparam("route"),
               T.key == sa.bindparam("key"))
_GET = sa.select(T.state, T.fingerprint, T.status, T.body, T.holder, T.lease_until).where(_ONE)
_HOLDER = sa.and_(_ONE, T.holder == sa.bindparam("holder"))
_RENEW = idempotency_keys.update().where(_HOLDER, T.state == "running") \
    .values(lease_until=sa.bindparam("lease_until"))
_FINISH = idempotency_keys.update().where(_HOLDER).values(
    state="done", fingerprint=sa.bindparam("fingerprint"), status=sa.bindparam("status"),
    body=sa.bindparam("body"), lease_until=0.0)
_RELEASE = idempotency_keys.delete().where(_HOLDER, T.state == "running")
_PURGE = idempotency_keys.delete().where(T.created_at < sa.bindparam("before"),
                                         T.lease_until < sa.bindparam("now"))


@dataclass(frozen=True)
class IdempotencyRow:
    state: str  # running, done
    fingerprint: str | None
    status: int | None
    body: bytes | None
    holder: str
    lease_until: float


class IdempotencyKeys:
    def __init__(self, db: Database) -> None:
        self.db = db
        new = db.insert(idempotency_keys).values(
            owner=sa.bindparam("owner"), route=sa.bindparam("route"), key=sa.bindparam("key"),
            state="running", holder=sa.bindparam("holder"),
            lease_until=sa.bindparam("lease_until"), created_at=sa.bindparam("now"))
        # Atomic on both databases: of two requests with one key, one holds it; a running
        # record whose lease ran out (its process died) is taken over.
        self._claim = new.on_conflict_do_update(
            index_elements=[T.owner, T.route, T.key],
            set_={"holder": new.excluded.holder, "lease_until": new.excluded.lease_until,
                  "created_at": new.excluded.created_at},
            where=sa.and_(T.state == "running", T.lease_until < sa.bindparam("now")),
        )

    async def claim(self, owner: str, route: str, key: str, holder: str, now: float,
                    lease: float) -> IdempotencyRow:
        """Try to hold the key; the record as it is afterwards (held if `holder` is ours)."""
        where = {"owner": owner, "route": route, "key": key}
        await self.db.execute(self._claim, {**where, "holder": holder, "now": now,
                                            "lease_until": now + lease})
        r = await self.db.fetch_row(_GET, where)
        assert r is not None  # just written or already there; only `purge` deletes old ones
        body = r["body"]
        return IdempotencyRow(state=r["state"], fingerprint=r["fingerprint"],
                              status=r["status"], body=bytes(body) if body is not None else None,
                              holder=r["holder"], lease_until=r["lease_until"])

    async def renew(self, owner: str, route: str, key: str, holder: str,
                    lease_until: float) -> None:
        await self.db.execute(_RENEW, {"owner": owner, "route": route, "key": key,
                                       "holder": holder, "lease_until": lease_until})

    async def finish(self, owner: str, route: str, key: str, holder: str, fingerprint: str,
                     status: int, body: bytes) -> None:
        await self.db.execute(_FINISH, {"owner": owner, "route": route, "key": key,
                                        "holder": holder, "fingerprint": fingerprint,
                                        "status": status, "body": body})

    async def release(self, owner: str, route: str, key: str, holder: str) -> None:
        await self.db.execute(_RELEASE, {"owner": owner, "route": route, "key": key,
                                         "holder": holder})

    async def purge(self, before: float, now: float) -> None:
        await self.db.execute(_PURGE, {"before": before, "now": now})
