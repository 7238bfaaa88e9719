"""/v1/models and /model_group/info: the model groups the calling key may use."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import gateway, json_response


async def list_models(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "gateway"}
        for name in sorted(gw.groups)
        if principal.may_use(name)
    ]
    return json_response({"object": "list", "data": data})


async def model_group_info(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    data = [
        {
            "model_group": name,
            "mode": "batch",
            "providers": sorted({d.provider for d in deployments}),
        }
        for name, deployments in sorted(gw.groups.items())
        if principal.may_use(name)
    ]
    return json_response({"data": data})


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/model_group/info", model_group_info, methods=["GET"]),
]
