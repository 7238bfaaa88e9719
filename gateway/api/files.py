"""/v1/files: upload once, stored on every deployment of the target model groups."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import ids
from gateway.api.common import gateway, int_param, json_response, list_envelope, model_names
from gateway.auth import Principal
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    UpstreamError,
    UpstreamNotFound,
    client_error,
)
from gateway.jsonl import (
    LineError,
    ModelSwap,
    Spooler,
    check_lines,
    restore_model,
    rewritten,
)
from gateway.provider import Deployment, Provider
from gateway.runtime import Gateway
from gateway.store import FileRow, Placement
from gateway.uploads import receive_upload

log = logging.getLogger("gateway.files")


def file_object(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "expires_at": None,
        "status_details": None,
    }


def not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


async def owned_file(gw: Gateway, principal: Principal, file_id: str) -> FileRow:
    row = await gw.store.get_file(principal.owner, file_id) if ids.looks_like("file-", file_id) \
        else None
    if row is None:
        raise not_found(file_id)
    return row


def resolve_targets(
    gw: Gateway, principal: Principal, names: list[str], models: dict[str, int]
) -> list[Deployment]:
    """Check the target groups and the file's models against config and the key."""
    if not names:
        # No target_model_names: the file's own body.model values name the groups.
        names = sorted(models, key=models.__getitem__)
    unknown = [n for n in names if n not in gw.groups]
    if unknown:
        known = ", ".join(sorted(g for g in gw.groups if principal.may_use(g)))
        raise BadRequest(
            f"Unknown model group {unknown[0]!r} in target_model_names "
            f"(available to this key: {known or 'none'}).",
            param="target_model_names",
            code="model_not_found",
        )
    principal.require(names)
    for model, line_no in models.items():
        if model not in names:
            raise LineError(
                line_no,
                f"body.model {model!r} is not one of the target model names "
                f"({', '.join(names)}).",
                "model_not_targeted",
            )
    seen: dict[str, Deployment] = {}
    for name in names:
        for d in gw.groups[name]:
            seen.setdefault(d.id, d)
    return list(seen.values())


async def create_file(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    s = gw.settings
    spooler = Spooler(
        max_bytes=s.max_file_bytes,
        max_line_bytes=s.max_line_bytes,
        max_lines=s.max_requests_per_file,
        spool_dir=s.spool_dir,
    )
    try:
        upload = await receive_upload(request, spooler)
        purpose = upload.get("purpose")
        if purpose != "batch":
            raise BadRequest(
                f"purpose must be 'batch' (got {purpose!r}): this gateway serves batch files.",
                param="purpose",
            )
        spool = spooler.finish()
        names = model_names(
            request.query_params.getlist("target_model_names"),
            upload.fields.get("target_model_names", []),
            upload.fields.get("target_model_names[]", []),
        )
        targets = resolve_targets(gw, principal, names, spooler.models)
        providers = [gw.providers[d.id] for d in targets]
        limit = min(p.max_requests_per_file for p in providers)
        if spooler.lines > limit:
            raise BadRequest(
                f"The file has {spooler.lines} requests; the target deployments take at most "
                f"{limit} per file.",
                param="file",
                code="too_many_requests",
            )
        fd = spool.fileno()
        check_lines(
            fd,
            {type(p): p.prepare_line for p in providers if p.transforms_lines}.values(),
        )
        file_id = ids.new_file_id()
        # Upstream copies are named after the gateway id: providers insist on `.jsonl`, and an
        # admin looking at a provider console can tell which gateway file a copy belongs to.
        placements = await _place_everywhere(
            gw, targets, fd, f"{file_id}.jsonl", list(spooler.models)
        )
    finally:
        spooler.close()

    row = FileRow(
        id=file_id,
        owner=principal.owner,
        purpose="batch",
        filename=upload.filename or "upload.jsonl",
        bytes=spooler.size,
        created_at=int(time.time()),
        status="processed",
        model_groups=sorted({d.model_name for d in targets}),
        source_model=next(iter(spooler.models)) if len(spooler.models) == 1 else None,
        placements=tuple(placements),
    )
    try:
        await gw.store.insert_file(row)
    except Exception:
        await _remove_copies(gw, placements)
        raise
    return json_response(file_object(row))


async def _place_everywhere(
    gw: Gateway, targets: list[Deployment], fd: int, filename: str, models: list[str]
) -> list[Placement]:
    """Upload a copy to every target; on any failure remove the copies made (all or nothing)."""

    async def place(d: Deployment) -> Placement:
        provider = gw.providers[d.id]
        # A provider that keeps the default prepare_line only renames body.model: that can be
        # done on the raw bytes.
        swap = (
            ModelSwap(models, d.model)
            if type(provider).prepare_line is Provider.prepare_line
            else None
        )
        pf = await provider.upload_file(rewritten(fd, provider.prepare_line, swap), filename)
        return Placement(d.id, pf.id, pf.status)

    results = await asyncio.gather(*(place(d) for d in targets), return_exceptions=True)
    done = [r for r in results if isinstance(r, Placement)]
    failures = [
        (d, r) for d, r in zip(targets, results, strict=True) if isinstance(r, BaseException)
    ]
    if not failures:
        return done
    await _remove_copies(gw, done)
    d, err = failures[0]
    log.warning("upload to deployment %s failed: %r", d.id, err)
    if isinstance(err, UpstreamError):
        raise client_error(err, d.model_name)
    if isinstance(err, GatewayError):
        raise err
    raise err


async def _remove_copies(gw: Gateway, placements: list[Placement]) -> None:
    async def remove(p: Placement) -> None:
        try:
            await gw.providers[p.deployment_id].delete_file(p.provider_file_id)
        except Exception as e:  # best effort: the upload already failed for the caller
            log.warning("could not remove copy on %s: %r", p.deployment_id, e)

    await asyncio.gather(*(remove(p) for p in placements))


async def retrieve_file(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    return json_response(file_object(await owned_file(gw, principal, request.path_params["id"])))


async def list_files(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'.", param="order")
    rows, has_more = await gw.store.list_files(
        principal.owner,
        purpose=request.query_params.get("purpose"),
        after=request.query_params.get("after"),
        limit=int_param(request, "limit", 10_000, 1, 10_000),
        ascending=order == "asc",
    )
    return json_response(list_envelope([file_object(r) for r in rows], has_more))


async def delete_file(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    row = await owned_file(gw, principal, request.path_params["id"])
    for p in row.placements:
        provider = gw.provider(p.deployment_id)
        if provider is not None and not provider.supports_delete:
            group = provider.deployment.model_name
            raise BadRequest(
                f"Files on model group {group!r} cannot be deleted: its provider does not "
                "support deleting files.",
                code="unsupported_operation",
            )
    for p in row.placements:
        provider = gw.provider(p.deployment_id)
        if provider is not None:
            try:
                await provider.delete_file(p.provider_file_id)
            except UpstreamNotFound:
                pass  # already gone upstream: that is what we want
            except UpstreamError as e:
                raise client_error(e, provider.deployment.model_name) from e
        # Forget each copy as soon as it is gone, so a retry only repeats what failed.
        await gw.store.delete_placement(row.id, p.deployment_id)
    await gw.store.delete_file(principal.owner, row.id)
    return json_response({"id": row.id, "object": "file", "deleted": True})


async def file_content(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.auth(request)
    row = await owned_file(gw, principal, request.path_params["id"])
    last: GatewayError = NotFound(f"File {row.id} has no content available.", param="id")
    for p in row.placements:
        provider = gw.provider(p.deployment_id)
        if provider is None:
            continue  # its deployment left the config
        try:
            stream = await provider.file_content(p.provider_file_id)
        except UpstreamError as e:
            last = client_error(e, provider.deployment.model_name)
            continue
        if row.purpose == "batch":
            # An input file's copies name the deployment's model; show the user's own.
            stream = restore_model(stream, row.source_model or row.model_groups[0])
        return StreamingResponse(stream, media_type="application/octet-stream")
    raise last


routes = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{id}/content", file_content, methods=["GET"]),
]
