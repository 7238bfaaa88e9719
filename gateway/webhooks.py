"""Batch webhooks: OpenAI's `batch.completed`, `batch.failed`, `batch.cancelled` and
`batch.expired` events, signed as Standard Webhooks, sent to the endpoints of
`general_settings.webhooks`.

`enqueue` writes the event into the outbox table when a batch is first seen finished (in the
same transaction as its usage: one insert, never a network call in a request). Every instance
runs a `Deliverer`: it claims due rows with a lease, POSTs them, and records the outcome;
failures are tried again with exponential backoff until `webhook_retry_for_seconds` after the
event, then marked failed (the master key sees them at `GET /webhooks/deliveries`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import time

import aiohttp
import msgspec
from standardwebhooks import Webhook

from gateway import ids
from gateway.config import WebhookEndpoint
from gateway.runtime import Gateway
from gateway.store import BatchRow
from gateway.store.webhooks import DeliveryRow

log = logging.getLogger("gateway.webhooks")

EVENT_TYPES = {status: f"batch.{status}"
               for status in ("completed", "failed", "cancelled", "expired")}
TIMEOUT_SECONDS = 10.0
# Longer than a delivery can take (the timeout): a row whose sender died is sent by another.
LEASE_SECONDS = 60.0


async def enqueue(gw: Gateway, row: BatchRow, status: str) -> None:
    """The batch's end as an event for every endpoint that wants it (its events, its `key`
    and `team_id` filters); a second call for the same batch adds nothing."""
    event_type = EVENT_TYPES.get(status)
    targets = [(e.id, e.url, e.team_id) for e in gw.settings.webhooks
               if event_type in e.events and e.key in (None, row.owner)]
    if event_type is None or not targets:
        return
    await gw.store.enqueue_webhooks(
        batch_id=row.id, owner=row.owner, event_id=ids.new_event_id(), event_type=event_type,
        created_at=int(time.time()), targets=targets,
    )


def event_body(row: DeliveryRow) -> bytes:
    """OpenAI's webhook payload: the event, naming the batch by its gateway id."""
    return msgspec.json.encode({"object": "event", "id": row.event_id, "type": row.event_type,
                                "created_at": row.created_at, "data": {"id": row.batch_id}})


def signed_headers(signer: Webhook, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """Standard Webhooks headers: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    timestamp = int(now)
    at = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signer.sign(msg_id, at, body.decode()),
    }


class Deliverer:
    """Sends the outbox's due events to this instance's configured endpoints."""

    def __init__(self, gw: Gateway, batch_size: int = 20) -> None:
        self.gw = gw
        self.batch_size = batch_size
        self.endpoints = {e.id: e for e in gw.settings.webhooks}
        self.signers = {e.id: Webhook(e.secret) for e in gw.settings.webhooks}

    async def deliver_due(self) -> int:
        """Claim the due deliveries and send them, concurrently; returns how many."""
        holder = secrets.token_hex(8)
        rows = await self.gw.store.claim_webhooks(holder, list(self.endpoints),
                                                  self.batch_size, LEASE_SECONDS)
        await asyncio.gather(*(self._deliver(row, holder) for row in rows))
        return len(rows)

    async def _deliver(self, row: DeliveryRow, holder: str) -> None:
        endpoint = self.endpoints[row.endpoint_id]
        body = event_body(row)
        headers = signed_headers(self.signers[row.endpoint_id], row.event_id, body, time.time())
        code, error = await self._post(endpoint, body, headers)
        attempts = row.attempts + 1
        s = self.gw.settings
        if code is not None and 200 <= code < 300:
            status, next_at = "delivered", 0.0
            log.info("%s for %s delivered to %s (attempt %d)", row.event_type, row.batch_id,
                     endpoint.url, attempts)
        else:
            # Exponential backoff; the last try is at the end of the window, then failed.
            now = time.time()
            deadline = row.enqueued_at + s.webhook_retry_for_seconds
            wait = s.webhook_retry_seconds * 2 ** min(attempts - 1, 30)
            status = "failed" if now >= deadline else "pending"
            next_at = min(now + wait, deadline)
            log.warning("%s for %s to %s: attempt %d failed (%s)%s", row.event_type,
                        row.batch_id, endpoint.url, attempts, error,
                        "; giving up" if status == "failed" else "")
        await self.gw.store.webhook_outcome(row, holder, status=status, attempts=attempts,
                                            next_attempt_at=next_at, status_code=code,
                                            error=error)

    async def _post(
        self, endpoint: WebhookEndpoint, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        """(status code, error) of one POST; a timeout or connection failure has no code."""
        http = self.gw.http
        assert http is not None, "the gateway is not started"
        try:
            async with http.post(endpoint.url, data=body, headers=headers,
                                 allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
                code = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return None, (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)[:500]
        return code, None if 200 <= code < 300 else f"HTTP {code}"
