"""Receiving an upload, HTTP-free: the multipart body streamed through validation into the kept
copy and every file-input deployment's copy, then recorded.

The target model groups come from the query, from form fields sent before the file (the
OpenAI SDK's `extra_body`) or, failing both, from the lines' own `body.model`; in the first two
cases the copies are written while the upload still arrives, else after validation from a
spooled temporary file.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from gateway import ids, reqctx
from gateway.auth import Principal
from gateway.errors import BadRequest
from gateway.fanout import Fanout, remove_one
from gateway.jsonl import (
    BATCH_BYTES,
    LineError,
    Spooler,
    not_targeted,
    raw_chunks,
    spooled_blocks,
)
from gateway.names import model_names
from gateway.provider import Deployment
from gateway.runtime import Gateway
from gateway.store import Copy, FileRow
from gateway.uploads import Upload, receive_upload


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
    """The form fields besides the file: purpose, and `expires_after` if sent."""
    purpose = upload.get("purpose")
    if purpose != "batch":
        raise BadRequest(
            f"purpose must be 'batch' (got {purpose!r}): this gateway serves batch files.",
            param="purpose",
        )
    expires_after(upload)


# OpenAI's bounds for `expires_after.seconds` (an hour to 30 days, from `created_at`).
_EXPIRY_SECONDS = (3600, 2_592_000)


def expires_after(upload: Upload) -> int | None:
    """Seconds after upload the file is to be deleted (`expires_after`), or None."""
    anchor = upload.get("expires_after[anchor]") or upload.get("expires_after.anchor")
    seconds = upload.get("expires_after[seconds]") or upload.get("expires_after.seconds")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest("expires_after[anchor] must be 'created_at'.",
                         param="expires_after[anchor]")
    lo, hi = _EXPIRY_SECONDS
    if seconds is None or not seconds.isdigit() or not lo <= int(seconds) <= hi:
        raise BadRequest(f"expires_after[seconds] must be an integer from {lo} to {hi}.",
                         param="expires_after[seconds]")
    return int(seconds)


class _Receiver:
    """One upload on its way in: validated line by line and, as soon as the target model
    groups are known, written to every deployment of them while it still arrives."""

    def __init__(self, gw: Gateway, principal: Principal, query_names: list[str]) -> None:
        s = gw.settings
        self.gw = gw
        self.principal = principal
        self.query_names = query_names
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
        providers = [self.gw.providers[d.id] for d in self.targets]
        self.fanout = Fanout(
            self.gw.files.writer(self.kept_key),
            [p for p in providers if p.capabilities().input == "file"],
            self.file_id,
            self.names,
            self.gw.journal,
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
            await self.fanout.send(*self.spooler.take_blocks(at_least))

    async def receive(
        self, content_type: str, body: AsyncIterator[bytes]
    ) -> tuple[Upload, int, list[Copy]]:
        upload = await receive_upload(content_type, body, self.spooler, self.on_file,
                                      self.forward)
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
            for block in spooled_blocks(self.spooler.spooled()):
                await fanout.send([block])
        else:
            await self.forward(at_least=0)
        return upload, *await fanout.finish()


async def receive(
    gw: Gateway,
    principal: Principal,
    content_type: str,
    body: AsyncIterator[bytes],
    query_names: list[str],
) -> FileRow:
    """The upload in `body` (multipart/form-data), validated, kept, copied and recorded; all
    or nothing for the client, whatever a deployment's copy does."""
    receiver = _Receiver(gw, principal, query_names)
    try:
        upload, size, made = await receiver.receive(content_type, body)
    except BaseException:
        if receiver.fanout is not None:
            await receiver.fanout.abort()
        raise
    finally:
        receiver.spooler.close()

    now = int(time.time())
    expires = expires_after(upload)
    row = FileRow(
        id=receiver.file_id,
        owner=principal.owner,
        purpose="batch",
        filename=upload.filename or "upload.jsonl",
        bytes=size,
        created_at=now,
        status="processed",
        model_groups=sorted({d.model_name for d in receiver.targets}),
        source_model=next(iter(receiver.spooler.models))
        if len(receiver.spooler.models) == 1
        else None,
        request_count=receiver.spooler.lines,
        kept_key=receiver.kept_key,
        expires_at=None if expires is None else now + expires,
        endpoint=receiver.spooler.url,
        copies=tuple(made),
    )
    fanout = receiver.fanout
    assert fanout is not None  # `receive` opened it
    try:
        # The file and its copies are recorded together with the end of their intents.
        async with gw.store.db.transaction():
            await gw.store.insert_file(row,
                                       retry_at=time.time() + gw.settings.copy_retry_interval)
            for intent in fanout.settled:
                await gw.journal.end(intent)
    except BaseException:
        for c in made:
            if c.provider_file_id:
                await remove_one(gw.providers[c.deployment_id], c.provider_file_id)
        await gw.files.delete(receiver.kept_key)
        raise
    return row
