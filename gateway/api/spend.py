"""/spend/logs: one entry per priced batch (LiteLLM's route and entry fields, a batch where
LiteLLM has a request). The master key sees every entry; a virtual key sees its own: its
user's (every key of the user) when it has a user, else its own."""

from __future__ import annotations

import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import gateway, int_param, json_response
from gateway.auth import hash_key
from gateway.budgets import iso
from gateway.errors import BadRequest

# LiteLLM's date formats (/spend/logs: a day; /spend/logs/ui: a day and time), and ISO 8601.
_DAY = "%Y-%m-%d"
_DAY_TIME = "%Y-%m-%d %H:%M:%S"


def _date(request: Request, name: str, end: bool) -> float | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        day = datetime.datetime.strptime(raw, _DAY).replace(tzinfo=datetime.UTC)
    except ValueError:
        pass
    else:  # a day: end_date includes the whole of it
        return (day + datetime.timedelta(days=1 if end else 0)).timestamp()
    try:
        at = datetime.datetime.strptime(raw, _DAY_TIME)
    except ValueError:
        try:
            at = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{name} must be a date (YYYY-MM-DD), 'YYYY-MM-DD HH:MM:SS' or "
                             "ISO 8601, in UTC unless it says otherwise.", param=name) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    # A time: end_date includes that second.
    return at.timestamp() + (1.0 if end else 0.0)


def _entry(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": r["request_id"],
        "call_type": "batch",
        "api_key": r["api_key"],
        "user": r["user_id"],
        "team_id": r["team_id"],
        "model": r["model_group"],
        "model_group": r["model_group"],
        "status": r["status"],
        "spend": r["spend"],
        "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"],
        "total_tokens": r["total_tokens"],
        "startTime": iso(r["start_time"]),
        "endTime": iso(r["end_time"]),
    }


async def spend_logs(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    q = request.query_params
    if q.get("summarize", "false").lower() != "false":
        raise BadRequest("summarize=true (spend per day) is not supported: entries are per "
                         "batch.", param="summarize", code="unsupported_field")
    api_key = q.get("api_key") or None
    if api_key is not None and api_key.startswith("sk-"):
        key = await gw.store.key_by_hash(hash_key(api_key))
        api_key = key.id if key else "key_unknown"  # matches nothing
    page = int_param(request, "page", 1, 1, 1_000_000)
    size = int_param(request, "page_size", 100, 1, 1000)
    own = principal.key
    rows, total = await gw.store.spend.logs(
        api_key=api_key, user_id=q.get("user_id") or None, team_id=q.get("team_id") or None,
        request_id=q.get("request_id") or None,
        start=_date(request, "start_date", False), end=_date(request, "end_date", True),
        offset=(page - 1) * size, limit=size,
        owner_user=own.user_id if own else None,
        owner_key=own.id if own and not own.user_id else None,
    )
    response = json_response([_entry(r) for r in rows])
    response.headers["x-total-count"] = str(total)
    return response


routes = [Route("/spend/logs", spend_logs, methods=["GET"])]
