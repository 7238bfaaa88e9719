"""/webhooks/deliveries: the batch events sent (or being sent) to the configured endpoints,
for the master key."""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import gateway, int_param, json_response
from gateway.errors import BadRequest

STATUSES = ("pending", "delivered", "failed")


async def list_deliveries(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}.", param="status")
    rows = await gw.store.list_webhook_deliveries(
        status=status, batch_id=request.query_params.get("batch_id"),
        limit=int_param(request, "limit", 100, 1, 1000),
    )
    data = []
    for row in rows:
        item = dataclasses.asdict(row)
        item["next_attempt_at"] = row.next_attempt_at if row.status == "pending" else None
        data.append(item)
    return json_response({"object": "list", "data": data})


routes = [Route("/webhooks/deliveries", list_deliveries, methods=["GET"])]
