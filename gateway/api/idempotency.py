"""`Idempotency-Key` on the POST routes that create things (`/v1/files`, `/v1/batches`).

A retry with the same key and the same body gets the first successful answer again (with
`Idempotent-Replayed: true`) and creates nothing; the same key with another body is a 409. While
the first request runs, a retry gets a 409 with `Retry-After` (the OpenAI SDK waits and retries
409s by itself). Only successful answers are kept: after an error the key is free again, so a
corrected request may reuse it. Keys are scoped to the caller's owner and the route, and kept
for a day. A request whose process dies frees its key within
`general_settings.crash_recovery_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive

from gateway.api.common import gateway
from gateway.errors import BadRequest, Conflict
from gateway.runtime import Gateway

Endpoint = Callable[[Request], Awaitable[Response]]

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
KEEP_SECONDS = 86_400.0


class _Fingerprint:
    """SHA-256 of the request body as it streams past the endpoint. A multipart body is hashed
    without its boundary, which clients draw at random on every attempt."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self._hash = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
        boundary = _boundary(request.headers.get("content-type", ""))
        self._delimiter = b"--" + boundary if boundary else b""
        self._tail = b""
        self.done = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.done:
            self._update(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
                self._hash.update(self._tail)
        return message

    def _update(self, chunk: bytes) -> None:
        if not self._delimiter:
            self._hash.update(chunk)
            return
        # A delimiter may straddle two chunks: hold back what could be its start.
        data = (self._tail + chunk).replace(self._delimiter, b"\0")
        keep = len(self._delimiter) - 1
        self._hash.update(data[:-keep] if len(data) > keep else b"")
        self._tail = data[-keep:] if len(data) > keep else data

    async def drain(self) -> str:
        """Read whatever the endpoint did not; the body's fingerprint."""
        while not self.done:
            if (await self.receive())["type"] == "http.disconnect":
                break
        return self._hash.hexdigest()


def _boundary(content_type: str) -> bytes:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return b""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"').encode("latin-1", "replace")
    return b""


def _checked(key: str) -> str:
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param="Idempotency-Key", code="invalid_idempotency_key",
        )
    return key


async def _keep_alive(gw: Gateway, where: tuple[str, str, str], holder: str,
                      lease: float) -> None:
    while True:
        await asyncio.sleep(lease / 4)
        await gw.store.idempotency.renew(*where, holder, time.time() + lease)


def idempotent(route: str, endpoint: Endpoint) -> Endpoint:
    """`endpoint`, answering retries that carry the key they were first sent with."""

    async def wrapped(request: Request) -> Response:
        raw_key = request.headers.get(HEADER)
        if raw_key is None:
            return await endpoint(request)
        key = _checked(raw_key)
        gw = gateway(request)
        principal = await gw.auth(request)
        where = (principal.owner, route, key)
        holder = secrets.token_hex(8)
        now = time.time()
        lease = gw.settings.crash_recovery_seconds
        record = await gw.store.idempotency.claim(*where, holder, now, lease)
        fingerprint = _Fingerprint(request)
        if record.holder != holder:
            if record.state != "done":
                raise Conflict(
                    "A request with this Idempotency-Key is still in progress; retry later.",
                    code="idempotency_key_in_use",
                    headers={"Retry-After": str(max(1, int(record.lease_until - now) + 1))},
                )
            if await fingerprint.drain() != record.fingerprint:
                raise Conflict(
                    "This Idempotency-Key was already used with a different request body.",
                    param="Idempotency-Key", code="idempotency_key_reused",
                )
            return Response(record.body or b"", status_code=record.status or 200,
                            media_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
        renewing = asyncio.create_task(_keep_alive(gw, where, holder, lease))
        try:
            response = await endpoint(Request(request.scope, _receive_of(fingerprint)))
        except BaseException:
            await _stop(renewing)
            await gw.store.idempotency.release(*where, holder)
            raise
        await _stop(renewing)
        if 200 <= response.status_code < 300:
            await gw.store.idempotency.finish(*where, holder, await fingerprint.drain(),
                                              response.status_code, bytes(response.body))
        else:
            await gw.store.idempotency.release(*where, holder)
        return response

    return wrapped


def _receive_of(fingerprint: _Fingerprint) -> Receive:
    return fingerprint.receive


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def purge(gw: Gateway) -> None:
    """Forget keys older than a day (never one whose request is still running)."""
    now = time.time()
    await gw.store.idempotency.purge(now - KEEP_SECONDS, now)
