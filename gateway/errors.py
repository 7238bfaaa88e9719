"""Errors: the ones the core raises and the typed ones adapters raise.

Every error leaves the gateway as the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}` with a status code the OpenAI SDK maps to the
right exception class. Adapter errors (`UpstreamError` subclasses) never carry provider ids,
credentials or deployment names in their client-facing message: the core writes that message.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec


class GatewayError(Exception):
    status: int = 400
    type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> bytes:
        return envelope(self.message, self.type, self.param, self.code)


def envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    err: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    return msgspec.json.encode({"error": err})


class BadRequest(GatewayError):
    status = 400


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404


class Conflict(GatewayError):
    status = 409


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"


class UpstreamFailed(GatewayError):
    status = 502
    type = "api_error"


class ConfigError(Exception):
    """A bad config.yaml or plugin setup. Raised at start-up; the message names entry and field."""


# -- errors adapters raise -----------------------------------------------------------------------


class UpstreamError(Exception):
    """Base for failures an adapter reports. `detail` is for logs, never for clients."""

    def __init__(
        self, detail: str = "", *, status: int | None = None, retryable: bool = True
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.upstream_status = status
        # False: trying the same call again cannot help (a refused credential, say).
        self.retryable = retryable


class UpstreamNotFound(UpstreamError):
    """The native object does not exist (any more) upstream."""


class UpstreamBadRequest(UpstreamError):
    """The provider rejected the request as invalid. `detail` may be shown after scrubbing."""


class UpstreamConflict(UpstreamError):
    """The object is in a state that does not allow the operation (e.g. cancel a done batch)."""


class UpstreamRateLimited(UpstreamError):
    """429 from upstream. The deployment is skipped for new work until `retry_after` passes."""

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail, status=429, retryable=True)
        self.retry_after = retry_after


class DeploymentFull(UpstreamError):
    """The deployment cannot take more work now (e.g. Azure `token_limit_exceeded`).

    Batch creation fails over to the next deployment holding the file.
    """


class UpstreamUnavailable(UpstreamError):
    """5xx, timeout, connection failure or a credential the provider refused: retryable
    elsewhere, reported to clients as 502."""


class UnsupportedOperation(UpstreamError):
    """The provider cannot do this at all (e.g. delete). Reported as 400, never 500."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation)
        self.operation = operation


class Unsuitable(UpstreamError):
    """Not here: the batch cannot run on this deployment (too few requests, an endpoint it
    lacks), but may run on another that holds the file. Not held against the deployment."""


# Failures after which another deployment holding the same file may be tried.
FAILOVER_ERRORS: tuple[type[UpstreamError], ...] = (
    UpstreamRateLimited,
    DeploymentFull,
    UpstreamUnavailable,
)


# What may name an account, a resource or a host in a provider's message: never shown.
_SENSITIVE = [
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I), "[uri]"),  # https://..., s3://..., gs://...
    (re.compile(r"\barn:aws[\w-]*:\S+"), "[arn]"),
    (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), "[email]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "[host]"),
    # Prefixed ids (org-..., proj_..., file-..., batch_..., sk-...): a digit or a capital in
    # the rest tells them from snake_case field names such as max_completion_tokens.
    (re.compile(r"\b[a-z]{2,12}[-_](?=[A-Za-z0-9_-]*[0-9A-Z])[A-Za-z0-9_-]{8,}\b"), "[id]"),
    # Long tokens with digits: keys, hashes, uuids, subscription ids.
    (re.compile(r"\b(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}\b"), "[id]"),
]


def scrub(text: str, replacements: dict[str, str]) -> str:
    """An upstream message fit for a client: native ids the gateway knows become gateway ids,
    and anything else that looks like an id, a key, an address or a host is removed."""
    marks: dict[str, str] = {}
    for native, public in replacements.items():
        if native and native in text:
            mark = f"\x00{len(marks)}\x00"
            marks[mark] = public
            text = text.replace(native, mark)
    for pattern, placeholder in _SENSITIVE:
        text = pattern.sub(placeholder, text)
    for mark, public in marks.items():
        text = text.replace(mark, public)
    return text[:1000]


def client_error(
    error: UpstreamError, model_group: str, replacements: dict[str, str] | None = None
) -> GatewayError:
    """The error a client sees for an adapter failure, in terms of the model group only."""
    where = f"model group {model_group!r}"
    if isinstance(error, UpstreamNotFound):
        return NotFound(f"The upstream object for {where} no longer exists.", code="not_found")
    if isinstance(error, UpstreamConflict):
        return Conflict(scrub(error.detail, replacements or {}) or f"Conflict upstream in {where}.")
    if isinstance(error, UpstreamRateLimited):
        headers = {"Retry-After": str(int(error.retry_after))} if error.retry_after else {}
        return RateLimited(
            f"Rate limited upstream for {where}; retry later.",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if isinstance(error, DeploymentFull):
        return RateLimited(
            f"Every deployment of {where} is at capacity; retry later.", code="capacity_exceeded"
        )
    if isinstance(error, UnsupportedOperation):
        return BadRequest(
            f"The provider behind {where} cannot {error.operation}.",
            code="unsupported_operation",
        )
    if isinstance(error, UpstreamBadRequest):
        detail = scrub(error.detail, replacements or {})
        return BadRequest(f"The provider for {where} rejected the request: {detail}",
                          code="upstream_rejected")
    status = f" (HTTP {error.upstream_status})" if error.upstream_status else ""
    return UpstreamFailed(f"The upstream for {where} failed{status}.", code="upstream_error")
