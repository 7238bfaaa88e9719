"""OAuth2 access tokens for a service account: the signed-JWT grant against the key's own
`token_uri`, cached and refreshed before expiry.

google-auth does the RS256 signing only; its own refresh is synchronous (requests/urllib3), so
the token request goes through the gateway's shared aiohttp session instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
from google.auth import crypt, jwt

from gateway import UpstreamUnavailable

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
# Refresh this long before expiry (Google's clients use a few minutes) so that a token never
# expires between being handed out and reaching the API.
REFRESH_MARGIN = 300.0
_ASSERTION_LIFETIME = 3600
# google-auth is untyped: its two functions used here, with their documented types.
_signer_from_info = cast(Callable[[Mapping[str, Any]], crypt.RSASigner],
                         crypt.RSASigner.from_service_account_info)
_jwt_encode = cast(Callable[[crypt.Signer, Mapping[str, Any]], bytes], jwt.encode)


def load_service_account(value: Any) -> dict[str, Any]:
    """A service-account key given as a mapping, its JSON text, or a path to its file.

    Raises `ValueError` saying what is wrong (local checks only: the key is not tried here)."""
    info: Any = value
    try:
        if isinstance(value, str):
            text = value.strip()
            info = json.loads(text if text.startswith("{") else
                              Path(text).expanduser().read_text())
    except OSError as e:
        raise ValueError(f"cannot read the service-account key file ({e.strerror})") from e
    except ValueError as e:
        raise ValueError("the service-account key is not valid JSON") from e
    if not isinstance(info, Mapping) or info.get("type") != "service_account":
        raise ValueError('must be a service-account key ("type": "service_account"), as a '
                         "path or JSON text")
    for field in ("client_email", "private_key"):
        if not isinstance(info.get(field), str) or not info[field]:
            raise ValueError(f"the service-account key has no {field}")
    return dict(info)


def signer_for(info: Mapping[str, Any]) -> crypt.RSASigner:
    """The RS256 signer of a loaded key; `ValueError` when its private_key is unusable."""
    try:
        return _signer_from_info(info)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the service-account private_key is unusable: {e}") from e


class TokenSource:
    """Hands out a valid access token; one refresh at a time however many callers wait."""

    def __init__(
        self,
        info: Mapping[str, Any],
        http: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer_for(info)  # checked when the config loaded: does not fail here
        self.email = str(info["client_email"])
        self.token_uri = str(info.get("token_uri") or DEFAULT_TOKEN_URI)
        self.http = http
        self.timeout = timeout
        self.clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        if self._token is None or self.clock() >= self._refresh_at:
            async with self._lock:
                if self._token is None or self.clock() >= self._refresh_at:
                    await self._fetch()
        assert self._token is not None
        return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` after the API refused it (revoked, or a clock out of step)."""
        if token == self._token:
            self._token = None

    def assertion(self) -> str:
        now = int(self.clock())
        claims = {"iss": self.email, "scope": SCOPE, "aud": self.token_uri,
                  "iat": now, "exp": now + _ASSERTION_LIFETIME}
        return _jwt_encode(self.signer, claims).decode()

    async def _fetch(self) -> None:
        form = {"grant_type": GRANT_TYPE, "assertion": self.assertion()}
        started = self.clock()
        try:
            async with self.http.post(self.token_uri, data=form, timeout=self.timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"token endpoint: {type(e).__name__}: {e}") from e
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        token = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str):
            # A refused key is the admin's problem; the client sees a 502, never the reason.
            reason = body.get("error_description") or body.get("error") \
                if isinstance(body, dict) else None
            raise UpstreamUnavailable(f"token endpoint refused {self.email}: HTTP {status} "
                                      f"{reason or raw[:200]!r}", status=status)
        lifetime = float(body.get("expires_in") or 3600)
        self._token = token
        self._refresh_at = started + lifetime - min(REFRESH_MARGIN, lifetime / 2)
