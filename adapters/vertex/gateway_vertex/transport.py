"""HTTP to Google APIs (GCS, Vertex AI) over the shared aiohttp session: bearer tokens, one
retry with a fresh token on 401, and Google's error envelope mapped to the gateway's errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from gateway import (
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway_vertex.auth import TokenSource

_PROJECT_PATH = re.compile(r"projects/[^\s'\",]+")
_GCS_URI = re.compile(r"gs://[^\s'\",]+")


def scrub(message: str) -> str:
    """Buckets, objects and project paths are deployment internals: clients see none."""
    return _PROJECT_PATH.sub("projects/…", _GCS_URI.sub("gs://…", message))


def _decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return raw[:500].decode("utf-8", "replace")


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> UpstreamError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message, reason = str(error.get("message") or ""), str(error.get("status") or "")
    else:
        message, reason = str(body or "")[:500], ""
    if status == 404:
        return UpstreamNotFound(message, status=status)
    if status in (409, 412) or reason == "FAILED_PRECONDITION":
        return UpstreamConflict(scrub(message), status=status)
    if status == 429:
        try:
            retry: float | None = float(headers.get("retry-after", ""))
        except ValueError:
            retry = None
        return UpstreamRateLimited(message, retry_after=retry)
    if status in (401, 403) or status >= 500:
        # A refused credential or a missing permission is the admin's problem: a 502.
        return UpstreamUnavailable(message, status=status)
    return UpstreamBadRequest(scrub(message), status=status)


class GoogleApi:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        tokens: TokenSource,
        seconds: float,
    ) -> None:
        self.http = http
        self.tokens = tokens
        self.timeout = aiohttp.ClientTimeout(total=seconds)
        # Transfers may take minutes in total; what must not happen is silence.
        self.transfer_timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds,
                                                      sock_read=seconds)

    async def open(
        self,
        method: str,
        url: str | URL,
        *,
        auth: bool = True,
        ok: tuple[int, ...] = (200,),
        timeout: aiohttp.ClientTimeout | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response unread (the caller releases it).

        Bodies must be bytes or JSON so that the 401 retry can send them again.
        """
        extra = dict(kwargs.pop("headers", None) or {})
        for attempt in (1, 2):
            headers = dict(extra)
            token = await self.tokens.token() if auth else None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                resp = await self.http.request(method, url, headers=headers,
                                               timeout=timeout or self.timeout, **kwargs)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise UpstreamUnavailable(f"{method} {url}: {type(e).__name__}: {e}") from e
            if resp.status in ok:
                return resp
            raw = await resp.read()
            resp.release()
            if resp.status == 401 and token and attempt == 1:
                self.tokens.invalidate(token)  # revoked or expired early: one fresh try
                continue
            raise error_for(resp.status, _decode(raw), resp.headers)
        raise AssertionError("unreachable")

    async def call(
        self, method: str, url: str | URL, *, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> Any:
        """Send a request and return its decoded JSON body (None when empty)."""
        resp = await self.open(method, url, ok=ok, **kwargs)
        try:
            return _decode(await resp.read())
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{method} {url}: {type(e).__name__}: {e}") from e
        finally:
            resp.release()
