"""Batch webhooks: OpenAI's `batch.completed`, `batch.failed`, `batch.cancelled` and
`batch.expired` events, signed as Standard Webhooks, sent to the endpoints of
`general_settings.webhooks` and to the keys' own endpoints (`/key/generate` metadata
`webhook_url`, with a secret returned once).

`enqueue` writes the event into the outbox table when a batch is first seen finished (in the
same transaction as its usage: inserts, never a network call in a request). Every instance
runs a `Deliverer`: it claims due rows with a lease, POSTs them, and records the outcome;
failures are tried again with exponential backoff until `webhook_retry_for_seconds` after the
event, then marked failed (the master key sees them at `GET /webhooks/deliveries`).

A key's endpoint gets the events of the batches the key reaches: its own when it has no user,
its user's (made with any of the user's keys) when it has one, as for retrieving them. Its
secret is stored as it is (the gateway signs with it, so it cannot be a hash): in its own
table, read by the deliverer only, never answered by a route or logged, and deleted with the
key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import secrets
import time
import urllib.parse
from typing import Any

import aiohttp
import msgspec
from standardwebhooks import Webhook

from gateway import ids
from gateway.errors import BadRequest
from gateway.runtime import Gateway
from gateway.store import BatchRow
from gateway.store.webhooks import KEY_ENDPOINT_PREFIX, DeliveryRow

log = logging.getLogger("gateway.webhooks")

EVENT_TYPES = {status: f"batch.{status}"
               for status in ("completed", "failed", "cancelled", "expired")}
TIMEOUT_SECONDS = 10.0
# Longer than a delivery can take (the timeout): a row whose sender died is sent by another.
LEASE_SECONDS = 60.0
# How often an instance forgets the secrets of deleted keys.
PURGE_SECONDS = 60.0
WEBHOOK_URL = "webhook_url"  # the key metadata field (LiteLLM-style)


async def enqueue(gw: Gateway, row: BatchRow, status: str) -> None:
    """The batch's end as an event for every endpoint that wants it (its events, its `key`
    and `team_id` filters; the endpoints of the keys that reach the batch); a second call for
    the same batch adds nothing."""
    event_type = EVENT_TYPES.get(status)
    if event_type is None:
        return
    targets = [(e.id, e.url, e.team_id) for e in gw.settings.webhooks
               if event_type in e.events and e.key in (None, row.owner)]
    await gw.store.enqueue_webhooks(
        batch_id=row.id, owner=row.owner, event_id=ids.new_event_id(), event_type=event_type,
        created_at=int(time.time()), targets=targets,
    )


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def key_webhook_url(metadata: dict[str, Any]) -> str | None:
    """The `webhook_url` of a key's metadata, checked (400 if it is not an http(s) URL)."""
    url = metadata.get(WEBHOOK_URL)
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") \
            and bool(parts.hostname) and len(url) <= 2048
    except ValueError:  # e.g. a bad IPv6 literal
        ok = False
    if not ok or not isinstance(url, str):
        raise BadRequest("metadata.webhook_url must be an http:// or https:// URL (at most "
                         "2048 characters).", param="metadata")
    return url


async def set_key_endpoint(gw: Gateway, key_id: str, url: str | None) -> dict[str, str]:
    """Make the key's endpoint match its metadata's `webhook_url`: added (the answer has its
    secret, the only time it is shown), moved (same secret), or removed (None)."""
    endpoints = gw.store.webhooks.key_endpoints
    if url is None:
        await endpoints.remove(key_id)
        return {}
    if await endpoints.url(key_id) is not None:
        await endpoints.move(key_id, url)
        return {}
    secret = new_secret()
    if not await endpoints.add(key_id, url, secret):  # a concurrent update added one first
        await endpoints.move(key_id, url)
        return {}
    return {"webhook_secret": secret}


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
    """Sends the outbox's due events to this instance's configured endpoints and to the
    keys' endpoints."""

    def __init__(self, gw: Gateway, batch_size: int = 20) -> None:
        self.gw = gw
        self.batch_size = batch_size
        # endpoint id -> (url, signer)
        self.endpoints = {e.id: (e.url, Webhook(e.secret)) for e in gw.settings.webhooks}
        self.purged_at = 0.0

    async def deliver_due(self) -> int:
        """Claim the due deliveries and send them, concurrently; returns how many."""
        if time.monotonic() - self.purged_at >= PURGE_SECONDS:
            self.purged_at = time.monotonic()
            await self.gw.store.webhooks.key_endpoints.purge()
        holder = secrets.token_hex(8)
        rows = await self.gw.store.claim_webhooks(holder, list(self.endpoints),
                                                  self.batch_size, LEASE_SECONDS)
        # A key's endpoint is sent to where it is now (its URL may have been corrected since).
        keyed = await self.gw.store.webhooks.key_endpoints.signing(
            [r.endpoint_id.removeprefix(KEY_ENDPOINT_PREFIX) for r in rows
             if r.endpoint_id.startswith(KEY_ENDPOINT_PREFIX)])
        targets = {**self.endpoints, **{KEY_ENDPOINT_PREFIX + key_id: (e.url, Webhook(e.secret))
                                        for key_id, e in keyed.items()}}
        await asyncio.gather(*(self._deliver(row, holder, targets.get(row.endpoint_id))
                               for row in rows))
        return len(rows)

    async def _deliver(
        self, row: DeliveryRow, holder: str, target: tuple[str, Webhook] | None
    ) -> None:
        attempts = row.attempts + 1
        if target is None:  # its key was deleted, or its webhook_url removed
            log.warning("%s for %s: the endpoint %s is gone; not sent", row.event_type,
                        row.batch_id, row.endpoint_id)
            await self.gw.store.webhook_outcome(
                row, holder, status="failed", attempts=row.attempts, next_attempt_at=0.0,
                status_code=None, error="endpoint removed (its key was deleted or its "
                                        "webhook_url unset)")
            return
        url, signer = target
        body = event_body(row)
        headers = signed_headers(signer, row.event_id, body, time.time())
        code, error = await self._post(url, body, headers)
        s = self.gw.settings
        if code is not None and 200 <= code < 300:
            status, next_at = "delivered", 0.0
            log.info("%s for %s delivered to %s (attempt %d)", row.event_type, row.batch_id,
                     _shown(url), attempts)
        else:
            # Exponential backoff; the last try is at the end of the window, then failed.
            now = time.time()
            deadline = row.enqueued_at + s.webhook_retry_for_seconds
            wait = s.webhook_retry_seconds * 2 ** min(attempts - 1, 30)
            status = "failed" if now >= deadline else "pending"
            next_at = min(now + wait, deadline)
            log.warning("%s for %s to %s: attempt %d failed (%s)%s", row.event_type,
                        row.batch_id, _shown(url), attempts, error,
                        "; giving up" if status == "failed" else "")
        await self.gw.store.webhook_outcome(row, holder, status=status, attempts=attempts,
                                            next_attempt_at=next_at, status_code=code,
                                            error=error)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        """(status code, error) of one POST; a timeout or connection failure has no code."""
        http = self.gw.http
        assert http is not None, "the gateway is not started"
        try:
            async with http.post(url, data=body, headers=headers,
                                 allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
                code = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return None, (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)[:500]
        return code, None if 200 <= code < 300 else f"HTTP {code}"


def _shown(url: str) -> str:
    """A URL for the logs: without its query, which may carry a token."""
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()
