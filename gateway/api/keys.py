"""/key/*: virtual keys, minted and managed with the master key (LiteLLM-compatible shapes)."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import ids
from gateway.api.common import gateway, int_param, json_response, read_json
from gateway.auth import hash_key
from gateway.errors import BadRequest, NotFound
from gateway.runtime import Gateway
from gateway.store import KeyRow

_DURATION = re.compile(r"^(\d{1,12})([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_DURATION = 100 * 365 * 86400


def parse_duration(value: Any) -> int | None:
    if value in (None, ""):
        return None
    m = _DURATION.match(str(value).strip())
    if not m:
        raise BadRequest("duration must look like '30s', '15m', '12h', '7d' or '2w'.",
                         param="duration")
    seconds = int(m.group(1)) * _SECONDS[m.group(2)]
    if not 0 < seconds <= _MAX_DURATION:
        # 0 would mint a key that never expires; a huge one overflows the database's integer.
        raise BadRequest("duration must be more than 0 and at most 100 years.", param="duration")
    return seconds


def key_info(row: KeyRow) -> dict[str, Any]:
    return {
        "token": row.id,
        "key_alias": row.key_alias,
        "models": row.models,
        "team_id": row.team_id,
        "user_id": row.user_id,
        "metadata": row.metadata,
        "created_at": row.created_at,
        "expires": row.expires_at,
    }


def _optional_str(body: dict[str, Any], name: str, max_length: int = 256) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string.", param=name)
    if value is not None and len(value) > max_length:  # the database column's size
        raise BadRequest(f"{name} is longer than {max_length} characters.", param=name)
    return value


async def generate_key(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    models = body.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise BadRequest("models must be a list of model group names.", param="models")
    unknown = [m for m in models if m not in gw.groups]
    if unknown:
        raise BadRequest(f"Unknown model group {unknown[0]!r}.", param="models",
                         code="model_not_found")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object.", param="metadata")
    duration = parse_duration(body.get("duration"))
    key = ids.new_key()
    row = await gw.store.insert_key(
        hash_key(key),
        models=models,
        key_alias=_optional_str(body, "key_alias"),
        team_id=_optional_str(body, "team_id"),
        user_id=_optional_str(body, "user_id"),
        metadata=metadata,
        # Rounded up: a key lives at least its duration, never a fraction of a second less.
        expires_at=math.ceil(time.time()) + duration if duration else None,
    )
    # The only time the key itself is ever shown: only its hash is stored.
    return json_response({"key": key, **key_info(row)})


async def _find(gw: Gateway, ref: str) -> KeyRow | None:
    if ref.startswith("sk-"):
        return await gw.store.key_by_hash(hash_key(ref))
    return await gw.store.key_by_id(ref)


async def info(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    ref = request.query_params.get("key")
    if principal.is_master:
        if not ref:
            raise BadRequest("Pass ?key=<key or token> with the master key.", param="key")
        row = await _find(gw, ref)
    else:
        # A virtual key may only read about itself.
        row = principal.key
        if ref and (await _find(gw, ref)) != row:
            row = None
    if row is None:
        raise NotFound("No such key.", param="key")
    return json_response({"key": row.id, "info": key_info(row)})


async def list_keys(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    page = int_param(request, "page", 1, 1, 1_000_000)
    size = int_param(request, "size", 100, 1, 1000)
    rows, total = await gw.store.list_keys((page - 1) * size, size)
    full = request.query_params.get("return_full_object", "").lower() == "true"
    return json_response({
        "keys": [key_info(r) if full else r.id for r in rows],
        "total_count": total,
        "current_page": page,
        "total_pages": (total + size - 1) // size,
    })


async def delete_keys(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    refs = body.get("keys")
    if not isinstance(refs, list) or not refs or not all(isinstance(k, str) for k in refs):
        raise BadRequest("keys must be a non-empty list of keys or tokens.", param="keys")
    rows = [await _find(gw, ref) for ref in refs]
    deleted = await gw.store.delete_keys([r.id for r in rows if r is not None])
    if not deleted:
        raise NotFound("None of these keys exist.", param="keys")
    return json_response({"deleted_keys": deleted})


routes = [
    Route("/key/generate", generate_key, methods=["POST"]),
    Route("/key/info", info, methods=["GET"]),
    Route("/key/list", list_keys, methods=["GET"]),
    Route("/key/delete", delete_keys, methods=["POST"]),
]
