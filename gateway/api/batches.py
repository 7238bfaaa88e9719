"""/v1/batches: created on a deployment holding the file, answered with gateway ids only."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import budgets, dispatch, ids, reqctx
from gateway.api.common import (
    gateway,
    int_param,
    json_response,
    list_envelope,
    list_owner,
    read_json,
)
from gateway.api.files import owned_file
from gateway.api.idempotency import idempotent
from gateway.auth import Principal
from gateway.errors import (
    BadRequest,
    Conflict,
    NotFound,
    UpstreamFailed,
)
from gateway.jsonl import SUPPORTED_URLS
from gateway.names import model_names
from gateway.runtime import Gateway
from gateway.split import create as split_create
from gateway.split import is_split, plan, track
from gateway.store import BatchRow
from gateway.tracking import follow, shared_refresh
from gateway.types import TERMINAL

log = logging.getLogger("gateway.batches")


def not_found(batch_id: str) -> NotFound:
    return NotFound(f"No such Batch object: {batch_id}", param="id")


async def owned_batch(gw: Gateway, principal: Principal, batch_id: str) -> BatchRow:
    """The caller's batch; the master key's is any tenant's."""
    owner = None if principal.is_master else principal.owner
    row = await gw.store.get_batch(owner, batch_id) \
        if ids.looks_like("batch_", batch_id) else None
    if row is None:
        raise not_found(batch_id)
    return row


async def admin_view(gw: Gateway, row: BatchRow, obj: dict[str, Any]) -> dict[str, Any]:
    """The batch as the master key sees it: where it runs (never shown to tenants)."""
    if is_split(row):
        return {**obj, "parts": await track.admin_parts(gw, row)}
    return {**obj, "deployment_id": row.deployment_id, "model_group": row.model_group}


async def create_batch(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    body = await read_json(request)
    input_file_id = body.get("input_file_id")
    endpoint = body.get("endpoint")
    window = body.get("completion_window")
    metadata = body.get("metadata")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise BadRequest("input_file_id is required.", param="input_file_id")
    if endpoint not in SUPPORTED_URLS:
        raise BadRequest(
            f"endpoint must be one of {', '.join(sorted(SUPPORTED_URLS))}.", param="endpoint"
        )
    if window != "24h":
        raise BadRequest("completion_window must be '24h'.", param="completion_window")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                   for k, v in metadata.items())
    ):
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        raise BadRequest("metadata must map at most 16 string keys (up to 64 characters) to "
                         "strings (up to 512 characters).", param="metadata")
    split = body.get("split")
    plan.wanted_parts(split, None, None)  # a bad value is a 400 before anything else

    file = await owned_file(gw, principal, input_file_id)
    if file.purpose != "batch":
        raise BadRequest(f"File {file.id} is not a batch input file.", param="input_file_id")
    wanted = model_names(
        body.get("target_model_names"), request.query_params.getlist("target_model_names")
    )
    stray = [n for n in wanted if n not in file.model_groups]
    if stray:
        raise BadRequest(
            f"File {file.id} was not uploaded for model {stray[0]!r} "
            f"(it was uploaded for {', '.join(file.model_groups)}).",
            param="target_model_names",
        )
    groups = wanted or file.model_groups
    principal.require(groups)
    reqctx.note(model_group=",".join(groups))
    parts = plan.wanted_parts(split, gw.settings.split_batches_over, file.request_count)
    hold = await budgets.admit(gw, principal, file, groups)  # 400 once a budget is spent
    req = dispatch.Request(principal.owner, file, groups, endpoint, window, metadata)

    async def place() -> dict[str, Any]:
        obj = await split_create.place(gw, req, parts) if parts != 1 else None
        return obj if obj is not None else await dispatch.place(gw, req)

    obj = await hold.placed(place())
    placed = obj.get("model")
    if isinstance(placed, str):
        reqctx.note(model_group=placed)  # the group it was placed on
    return json_response(obj)


async def retrieve_batch(request: Request) -> Response:
    gw = gateway(request)
    batch_id = request.path_params["id"]
    if not ids.looks_like("batch_", batch_id):
        await gw.auth(request)
        raise not_found(batch_id)
    # The hot path: key and batch in one query, or none (rows cached for a second); an
    # unfinished batch is read through to its provider, one call for concurrent retrieves.
    principal, row = await gw.auth.with_batch(request, batch_id)
    if row is None:
        raise not_found(batch_id)
    reqctx.note(model_group=row.model_group)
    obj = await shared_refresh(gw, row)
    if obj is not row.object:
        status = obj["status"]
        gw.auth.batch_changed(principal.owner, dataclasses.replace(
            row, status=status, terminal=status in TERMINAL, object=obj))
    if principal.is_master:
        obj = await admin_view(gw, row, obj)
    return json_response(obj)


async def cancel_batch(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    row = await owned_batch(gw, principal, request.path_params["id"])
    reqctx.note(model_group=row.model_group)
    if row.terminal:
        raise Conflict(f"Cannot cancel a batch with status '{row.status}'.")
    if is_split(row):
        obj = await track.cancel(gw, row)
        return json_response(await admin_view(gw, row, obj) if principal.is_master else obj)
    provider = gw.provider(row.deployment_id)
    if provider is None:
        raise UpstreamFailed(f"Model group {row.model_group!r} is no longer configured.")
    if not provider.capabilities().cancel:
        raise BadRequest(
            f"Batches on model group {row.model_group!r} cannot be cancelled.",
            code="unsupported_operation",
        )
    obj = await follow(gw, row, provider.cancel(row.provider_batch_id))
    return json_response(await admin_view(gw, row, obj) if principal.is_master else obj)


async def list_batches(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    groups = model_names(request.query_params.getlist("target_model_names"))
    principal.require(groups)
    # From the database alone: no upstream call however many batches are unfinished. The
    # background poller keeps them fresh (each at most one `batch_poll_interval` plus a tick
    # old while it keeps up; see gateway.poller); a retrieve reads through.
    page, has_more = await gw.store.list_batches(
        list_owner(request, principal),
        after=request.query_params.get("after"),
        limit=int_param(request, "limit", 20, 1, 100),
        model_groups=groups,
    )
    # The objects as stored, not decoded and encoded again (most of a list's CPU).
    return json_response(list_envelope([msgspec.Raw(obj) for _, obj in page], has_more,
                                       ids=[batch_id for batch_id, _ in page]))


routes = [
    Route("/v1/batches", idempotent("batches", create_batch), methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{id}/cancel", cancel_batch, methods=["POST"]),
]
