"""The webhook outbox: one row per (finished batch, endpoint), written when the batch is first
seen finished, delivered by whichever instance claims it (a lease per row). Endpoints are those
of `general_settings.webhooks` and the keys' own (`key_webhooks`, endpoint id `key:<token>`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.store.db import Database
from gateway.store.schema import Columns, key_webhooks, keys, webhook_deliveries

T = webhook_deliveries.c
K = key_webhooks.c
# Outbox rows of a key's own endpoint: any instance can sign them (the secret is in the
# database), unlike a configured endpoint, which only instances with that config know.
KEY_ENDPOINT_PREFIX = "key:"


@dataclass(frozen=True)
class DeliveryRow:
    batch_id: str
    endpoint_id: str
    url: str
    event_id: str
    event_type: str
    owner: str
    created_at: int  # the event's (OpenAI's `created_at`)
    status: str  # pending, delivered, failed
    attempts: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    enqueued_at: float
    updated_at: float


DELIVERY = Columns(DeliveryRow, webhook_deliveries)

_ONE = sa.and_(T.batch_id == sa.bindparam("batch_id"), T.endpoint_id == sa.bindparam("endpoint_id"))
_BY_ID = sa.select(*DELIVERY.columns, T.holder).where(_ONE)
# Conditional on the lease having run out: of two instances claiming a row, one wins.
_CLAIM = (
    webhook_deliveries.update()
    .where(_ONE, T.status == "pending", T.next_attempt_at <= sa.bindparam("now"),
           T.lease_until < sa.bindparam("now"))
    .values(holder=sa.bindparam("holder"), lease_until=sa.bindparam("lease_until"))
)
# Only the holder records the outcome (a row whose lease was taken over is the other's now).
_OUTCOME = (
    webhook_deliveries.update()
    .where(_ONE, T.holder == sa.bindparam("by"))
    .values({**{name: sa.bindparam(name) for name in (
        "status", "attempts", "next_attempt_at", "last_status_code", "last_error",
        "updated_at")}, "holder": None, "lease_until": 0.0})
)


class WebhookOutbox:
    def __init__(self, db: Database) -> None:
        self.db = db
        # One row per target endpoint, unless the endpoint wants one team's batches and the
        # batch's key is not in it; a row already there (another instance, a concurrent
        # retrieve) is left alone: the primary key makes each event once per endpoint.
        team = sa.bindparam("team_id", type_=sa.String)
        owner = sa.bindparam("owner", type_=sa.String)  # a key's token id, or user:<user_id>
        # The columns after (batch_id, endpoint_id, url), the same for every endpoint.
        event = (
            sa.bindparam("event_id", type_=sa.String),
            sa.bindparam("event_type", type_=sa.String),
            owner,
            sa.bindparam("created_at", type_=sa.BigInteger),
            sa.literal("pending", sa.String),
            sa.literal(0, sa.Integer),
            sa.bindparam("now", type_=sa.Float),
            sa.bindparam("now", type_=sa.Float),
            sa.bindparam("now", type_=sa.Float),
            sa.literal(0.0, sa.Float),
        )
        batch_id = sa.bindparam("batch_id", type_=sa.String)
        rows = sa.select(
            batch_id, sa.bindparam("endpoint_id", type_=sa.String),
            sa.bindparam("url", type_=sa.String), *event,
        ).where(sa.or_(team.is_(None), sa.exists().where(
            sa.or_(keys.c.id == owner, sa.literal("user:", sa.String) + keys.c.user_id == owner),
            keys.c.team_id == team,
        )))
        names = ["batch_id", "endpoint_id", "url", "event_id", "event_type", "owner",
                 "created_at", "status", "attempts", "next_attempt_at", "enqueued_at",
                 "updated_at", "lease_until"]
        self._enqueue = db.insert(webhook_deliveries).from_select(names, rows) \
            .on_conflict_do_nothing()
        # One row per key endpoint whose key reaches the batch: the key itself when it has no
        # user, every key of the batch's user otherwise (as for retrieving the batch).
        for_keys = sa.select(
            batch_id, sa.literal(KEY_ENDPOINT_PREFIX, sa.String) + K.key_id, K.url, *event,
        ).select_from(key_webhooks.join(keys, keys.c.id == K.key_id)).where(sa.or_(
            sa.and_(keys.c.user_id.is_(None), keys.c.id == owner),
            sa.literal("user:", sa.String) + keys.c.user_id == owner,
        ))
        self._enqueue_keys = db.insert(webhook_deliveries).from_select(names, for_keys) \
            .on_conflict_do_nothing()
        self.key_endpoints = KeyEndpoints(db)

    async def enqueue(
        self, *, batch_id: str, owner: str, event_id: str, event_type: str, created_at: int,
        targets: Sequence[tuple[str, str, str | None]],
    ) -> None:
        """The event for each (endpoint id, url, team filter) in `targets` (one statement) and
        for every key endpoint of the batch's owner (one more)."""
        now = time.time()
        event = {"batch_id": batch_id, "event_id": event_id, "event_type": event_type,
                 "owner": owner, "created_at": created_at, "now": now}
        if targets:
            await self.db.execute_many(self._enqueue, [
                {**event, "endpoint_id": endpoint_id, "url": url, "team_id": team_id}
                for endpoint_id, url, team_id in targets
            ])
        await self.db.execute(self._enqueue_keys, event)

    async def claim(
        self, holder: str, endpoint_ids: Sequence[str], limit: int, ttl: float
    ) -> list[DeliveryRow]:
        """Up to `limit` pending deliveries to `endpoint_ids` or to a key endpoint that are due
        and whose lease ran out, now leased to `holder`."""
        now = time.time()
        candidates = await self.db.fetch_all(
            sa.select(T.batch_id, T.endpoint_id)
            .where(T.status == "pending", T.next_attempt_at <= now, T.lease_until < now,
                   sa.or_(T.endpoint_id.in_(list(endpoint_ids)),
                          T.endpoint_id.startswith(KEY_ENDPOINT_PREFIX, autoescape=True)))
            .order_by(T.next_attempt_at)
            .limit(limit)
        )
        claimed: list[DeliveryRow] = []
        for c in candidates:
            one = {"batch_id": c["batch_id"], "endpoint_id": c["endpoint_id"]}
            await self.db.execute(_CLAIM, {**one, "holder": holder, "now": now,
                                           "lease_until": now + ttl})
            r = await self.db.fetch_row(_BY_ID, one)
            if r is not None and r["holder"] == holder:
                claimed.append(DELIVERY.read(r))
        return claimed

    async def outcome(
        self, row: DeliveryRow, holder: str, *, status: str, attempts: int,
        next_attempt_at: float, status_code: int | None, error: str | None,
    ) -> None:
        """Record an attempt: `delivered`, `failed` (given up) or `pending` (tried again at
        `next_attempt_at`); the lease is released."""
        await self.db.execute(_OUTCOME, {
            "batch_id": row.batch_id, "endpoint_id": row.endpoint_id, "by": holder,
            "status": status, "attempts": attempts, "next_attempt_at": next_attempt_at,
            "last_status_code": status_code, "last_error": error, "updated_at": time.time(),
        })

    async def page(
        self, *, status: str | None, batch_id: str | None, limit: int
    ) -> list[DeliveryRow]:
        """The most recent deliveries first."""
        q = sa.select(*DELIVERY.columns)
        if status is not None:
            q = q.where(T.status == status)
        if batch_id is not None:
            q = q.where(T.batch_id == batch_id)
        rows = await self.db.fetch_all(
            q.order_by(T.enqueued_at.desc(), T.batch_id, T.endpoint_id).limit(limit))
        return [DELIVERY.read(r) for r in rows]


@dataclass(frozen=True)
class KeyEndpoint:
    url: str
    secret: str


class KeyEndpoints:
    """The keys' own webhook endpoints: one per key at most, with its signing secret."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = db.insert(key_webhooks).values(
            key_id=sa.bindparam("key_id"), url=sa.bindparam("url"),
            secret=sa.bindparam("secret"), created_at=sa.bindparam("created_at"),
        ).on_conflict_do_nothing()

    async def url(self, key_id: str) -> str | None:
        url = await self.db.fetch_val(sa.select(K.url).where(K.key_id == key_id))
        return str(url) if url is not None else None

    async def add(self, key_id: str, url: str, secret: str) -> bool:
        """A new endpoint for `key_id`; False if it has one already (left as it is)."""
        await self.db.execute(self._insert, {"key_id": key_id, "url": url, "secret": secret,
                                             "created_at": int(time.time())})
        kept = await self.db.fetch_val(sa.select(K.secret).where(K.key_id == key_id))
        return bool(kept == secret)

    async def move(self, key_id: str, url: str) -> None:
        """Another URL for the key's endpoint, same secret."""
        await self.db.execute(key_webhooks.update().where(K.key_id == key_id).values(url=url))

    async def remove(self, key_id: str) -> None:
        await self.db.execute(key_webhooks.delete().where(K.key_id == key_id))

    async def signing(self, key_ids: Sequence[str]) -> dict[str, KeyEndpoint]:
        """Where and how to send the events of these keys' endpoints (not of a deleted key)."""
        if not key_ids:
            return {}
        rows = await self.db.fetch_all(
            sa.select(K.key_id, K.url, K.secret)
            .select_from(key_webhooks.join(keys, keys.c.id == K.key_id))
            .where(K.key_id.in_(list(key_ids))))
        return {r["key_id"]: KeyEndpoint(r["url"], r["secret"]) for r in rows}

    async def purge(self) -> None:
        """Forget the secrets of keys that were deleted (by /key/delete, or with their user or
        team)."""
        await self.db.execute(key_webhooks.delete().where(
            K.key_id.not_in(sa.select(keys.c.id))))
