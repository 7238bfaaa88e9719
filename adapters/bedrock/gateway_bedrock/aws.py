"""Signed AWS calls over the gateway's shared aiohttp session.

Signing is botocore's (`SigV4Auth` for Bedrock, `S3SigV4Auth` for S3) on an `AWSRequest` built
from exactly what is then sent: the URL (already percent-encoded; sent as it is), the headers
and the body bytes. Credentials are the deployment's key pair, else botocore's default chain
(environment, shared files, SSO, container and instance roles), resolved at the first call
and refreshed by botocore. AWS error shapes (`x-amzn-ErrorType`, JSON `__type`, S3 XML) become
the gateway's typed errors.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

from gateway import (
    DeploymentFull,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    retry_after,
)
from gateway_bedrock.claude_output import scrub

# Bodies at least this large are hashed for the signature in a worker thread.
_HASH_OFF_LOOP = 1 << 20

_RATE_LIMITED = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException",
                           "SlowDown", "RequestLimitExceeded"})
_FULL = frozenset({"ServiceQuotaExceededException"})
_NOT_FOUND = frozenset({"ResourceNotFoundException", "NoSuchKey", "NoSuchUpload"})
_CONFLICT = frozenset({"ConflictException"})
# A refused credential, a missing permission, a missing bucket: the admin's problem (a 502).
_UNAVAILABLE = frozenset({
    "AccessDenied", "AccessDeniedException", "UnrecognizedClientException",
    "InvalidSignatureException", "SignatureDoesNotMatch", "InvalidAccessKeyId",
    "MissingAuthenticationTokenException", "IncompleteSignatureException", "ExpiredToken",
    "ExpiredTokenException", "InvalidToken", "InvalidClientTokenId", "NoSuchBucket",
    "AuthorizationHeaderMalformed", "RequestTimeTooSkewed", "RequestExpired",
    "InternalServerException", "InternalError", "ServiceUnavailable",
    "ServiceUnavailableException",
})


def error_code(status: int, raw: bytes, headers: Mapping[str, str]) -> tuple[str, str]:
    """(error code, message) of an AWS error answer, as botocore's parsers find them."""
    code = (headers.get("x-amzn-ErrorType") or "").split(":", 1)[0].strip()
    message = ""
    text = raw.strip()
    if text.startswith(b"{"):
        try:
            body = msgspec.json.decode(text)
        except msgspec.DecodeError:
            body = None
        if isinstance(body, dict):
            message = str(body.get("message") or body.get("Message") or "")
            if not code:
                code = str(body.get("__type") or body.get("code") or body.get("Code") or "")
    elif text.startswith(b"<"):
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            root = None
        if root is not None:
            code = code or (_child_text(root, "Code") or "")
            message = _child_text(root, "Message") or ""
    elif text:
        message = text[:500].decode("utf-8", "replace")
    return code.rsplit("#", 1)[-1], message


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == name:
            return child.text or ""
    return None


def error_for(status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamError:
    code, message = error_code(status, raw, headers)
    detail = f"{code or 'HTTP ' + str(status)}: {scrub(message)}".rstrip(": ")
    if code in _RATE_LIMITED or status == 429:
        return UpstreamRateLimited(detail, retry_after=retry_after(headers))
    if code in _FULL:
        return DeploymentFull(detail, status=status)
    if code in _NOT_FOUND:
        return UpstreamNotFound(detail, status=status)
    if code in _CONFLICT:
        return UpstreamConflict(scrub(message) or detail, status=status)
    if code in _UNAVAILABLE or status in (401, 403) or status >= 500:
        return UpstreamUnavailable(detail, status=status)
    if status == 404:
        return UpstreamNotFound(detail, status=status)
    if 400 <= status < 500:  # ValidationException and the other refusals of the request
        return UpstreamBadRequest(scrub(message) or detail, status=status)
    return UpstreamUnavailable(detail, status=status)


def _default_chain() -> Any:
    # Imported here: building a botocore session reads its data files.
    import botocore.session

    return botocore.session.Session().get_credentials()


class AwsCredentials:
    """The deployment's key pair, or botocore's default chain, resolved once at first use."""

    def __init__(self, access_key: str | None, secret_key: str | None,
                 token: str | None) -> None:
        self._static = Credentials(access_key, secret_key, token) \
            if access_key and secret_key else None
        self._chain: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        """Credentials with `access_key`, `secret_key`, `token`, as botocore's signers take."""
        if self._static is not None:
            return self._static
        if self._chain is None:
            async with self._lock:
                if self._chain is None:
                    try:
                        self._chain = await asyncio.to_thread(_default_chain)
                    except Exception as e:  # a broken profile, an unreachable role endpoint
                        raise UpstreamUnavailable(f"AWS credential chain: {e}") from e
                    if self._chain is None:
                        raise UpstreamUnavailable(
                            "no AWS credentials: neither aws_access_key_id / "
                            "aws_secret_access_key nor the default chain (AWS_* environment, "
                            "shared files, container or instance role) gave any")
        try:
            # Refreshable credentials may refresh (a network call) here.
            return await asyncio.to_thread(self._chain.get_frozen_credentials)
        except Exception as e:
            raise UpstreamUnavailable(f"AWS credential refresh: {e}") from e


class Aws:
    """Signed requests for one deployment: Bedrock's control plane and S3."""

    def __init__(self, http: aiohttp.ClientSession, credentials: AwsCredentials,
                 seconds: float) -> None:
        self.http = http
        self.credentials = credentials
        self.timeout = aiohttp.ClientTimeout(total=seconds)
        # Transfers may take minutes in total; what must not happen is silence.
        self.transfer_timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds,
                                                      sock_read=seconds)

    async def open(
        self,
        service: str,
        region: str,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        transfer: bool = False,
    ) -> aiohttp.ClientResponse:
        """Sign and send; the response unread (the caller releases it). `url` must be
        percent-encoded already: it is signed and sent byte for byte."""
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(
            await self.credentials.get(), service, region)
        if len(body) >= _HASH_OFF_LOOP:
            await asyncio.to_thread(signer.add_auth, request)
        else:
            signer.add_auth(request)
        try:
            resp = await self.http.request(
                method, URL(url, encoded=True), data=body or None,
                headers=dict(request.headers.items()),
                timeout=self.transfer_timeout if transfer else self.timeout)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{method} {service}: {type(e).__name__}: {e}") from e
        if resp.status in ok:
            return resp
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            resp.release()
        raise error_for(resp.status, raw, resp.headers)

    async def read(self, service: str, region: str, method: str, url: str,
                   **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
        """Sign, send and read the whole (small) answer."""
        resp = await self.open(service, region, method, url, **kwargs)
        try:
            return resp, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{method} {service}: {type(e).__name__}: {e}") from e
        finally:
            resp.release()
