"""Entra ID (Azure AD) client-credentials tokens for one deployment."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway import UpstreamUnavailable, safe_decode
from gateway_azure.shapes import azure_error


class EntraToken:
    """A token fetched lazily and refreshed ahead of expiry, so no request goes out with a
    token about to lapse. Nothing happens until the first `get()`."""

    def __init__(
        self, http: aiohttp.ClientSession, token_url: str, form: dict[str, str], margin: float
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.form = form
        self.margin = margin
        self.fetches = 0
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._token = None

    async def get(self) -> str:
        if self._token and time.monotonic() < self._refresh_at:
            return self._token
        async with self._lock:  # one fetch for many concurrent callers
            if self._token and time.monotonic() < self._refresh_at:
                return self._token
            token, lifetime = await self._fetch()
            # Short-lived tokens (tests, strict tenants) refresh at half-life instead.
            self._refresh_at = time.monotonic() + lifetime - min(self.margin, lifetime / 2)
            self._token = token
            return token

    async def _fetch(self) -> tuple[str, float]:
        self.fetches += 1
        try:
            async with self.http.post(
                self.token_url, data=self.form, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                body = safe_decode(await resp.read())
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"Entra token endpoint: {type(e).__name__}: {e}") from e
        token = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str):
            _, message = azure_error(body)
            # The secret is never echoed; the status and Entra's AADSTS text help the admin.
            # No `status=`: a 401 here must not look like Azure refusing a stale token.
            raise UpstreamUnavailable(f"Entra token request refused (HTTP {status}): {message}",
                                      retryable=False)
        try:
            lifetime = float(body.get("expires_in") or 3600)  # a string on some Entra versions
        except (TypeError, ValueError):
            lifetime = 3600.0
        return token, lifetime
