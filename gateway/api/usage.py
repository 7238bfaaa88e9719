"""/usage: what finished batches used, one row per batch, recorded once."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import gateway, int_param, json_response


async def list_usage(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    # The master key sees every key's batches (or one key's owner's, with ?key=<token>: a key
    # with a user_id shares its user's batches).
    owner = request.query_params.get("key") if principal.is_master else principal.owner
    if principal.is_master and owner:
        key = await gw.store.key_by_id(owner)
        owner = key.owner if key is not None else owner
    rows = await gw.store.list_usage(owner, int_param(request, "limit", 100, 1, 10_000))
    if not principal.is_master:
        # Which deployment ran a batch is the operator's business, not the tenant's.
        for row in rows:
            row.pop("deployment_id", None)
    return json_response({"object": "list", "data": rows})


routes = [Route("/usage", list_usage, methods=["GET"])]
