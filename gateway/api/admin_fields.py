"""Checking the fields of the admin routes' bodies (/key, /team, /user): every field is known
and well-typed, or the request is a 400 naming it. Nothing is silently dropped."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from gateway.errors import BadRequest
from gateway.store.spend import window_end

# Enforced: gateway/budgets.py (max_budget, budget_duration), gateway/ratelimit.py (rpm_limit).
BUDGET_FIELDS = ("max_budget", "budget_duration", "rpm_limit")

_DURATION = re.compile(r"^(\d{1,12})([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_DURATION = 100 * 365 * 86400
_BUDGET_DURATION = re.compile(r"^\d{1,6}(s|m|h|d|w|mo)$")


def known_fields(body: dict[str, Any], allowed: Iterable[str], route: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"{route} does not support {', '.join(unknown)} (supported: "
            f"{', '.join(sorted(allowed))}).",
            param=unknown[0], code="unsupported_field",
        )


def parse_duration(value: Any, name: str = "duration") -> int | None:
    if value in (None, ""):
        return None
    m = _DURATION.match(str(value).strip())
    if not m:
        raise BadRequest(f"{name} must look like '30s', '15m', '12h', '7d' or '2w'.", param=name)
    seconds = int(m.group(1)) * _SECONDS[m.group(2)]
    if not 0 < seconds <= _MAX_DURATION:
        # 0 would mint a key that never expires; a huge one overflows the database's integer.
        raise BadRequest(f"{name} must be more than 0 and at most 100 years.", param=name)
    return seconds


def optional_str(body: dict[str, Any], name: str, max_length: int = 256) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string.", param=name)
    if value is not None and len(value) > max_length:  # the database column's size
        raise BadRequest(f"{name} is longer than {max_length} characters.", param=name)
    return value


def required_str(body: dict[str, Any], name: str) -> str:
    value = optional_str(body, name)
    if not value:
        raise BadRequest(f"{name} is required.", param=name)
    return value


def str_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, str) and 0 < len(v) <= 256 for v in value
    ):
        raise BadRequest(f"{name} must be a list of strings.", param=name)
    return list(dict.fromkeys(value))


def model_list(body: dict[str, Any], groups: Iterable[str]) -> list[str]:
    """`models`: configured model group names; empty = every group."""
    models = str_list(body, "models")
    known = set(groups)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise BadRequest(f"Unknown model group {unknown[0]!r}.", param="models",
                         code="model_not_found")
    return models


def metadata(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("metadata must be an object.", param="metadata")
    return value


def boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false.", param=name)
    return value


def budget(body: dict[str, Any]) -> dict[str, Any]:
    """max_budget (≥ 0), budget_duration ('30d', '1h', '1mo'...), rpm_limit (≥ 0): of those
    present in `body`, their checked values (None clears one). A budget_duration starts a new
    budget window now (`budget_reset_at`), as LiteLLM does."""
    out: dict[str, Any] = {}
    if "max_budget" in body:
        v = body["max_budget"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
            raise BadRequest("max_budget must be a number, 0 or more.", param="max_budget")
        out["max_budget"] = None if v is None else float(v)
    if "budget_duration" in body:
        v = body["budget_duration"]
        if v is not None and (not isinstance(v, str) or not _BUDGET_DURATION.match(v)):
            raise BadRequest("budget_duration must look like '30s', '30m', '24h', '30d' or "
                             "'1mo'.", param="budget_duration")
        out["budget_duration"] = v
        out["budget_reset_at"] = None if v is None else window_end(int(time.time()), v)
    if "rpm_limit" in body:
        v = body["rpm_limit"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or not 0 <= v < 2**31):
            raise BadRequest("rpm_limit must be a whole number, 0 or more.", param="rpm_limit")
        out["rpm_limit"] = v
    return out


def ids_to_delete(body: dict[str, Any], name: str, route: str) -> list[str]:
    """The body of a delete route: only `name`, a non-empty list of ids."""
    known_fields(body, (name,), route)
    ids = str_list(body, name)
    if not ids:
        raise BadRequest(f"{name} must be a non-empty list.", param=name)
    return ids
