"""/v1/files: upload once, stored on every deployment of the target model groups."""

from __future__ import annotations

import logging
import math

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import content, ids, reqctx, upload
from gateway.api.common import gateway, int_param, json_response, list_envelope, list_owner
from gateway.api.idempotency import idempotent
from gateway.auth import Principal
from gateway.errors import BadRequest, NotFound
from gateway.names import model_names
from gateway.runtime import Gateway
from gateway.store import FileRow
from gateway.types import AdminFileInfo, FileInfo, PlacementInfo

log = logging.getLogger("gateway.files")


def file_object(row: FileRow, retention_days: float | None = None) -> FileInfo:
    """`expires_at`: the sooner of what the uploader asked and the gateway's retention."""
    expires = row.expires_at
    if retention_days is not None and row.purpose == "batch":
        kept = row.created_at + math.ceil(retention_days * 86_400)
        expires = kept if expires is None else min(expires, kept)
    return FileInfo(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        expires_at=expires,
    )


def admin_file_object(gw: Gateway, row: FileRow) -> AdminFileInfo:
    """With each deployment's copy: for the master key, who runs the deployments."""
    return AdminFileInfo(
        **msgspec.structs.asdict(file_object(row, gw.settings.file_retention_days)),
        placements=[
            PlacementInfo(
                model_group=gw.deployments[c.deployment_id].model_name
                if c.deployment_id in gw.deployments else "",
                deployment_id=c.deployment_id,
                state=c.state,  # type: ignore[arg-type]
                attempts=c.attempts,
            )
            for c in row.copies
        ],
    )


def not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


async def owned_file(
    gw: Gateway, principal: Principal, file_id: str, any_owner: bool = False
) -> FileRow:
    """The caller's file; with `any_owner`, the master key sees every tenant's."""
    owner = None if any_owner and principal.is_master else principal.owner
    row = await gw.store.get_file(owner, file_id) if ids.looks_like("file-", file_id) \
        else None
    if row is None:
        raise not_found(file_id)
    return row


# Room for the multipart framing and form fields around the file itself.
_MULTIPART_SLACK = 1 << 20


async def create_file(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    declared = request.headers.get("content-length", "")
    limit = gw.settings.max_file_bytes
    if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        # Refused before a byte of the body is read; the connection closes after the answer.
        raise BadRequest(f"File is larger than the {limit / (1 << 20):g} MB limit.",
                         param="file", code="file_too_large", headers={"Connection": "close"})
    row = await upload.receive(
        gw,
        principal,
        request.headers.get("content-type", ""),
        request.stream(),
        model_names(request.query_params.getlist("target_model_names")),
    )
    return json_response(file_object(row, gw.settings.file_retention_days))


async def retrieve_file(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    row = await owned_file(gw, principal, request.path_params["id"], any_owner=True)
    if principal.is_master:
        return json_response(admin_file_object(gw, row))
    return json_response(file_object(row, gw.settings.file_retention_days))


async def list_files(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'.", param="order")
    rows, has_more = await gw.store.list_files(
        list_owner(request, principal),
        purpose=request.query_params.get("purpose"),
        after=request.query_params.get("after"),
        limit=int_param(request, "limit", 10_000, 1, 10_000),
        ascending=order == "asc",
    )
    days = gw.settings.file_retention_days
    return json_response(list_envelope([file_object(r, days) for r in rows], has_more))


async def delete_file(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    row = await owned_file(gw, principal, request.path_params["id"])
    await content.delete(gw, row)
    return json_response({"id": row.id, "object": "file", "deleted": True})


async def file_content(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    row = await owned_file(gw, principal, request.path_params["id"])
    reqctx.note(model_group=",".join(row.model_groups))
    stream = await content.open_content(gw, row)
    return StreamingResponse(stream, media_type="application/octet-stream")


routes = [
    Route("/v1/files", idempotent("files", create_file), methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{id}/content", file_content, methods=["GET"]),
]
