"""/v1/files: upload once, stored on every deployment of the target model groups."""

from __future__ import annotations

import logging
import math
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import content, ids, reqctx
from gateway.api.common import gateway, int_param, json_response, list_envelope, model_names
from gateway.auth import Principal
from gateway.errors import BadRequest, NotFound
from gateway.fanout import Fanout, remove
from gateway.jsonl import (
    BATCH_BYTES,
    LineError,
    Spooler,
    line_batches,
    not_targeted,
    raw_chunks,
)
from gateway.provider import Deployment
from gateway.runtime import Gateway
from gateway.store import Copy, FileRow
from gateway.types import AdminFileInfo, FileInfo, PlacementInfo
from gateway.uploads import Upload, receive_upload

log = logging.getLogger("gateway.files")


def file_object(row: FileRow, retention_days: float | None = None) -> FileInfo:
    expires = None
    if retention_days is not None and row.purpose == "batch":
        expires = row.created_at + math.ceil(retention_days * 86_400)
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


def resolve_targets(gw: Gateway, principal: Principal, names: list[str]) -> list[Deployment]:
    """The deployments of the named model groups, after checking config and the key."""
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
    seen: dict[str, Deployment] = {}
    for name in names:
        for d in gw.groups[name]:
            seen.setdefault(d.id, d)
    return list(seen.values())


def _check_purpose(upload: Upload) -> None:
    purpose = upload.get("purpose")
    if purpose != "batch":
        raise BadRequest(
            f"purpose must be 'batch' (got {purpose!r}): this gateway serves batch files.",
            param="purpose",
        )


class _Receiver:
    """One upload on its way in: validated line by line and, as soon as the target model
    groups are known, written to every deployment of them while it still arrives."""

    def __init__(self, gw: Gateway, principal: Principal, request: Request) -> None:
        s = gw.settings
        self.gw = gw
        self.principal = principal
        self.query_names = model_names(request.query_params.getlist("target_model_names"))
        self.spooler = Spooler(
            max_bytes=s.max_file_bytes,
            max_line_bytes=s.max_line_bytes,
            max_lines=s.max_requests_per_file,
            spool_dir=s.spool_dir,
        )
        self.file_id = ids.new_file_id()
        self.kept_key = f"inputs/{self.file_id}.jsonl"
        self.names: list[str] = []
        self.targets: list[Deployment] = []
        self.fanout: Fanout | None = None

    def names_in(self, upload: Upload) -> list[str]:
        return model_names(
            self.query_names,
            upload.fields.get("target_model_names", []),
            upload.fields.get("target_model_names[]", []),
        )

    def available(self) -> str:
        known = ", ".join(sorted(g for g in self.gw.groups if self.principal.may_use(g)))
        return f"available to this key: {known or 'none'}"

    def choose(self, names: list[str]) -> None:
        """Fix the target groups; from now on body.model must be one of them."""
        self.names = names
        reqctx.note(model_group=",".join(names))
        self.targets = resolve_targets(self.gw, self.principal, names)
        caps = [self.gw.providers[d.id].capabilities() for d in self.targets]
        self.spooler.stream_to(
            names, min(c.max_requests for c in caps), min(c.max_bytes for c in caps)
        )

    def open_copies(self) -> Fanout:
        # Upstream copies are named after the gateway id: providers insist on `.jsonl`, and an
        # admin looking at a provider console can tell which gateway file a copy belongs to.
        providers = [self.gw.providers[d.id] for d in self.targets]
        self.fanout = Fanout(
            self.gw.files.writer(self.kept_key),
            [p for p in providers if p.capabilities().input == "file"],
            f"{self.file_id}.jsonl",
            self.names,
            inline=[p for p in providers if p.capabilities().input == "inline"],
        )
        return self.fanout

    def on_file(self, upload: Upload) -> None:
        names = self.names_in(upload)
        if upload.get("purpose") is not None:
            _check_purpose(upload)
        if names:
            self.choose(names)
            self.open_copies()

    async def forward(self, at_least: int = BATCH_BYTES) -> None:
        if self.fanout is not None:
            await self.fanout.send(*self.spooler.take_ready(at_least))

    async def receive(self, request: Request) -> tuple[Upload, int, list[Copy]]:
        upload = await receive_upload(request, self.spooler, self.on_file, self.forward)
        _check_purpose(upload)
        self.spooler.finish()
        fanout = self.fanout
        if fanout is None:
            # No target_model_names before the file: the groups are the models it names.
            models = self.spooler.models
            named = self.names_in(upload)
            if not named:
                # The groups are the lines' own: an unknown one is that line's error.
                for model, line_no in models.items():
                    if model not in self.gw.groups:
                        raise LineError(line_no, f"body.model {model!r} is not a model group "
                                        f"({self.available()}).", "model_not_found")
            self.choose(named or sorted(models, key=models.__getitem__))
            for model, line_no in models.items():
                if model not in self.names:
                    raise not_targeted(line_no, model, self.names)
            if self.spooler.lines > self.spooler.max_lines:
                raise BadRequest(
                    f"The file has {self.spooler.lines} requests; the target deployments "
                    f"take at most {self.spooler.max_lines} per file.",
                    param="file",
                    code="too_many_requests",
                )
            if self.spooler.size > self.spooler.max_bytes:
                raise self.spooler.too_large()
            fanout = self.open_copies()
            for raw in raw_chunks(self.spooler.spooled()):
                await fanout.keep(raw)
            for lines in line_batches(self.spooler.spooled()):
                await fanout.send(lines)
        else:
            await self.forward(at_least=0)
        return upload, *await fanout.finish()


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
    receiver = _Receiver(gw, principal, request)
    try:
        upload, size, made = await receiver.receive(request)
    except BaseException:
        if receiver.fanout is not None:
            await receiver.fanout.abort()
        raise
    finally:
        receiver.spooler.close()

    row = FileRow(
        id=receiver.file_id,
        owner=principal.owner,
        purpose="batch",
        filename=upload.filename or "upload.jsonl",
        bytes=size,
        created_at=int(time.time()),
        status="processed",
        model_groups=sorted({d.model_name for d in receiver.targets}),
        source_model=next(iter(receiver.spooler.models))
        if len(receiver.spooler.models) == 1
        else None,
        request_count=receiver.spooler.lines,
        kept_key=receiver.kept_key,
        copies=tuple(made),
    )
    try:
        await gw.store.insert_file(row, retry_at=time.time() + gw.settings.copy_retry_interval)
    except BaseException:
        assert receiver.fanout is not None
        await remove([(gw.providers[c.deployment_id], c.provider_file_id) for c in made
                      if c.provider_file_id])
        await gw.files.delete(receiver.kept_key)
        raise
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
        principal.owner,
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
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{id}/content", file_content, methods=["GET"]),
]
