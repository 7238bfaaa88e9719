"""/team/*: teams (master key only, LiteLLM's shapes). A team's `models` narrow what its keys
may use; a blocked team's keys answer 401."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api import admin_fields as fields
from gateway.api.common import gateway, json_response, read_json
from gateway.api.keys import key_info
from gateway.budgets import iso, limit_fields
from gateway.errors import BadRequest, NotFound
from gateway.runtime import Gateway
from gateway.store import TeamRow, UserRow

_SETTINGS = ("team_alias", "models", "metadata", "blocked", *fields.BUDGET_FIELDS)
_ROLES = ("admin", "user")


def team_object(row: TeamRow) -> dict[str, Any]:
    return {
        "team_id": row.team_id,
        "team_alias": row.team_alias,
        "models": row.models,
        "metadata": row.metadata,
        "blocked": row.blocked,
        **limit_fields(row),
        "members_with_roles": [{"user_id": u, "role": r} for u, r in row.members],
        "created_at": iso(row.created_at),
    }


def _settings(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    """The team settings present in `body`, checked."""
    values: dict[str, Any] = fields.budget(body)
    if "team_alias" in body:
        values["team_alias"] = fields.optional_str(body, "team_alias")
    if "models" in body:
        values["models"] = fields.model_list(body, gw.groups)
    if "metadata" in body:
        values["metadata"] = fields.metadata(body)
    if "blocked" in body:
        values["blocked"] = fields.boolean(body, "blocked")
    return values


async def _team(gw: Gateway, team_id: str | None) -> TeamRow:
    if not team_id:
        raise BadRequest("team_id is required.", param="team_id")
    row = await gw.store.teams.get(team_id)
    if row is None:
        raise NotFound(f"No team {team_id!r}.", param="team_id")
    return row


def _members(value: Any) -> list[dict[str, Any]]:
    """`member` / `members_with_roles`: one {user_id | user_email, role} or a list of them."""
    items = value if isinstance(value, list) else [value]
    for m in items:
        if not isinstance(m, dict) or set(m) - {"user_id", "user_email", "role"} or not (
            isinstance(m.get("user_id"), str) or isinstance(m.get("user_email"), str)
        ) or m.get("role", "user") not in _ROLES:
            raise BadRequest("member must be {\"user_id\" or \"user_email\", \"role\": "
                             "\"user\" | \"admin\"} or a list of them.", param="member")
    return items


async def member_user(gw: Gateway, m: dict[str, Any]) -> UserRow:
    """The user a member entry names; created if missing, as LiteLLM does."""
    user_id = fields.optional_str(m, "user_id")
    email = fields.optional_str(m, "user_email")
    if user_id is None and email is not None:
        found = await gw.store.users.by_email(email)
        if found is not None:
            return found
    user_id = user_id or str(uuid.uuid4())
    await gw.store.users.ensure(user_id)
    if email is not None:
        await gw.store.users.update(user_id, {"user_email": email})
    row = await gw.store.users.get(user_id)
    if row is None:  # deleted meanwhile
        raise NotFound(f"No user {user_id!r}.", param="member")
    return row


async def _add_members(gw: Gateway, team_id: str, value: Any) -> list[str]:
    added = []
    for m in _members(value):
        user = await member_user(gw, m)
        await gw.store.teams.add_member(team_id, user.user_id, m.get("role", "user"))
        added.append(user.user_id)
    return added


async def new_team(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("team_id", *_SETTINGS, "members_with_roles"), "/team/new")
    team_id = fields.optional_str(body, "team_id") or str(uuid.uuid4())
    values = _settings(gw, body)
    members = _members(body["members_with_roles"]) if body.get("members_with_roles") else []
    row = TeamRow(
        team_id=team_id, team_alias=values.get("team_alias"), models=values.get("models", []),
        metadata=values.get("metadata", {}), blocked=values.get("blocked", False),
        max_budget=values.get("max_budget"), budget_duration=values.get("budget_duration"),
        rpm_limit=values.get("rpm_limit"), created_at=int(time.time()),
        budget_reset_at=values.get("budget_reset_at"),
    )
    if not await gw.store.teams.insert(row):
        raise BadRequest(f"Team {team_id!r} already exists.", param="team_id",
                         code="team_exists")
    if members:
        await _add_members(gw, team_id, members)
    return json_response(team_object(await _team(gw, team_id)))


async def update_team(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("team_id", *_SETTINGS), "/team/update")
    row = await _team(gw, fields.optional_str(body, "team_id"))
    await gw.store.teams.update(row.team_id, _settings(gw, body))
    return json_response({"team_id": row.team_id,
                          "data": team_object(await _team(gw, row.team_id))})


async def delete_teams(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    deleted = await gw.store.teams.delete(fields.ids_to_delete(body, "team_ids", "/team/delete"))
    if not deleted:
        raise NotFound("None of these teams exist.", param="team_ids")
    return json_response({"deleted_teams": deleted})


async def team_info(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    row = await _team(gw, request.query_params.get("team_id"))
    team_keys, _ = await gw.store.keys.page(0, 1000, team_id=row.team_id)
    return json_response({"team_id": row.team_id, "team_info": team_object(row),
                          "keys": [key_info(k) for k in team_keys]})


async def list_teams(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    rows = await gw.store.teams.find(user_id=request.query_params.get("user_id"))
    return json_response([team_object(r) for r in rows])


async def _set_blocked(request: Request, blocked: bool) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("team_id",), "/team/block" if blocked else "/team/unblock")
    row = await _team(gw, fields.optional_str(body, "team_id"))
    await gw.store.teams.update(row.team_id, {"blocked": blocked})
    return json_response(team_object(await _team(gw, row.team_id)))


async def block_team(request: Request) -> Response:
    return await _set_blocked(request, True)


async def unblock_team(request: Request) -> Response:
    return await _set_blocked(request, False)


async def member_add(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("team_id", "member"), "/team/member_add")
    row = await _team(gw, fields.optional_str(body, "team_id"))
    if not body.get("member"):
        raise BadRequest("member is required.", param="member")
    added = await _add_members(gw, row.team_id, body["member"])
    return json_response({**team_object(await _team(gw, row.team_id)), "updated_users": added})


async def member_delete(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    body = await read_json(request)
    fields.known_fields(body, ("team_id", "user_id", "user_email"), "/team/member_delete")
    row = await _team(gw, fields.optional_str(body, "team_id"))
    user_id = fields.optional_str(body, "user_id")
    email = fields.optional_str(body, "user_email")
    if user_id is None and email is not None:
        found = await gw.store.users.by_email(email)
        user_id = found.user_id if found else None
    if user_id is None and email is None:
        raise BadRequest("Pass user_id or user_email.", param="user_id")
    if user_id is None or not await gw.store.teams.remove_member(row.team_id, user_id):
        raise NotFound(f"That user is not a member of team {row.team_id!r}.", param="user_id")
    return json_response(team_object(await _team(gw, row.team_id)))


routes = [
    Route("/team/new", new_team, methods=["POST"]),
    Route("/team/update", update_team, methods=["POST"]),
    Route("/team/delete", delete_teams, methods=["POST"]),
    Route("/team/info", team_info, methods=["GET"]),
    Route("/team/list", list_teams, methods=["GET"]),
    Route("/team/block", block_team, methods=["POST"]),
    Route("/team/unblock", unblock_team, methods=["POST"]),
    Route("/team/member_add", member_add, methods=["POST"]),
    Route("/team/member_delete", member_delete, methods=["POST"]),
]
