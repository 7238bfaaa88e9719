"""/user/*: users (master key only, LiteLLM's shapes). A user's `models` narrow what its keys
may use; a blocked user's keys answer 401; every key of a user reaches the user's files and
batches."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api import admin_fields as fields
from gateway.api.common import gateway, int_param, json_response, read_json
from gateway.api.keys import key_info, mint_key
from gateway.api.teams import team_object
from gateway.budgets import iso, limit_fields
from gateway.errors import BadRequest, NotFound
from gateway.runtime import Gateway
from gateway.store import UserRow

_SETTINGS = ("user_email", "models", "teams", "metadata", "blocked", *fields.BUDGET_FIELDS)
# /user/new also mints the user's first key (auto_create_key, default true) with these.
_KEY_FIELDS = ("key_alias", "duration")


def user_object(row: UserRow) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "user_email": row.user_email,
        "models": row.models,
        "teams": row.teams,
        "metadata": row.metadata,
        "blocked": row.blocked,
        **limit_fields(row),
        "created_at": iso(row.created_at),
    }


async def _settings(gw: Gateway, body: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """The user settings present in `body`, checked, and its `teams` (None: not given)."""
    values: dict[str, Any] = fields.budget(body)
    if "user_email" in body:
        values["user_email"] = fields.optional_str(body, "user_email")
    if "models" in body:
        values["models"] = fields.model_list(body, gw.groups)
    if "metadata" in body:
        values["metadata"] = fields.metadata(body)
    if "blocked" in body:
        values["blocked"] = fields.boolean(body, "blocked")
    teams = None
    if "teams" in body:
        teams = fields.str_list(body, "teams")
        missing = sorted(set(teams) - await gw.store.teams.exist(teams))
        if missing:
            raise BadRequest(f"No team {missing[0]!r}: create it with /team/new first.",
                             param="teams", code="team_not_found")
    return values, teams


async def _user(gw: Gateway, user_id: str | None) -> UserRow:
    if not user_id:
        raise BadRequest("user_id is required.", param="user_id")
    row = await gw.store.users.get(user_id)
    if row is None:
        raise NotFound(f"No user {user_id!r}.", param="user_id")
    return row


async def new_user(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("user_id", *_SETTINGS, "auto_create_key", *_KEY_FIELDS),
                        "/user/new")
    user_id = fields.optional_str(body, "user_id") or str(uuid.uuid4())
    values, teams = await _settings(gw, body)
    auto_key = body.get("auto_create_key", True)
    if not isinstance(auto_key, bool):
        raise BadRequest("auto_create_key must be true or false.", param="auto_create_key")
    key_body = {name: body[name] for name in _KEY_FIELDS if name in body}
    fields.parse_duration(key_body.get("duration"))  # checked before anything is stored
    fields.optional_str(key_body, "key_alias")
    row = UserRow(
        user_id=user_id, user_email=values.get("user_email"), models=values.get("models", []),
        metadata=values.get("metadata", {}), blocked=values.get("blocked", False),
        max_budget=values.get("max_budget"), budget_duration=values.get("budget_duration"),
        rpm_limit=values.get("rpm_limit"), created_at=int(time.time()),
        budget_reset_at=values.get("budget_reset_at"),
    )
    if not await gw.store.users.insert(row):
        raise BadRequest(f"User {user_id!r} already exists.", param="user_id",
                         code="user_exists")
    if teams:
        await gw.store.teams.set_memberships(user_id, teams)
    # The key inherits nothing: the user's models and blocked flag apply to it at every
    # request, so its own list stays empty (no further restriction).
    key: dict[str, Any] = {"key": None, "token": None, "expires": None}
    if auto_key:
        minted = await mint_key(gw, {**key_body, "user_id": user_id})
        key = {"key": minted["key"], "token": minted["token"], "expires": minted["expires"]}
    return json_response({**user_object(await _user(gw, user_id)), **key})


async def update_user(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("user_id", *_SETTINGS), "/user/update")
    row = await _user(gw, fields.optional_str(body, "user_id"))
    values, teams = await _settings(gw, body)
    await gw.store.users.update(row.user_id, values)
    if teams is not None:
        await gw.store.teams.set_memberships(row.user_id, teams)
    return json_response({"user_id": row.user_id,
                          "data": user_object(await _user(gw, row.user_id))})


async def delete_users(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    deleted = await gw.store.users.delete(fields.ids_to_delete(body, "user_ids", "/user/delete"))
    if not deleted:
        raise NotFound("None of these users exist.", param="user_ids")
    return json_response({"deleted_users": deleted})


async def user_info(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    row = await _user(gw, request.query_params.get("user_id"))
    user_keys, _ = await gw.store.keys.page(0, 1000, user_id=row.user_id)
    teams = await gw.store.teams.find(team_ids=row.teams) if row.teams else []
    return json_response({"user_id": row.user_id, "user_info": user_object(row),
                          "keys": [key_info(k) for k in user_keys],
                          "teams": [team_object(t) for t in teams]})


async def list_users(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    page = int_param(request, "page", 1, 1, 1_000_000)
    size = int_param(request, "page_size", 25, 1, 1000)
    q = request.query_params
    wanted = [u.strip() for u in q.get("user_ids", "").split(",") if u.strip()]
    rows, total = await gw.store.users.page(
        user_ids=wanted or None, team_id=q.get("team_id"), offset=(page - 1) * size, limit=size,
    )
    return json_response({
        "users": [user_object(r) for r in rows],
        "total": total,
        "page": page,
        "page_size": size,
        "total_pages": (total + size - 1) // size,
    })


routes = [
    Route("/user/new", new_user, methods=["POST"]),
    Route("/user/update", update_user, methods=["POST"]),
    Route("/user/delete", delete_users, methods=["POST"]),
    Route("/user/info", user_info, methods=["GET"]),
    Route("/user/list", list_users, methods=["GET"]),
]
