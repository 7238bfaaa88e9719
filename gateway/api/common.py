"""Small helpers shared by the API modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import Principal
from gateway.errors import BadRequest, PermissionDenied
from gateway.runtime import Gateway

_encode = msgspec.json.Encoder().encode


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json")


async def read_json(request: Request, limit: int | None = None) -> dict[str, Any]:
    """The JSON object of a control-plane body (batch create, key and admin routes): small by
    nature, so one larger than `max_json_body_kb` is refused before it is read whole."""
    limit = limit or gateway(request).settings.max_json_body_bytes
    too_large = BadRequest(f"Request body is larger than {limit // 1024} KiB.",
                           code="body_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    if not raw:
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise BadRequest(f"Request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequest("Request body is nested too deeply.", code="too_deep") from e
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    return body


def list_owner(request: Request, principal: Principal) -> str | None:
    """Whose things a list shows: the caller's, or with `all=true` every tenant's (None; the
    master key's admin view: 403 for anyone else)."""
    everyone = request.query_params.get("all", "false").lower()
    if everyone not in ("true", "false"):
        raise BadRequest("all must be 'true' or 'false'.", param="all")
    if everyone == "false":
        return principal.owner
    if not principal.is_master:
        raise PermissionDenied("all=true needs the master key.", param="all",
                               code="master_key_required")
    return None


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer.", param=name) from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}.", param=name)
    return value


def list_envelope(data: Sequence[Any], has_more: bool,
                  ids: Sequence[str] | None = None) -> dict[str, Any]:
    """OpenAI's list page; items are dicts or Structs with an `id`, or anything (stored JSON
    as `msgspec.Raw`, say) with their `ids` given."""

    def id_of(i: int) -> Any:
        if ids is not None:
            return ids[i]
        item = data[i]
        return item["id"] if isinstance(item, dict) else item.id

    return {
        "object": "list",
        "data": data,
        "first_id": id_of(0) if data else None,
        "last_id": id_of(-1) if data else None,
        "has_more": has_more,
    }
