"""Azure's wire shapes beside OpenAI's: line urls per surface, Microsoft's error envelope and
the loose Batch JSON some versions answer with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway import UpstreamUnavailable

# The versioned API documents line urls and batch endpoints without `/v1`; the v1 surface
# documents them with it. `/v1/responses` keeps its prefix on both.
_UNPREFIXED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_TIMESTAMPS = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
    "failed_at", "expired_at", "cancelling_at", "cancelled_at",
)
_STATUSES = {
    "validating": "validating", "in_progress": "in_progress", "inprogress": "in_progress",
    "running": "in_progress", "finalizing": "finalizing", "completed": "completed",
    "succeeded": "completed", "failed": "failed", "expired": "expired",
    "cancelling": "cancelling", "canceling": "cancelling", "cancelled": "cancelled",
    "canceled": "cancelled",
}


def azure_url(url: str, v1: bool) -> str:
    """An OpenAI line `url` (or batch `endpoint`, always `/v1/...`) as the surface documents it."""
    if v1:
        return url
    return url.removeprefix("/v1") if url in _UNPREFIXED else url


def epoch(value: Any) -> int | None:
    """Unix seconds from an int, a float or an ISO-8601 string (an old Azure shape)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            pass
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def azure_error(body: Any) -> tuple[str, str]:
    """(codes, message) from Microsoft's envelope, the v1 OpenAI envelope or an Entra error.

    `codes` joins `code`, `innererror.code` and `type`, lower-cased, for substring tests.
    """
    if not isinstance(body, dict):
        return "", str(body or "")[:500]
    err = body.get("error")
    if isinstance(err, str):  # Entra: {"error": "invalid_client", "error_description": ...}
        return err.lower(), str(body.get("error_description") or err)
    if not isinstance(err, dict):
        return "", str(body)[:500]
    codes = [err.get("code"), err.get("type")]
    inner = err.get("innererror") or err.get("inner_error")
    if isinstance(inner, dict):
        codes.append(inner.get("code"))
    return " ".join(str(c).lower() for c in codes if c), str(err.get("message") or "")


def normalise_batch(batch: Any, scrub: Callable[[str], str]) -> dict[str, Any]:
    """Azure's Batch JSON in OpenAI's types: ISO timestamps, `"Validating"`-style statuses,
    `null` count members, `""` file ids, string error lines. Fields OpenAI's Batch does not have
    (`input_blob`, `endpoint: null`, ...) are dropped later by the typed Batch."""
    if not isinstance(batch, dict) or not batch.get("id"):
        raise UpstreamUnavailable(f"unexpected batch object: {str(batch)[:200]}")
    out = dict(batch)
    # An unknown state is still running as far as a client can tell.
    out["status"] = _STATUSES.get(str(batch.get("status") or "validating").lower(), "in_progress")
    for key in _TIMESTAMPS:
        out[key] = epoch(batch.get(key))
    for key in ("output_file_id", "error_file_id"):
        out[key] = batch.get(key) or None
    counts = batch.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    out["request_counts"] = {k: _int(counts.get(k)) for k in ("total", "completed", "failed")}
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else errors
    out["errors"] = {"data": [_batch_error(e, scrub) for e in data]} \
        if isinstance(data, list) else None
    if not isinstance(batch.get("usage"), dict):
        out["usage"] = None
    if out["status"] == "failed" and out["failed_at"] is None:
        out["failed_at"] = out["completed_at"]  # seen in a failed-job example
    return out


def _batch_error(e: Any, scrub: Callable[[str], str]) -> dict[str, Any]:
    e = e if isinstance(e, dict) else {"message": str(e)}
    message, code, param = e.get("message"), e.get("code"), e.get("param")
    return {
        "code": str(code) if code is not None else None,
        "line": _line(e.get("line")),  # a string in Azure's spec
        "message": scrub(message) if isinstance(message, str) else None,
        "param": str(param) if param is not None else None,
    }


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _line(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
