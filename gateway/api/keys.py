"""/key/*: virtual keys, minted and managed with the master key (LiteLLM-compatible shapes)."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import ids, webhooks
from gateway.api import admin_fields as fields
from gateway.api.admin_fields import parse_duration
from gateway.api.common import gateway, int_param, json_response, read_json
from gateway.auth import hash_key
from gateway.budgets import iso, limit_fields
from gateway.errors import BadRequest, NotFound
from gateway.runtime import Gateway
from gateway.store import KeyRow

__all__ = ["key_info", "parse_duration", "routes"]

_SETTINGS = ("models", "team_id", "user_id", "key_alias", "duration", "metadata", "blocked",
             *fields.BUDGET_FIELDS)
GENERATE_FIELDS = ("key", *_SETTINGS)
_UPDATE_FIELDS = ("key", *_SETTINGS)
_REGENERATE_FIELDS = ("key", "new_key")
# A custom key: `sk-`, then 17 to 253 letters, digits, `_`, `-` or `.` (it travels in a header
# and in the path of /key/{key}/regenerate): 20 to 256 characters in all.
_CUSTOM_KEY = re.compile(r"^sk-[A-Za-z0-9_.-]{17,253}$")


def key_info(row: KeyRow) -> dict[str, Any]:
    return {
        "token": row.id,
        "key_alias": row.key_alias,
        "models": row.models,
        "team_id": row.team_id,
        "user_id": row.user_id,
        "metadata": row.metadata,
        "blocked": row.blocked,
        **limit_fields(row),
        "created_at": iso(row.created_at),
        "expires": iso(row.expires_at),
    }


async def _custom_key(gw: Gateway, value: Any, name: str) -> str:
    if not isinstance(value, str) or not _CUSTOM_KEY.match(value):
        raise BadRequest(f"{name} must start with 'sk-' and be 20 to 256 letters, digits, '_', "
                         "'-' or '.'.", param=name)
    if value == gw.settings.master_key or await gw.store.keys.hash_exists(hash_key(value)):
        raise BadRequest(f"This {name} is already in use; choose another.", param=name,
                         code="key_exists")
    return value


async def _links(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    """team_id (the team must exist) and user_id (created if missing, as LiteLLM does), of
    those present in `body`."""
    out: dict[str, Any] = {}
    if "team_id" in body:
        team_id = fields.optional_str(body, "team_id")
        if team_id is not None and not await gw.store.teams.exist([team_id]):
            raise BadRequest(f"No team {team_id!r}: create it with /team/new first.",
                             param="team_id", code="team_not_found")
        out["team_id"] = team_id
    if "user_id" in body:
        user_id = fields.optional_str(body, "user_id")
        if user_id is not None:
            await gw.store.users.ensure(user_id)
        out["user_id"] = user_id
    return out


def _expires(body: dict[str, Any]) -> int | None:
    duration = parse_duration(body.get("duration"))
    # Rounded up: a key lives at least its duration, never a fraction of a second less.
    return math.ceil(time.time()) + duration if duration else None


async def mint_key(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    """Check `body` (the fields of /key/generate), store the key; its answer, with the key."""
    fields.known_fields(body, GENERATE_FIELDS, "/key/generate")
    key = await _custom_key(gw, body["key"], "key") if body.get("key") is not None \
        else ids.new_key()
    models = fields.model_list(body, gw.groups)
    metadata = fields.metadata(body)
    hook_url = webhooks.key_webhook_url(metadata)
    key_alias = fields.optional_str(body, "key_alias")
    blocked = fields.boolean(body, "blocked")
    budget = fields.budget(body)
    reset_at = budget.pop("budget_reset_at", None)
    expires_at = _expires(body)
    links = await _links(gw, body)
    row = await gw.store.keys.insert(
        hash_key(key), models=models, key_alias=key_alias, team_id=links.get("team_id"),
        user_id=links.get("user_id"), metadata=metadata, expires_at=expires_at,
        blocked=blocked, **budget,
    )
    if reset_at is not None:
        row = await gw.store.keys.update(row.id, {"budget_reset_at": reset_at}) or row
    # metadata.webhook_url: the key's own webhook endpoint, its secret in this answer only.
    hook = await webhooks.set_key_endpoint(gw, row.id, hook_url) if hook_url else {}
    # The only time the key itself is ever shown: only its hash is stored.
    return {"key": key, **key_info(row), **hook}


async def generate_key(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    return json_response(await mint_key(gw, await read_json(request)))


async def _find(gw: Gateway, ref: str) -> KeyRow | None:
    if ref.startswith("sk-"):
        return await gw.store.key_by_hash(hash_key(ref))
    return await gw.store.key_by_id(ref)


async def _named(gw: Gateway, body: dict[str, Any]) -> KeyRow:
    ref = body.get("key")
    if not isinstance(ref, str) or not ref:
        raise BadRequest("key is required: the key (sk-…) or its token (key_…).", param="key")
    row = await _find(gw, ref)
    if row is None:
        raise NotFound("No such key.", param="key")
    return row


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


async def update_key(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, _UPDATE_FIELDS, "/key/update")
    row = await _named(gw, body)
    values: dict[str, Any] = fields.budget(body)
    hook_url: str | None = None
    if "models" in body:
        values["models"] = fields.model_list(body, gw.groups)
    if "metadata" in body:
        values["metadata"] = fields.metadata(body)
        hook_url = webhooks.key_webhook_url(values["metadata"])
    if "key_alias" in body:
        values["key_alias"] = fields.optional_str(body, "key_alias")
    if "blocked" in body:
        values["blocked"] = fields.boolean(body, "blocked")
    if "duration" in body:  # from now, as LiteLLM does; null: never expires
        values["expires_at"] = _expires(body)
    values.update(await _links(gw, body))
    updated = await gw.store.keys.update(row.id, values)
    if updated is None:
        raise NotFound("No such key.", param="key")
    # New metadata may add (secret shown once), move or remove the key's webhook endpoint.
    hook = await webhooks.set_key_endpoint(gw, row.id, hook_url) if "metadata" in body else {}
    return json_response({**key_info(updated), **hook})


async def regenerate_key(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    if "key" in request.path_params:
        body = {**body, "key": request.path_params["key"]}
    fields.known_fields(body, _REGENERATE_FIELDS, "/key/regenerate")
    row = await _named(gw, body)
    key = await _custom_key(gw, body["new_key"], "new_key") \
        if body.get("new_key") is not None else ids.new_key()
    updated = await gw.store.keys.rehash(row.id, hash_key(key))
    if updated is None:
        raise NotFound("No such key.", param="key")
    return json_response({"key": key, **key_info(updated)})


async def _set_blocked(request: Request, blocked: bool) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("key",), "/key/block" if blocked else "/key/unblock")
    row = await _named(gw, body)
    updated = await gw.store.keys.update(row.id, {"blocked": blocked})
    if updated is None:
        raise NotFound("No such key.", param="key")
    return json_response(key_info(updated))


async def block_key(request: Request) -> Response:
    return await _set_blocked(request, True)


async def unblock_key(request: Request) -> Response:
    return await _set_blocked(request, False)


async def list_keys(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    page = int_param(request, "page", 1, 1, 1_000_000)
    size = int_param(request, "size", 100, 1, 1000)
    q = request.query_params
    rows, total = await gw.store.keys.page(
        (page - 1) * size, size,
        team_id=q.get("team_id"), user_id=q.get("user_id"), key_alias=q.get("key_alias"),
    )
    full = q.get("return_full_object", "").lower() == "true"
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
    fields.known_fields(body, ("keys", "key_aliases"), "/key/delete")
    refs = fields.str_list(body, "keys")
    aliases = fields.str_list(body, "key_aliases")
    if not refs and not aliases:
        raise BadRequest("Pass keys (keys or tokens) or key_aliases: a non-empty list.",
                         param="keys")
    rows = [await _find(gw, ref) for ref in refs]
    found = [r.id for r in rows if r is not None]
    found += [r.id for r in await gw.store.keys.by_alias(aliases)] if aliases else []
    deleted = await gw.store.delete_keys(list(dict.fromkeys(found)))
    if not deleted:
        raise NotFound("None of these keys exist.", param="keys")
    return json_response({"deleted_keys": deleted})


routes = [
    Route("/key/generate", generate_key, methods=["POST"]),
    Route("/key/info", info, methods=["GET"]),
    Route("/key/list", list_keys, methods=["GET"]),
    Route("/key/update", update_key, methods=["POST"]),
    Route("/key/regenerate", regenerate_key, methods=["POST"]),
    Route("/key/{key}/regenerate", regenerate_key, methods=["POST"]),
    Route("/key/block", block_key, methods=["POST"]),
    Route("/key/unblock", unblock_key, methods=["POST"]),
    Route("/key/delete", delete_keys, methods=["POST"]),
]
