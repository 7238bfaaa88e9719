"""A file's content and its deletion, whatever kind of file it is.

Input files are read from the input the gateway kept; a batch's result files from the provider
that ran the batch (`Provider.results`). Deleting an input removes every deployment's copy,
then the file, then the kept input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
    client_error,
)
from gateway.filestore import KeptFileMissing
from gateway.runtime import Gateway
from gateway.split import result_key as split_result_key
from gateway.store import FileRow
from gateway.tracking import SPLIT
from gateway.types import ResultKind

log = logging.getLogger("gateway.content")


def _gone(row: FileRow) -> NotFound:
    return NotFound(f"File {row.id} has no content available.", param="id")


async def open_content(gw: Gateway, row: FileRow) -> AsyncIterator[bytes]:
    """The file's bytes; raises before the first chunk when they cannot be had."""
    if row.kept_key is not None:
        try:
            return await gw.files.open(row.kept_key)
        except KeptFileMissing as e:
            log.error("kept input %s of file %s is missing", row.kept_key, row.id)
            raise _gone(row) from e
    if (kind := _result_kind(row)) is not None:
        return await _results(gw, row, kind)
    raise _gone(row)  # an input uploaded before the gateway kept inputs


def _result_kind(row: FileRow) -> ResultKind | None:
    """Which result of its batch a result file is; None for an input file."""
    if row.source_batch is None:
        return None
    return "output" if row.result_kind == "output" else \
        "errors" if row.result_kind == "errors" else None


async def _results(gw: Gateway, row: FileRow, kind: ResultKind) -> AsyncIterator[bytes]:
    batch = await gw.store.get_batch(row.owner, row.source_batch or "")
    if batch is not None and batch.provider_batch_id == SPLIT:
        # Merged from the parts into the gateway's file store (gateway/split/merge.py).
        try:
            return await gw.files.open(split_result_key(batch.id, kind))
        except KeptFileMissing as e:
            raise _gone(row) from e
    provider = gw.provider(batch.deployment_id) if batch is not None else None
    if batch is None or provider is None:
        raise _gone(row)
    try:
        return await _jsonl(await provider.results(batch.provider_batch_id, kind))
    except UpstreamError as e:
        raise client_error(e, batch.model_group, {batch.provider_batch_id: batch.id}) from e


async def _jsonl(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`stream`, once its first bytes look like JSON lines: a proxy's HTML page behind a 200 is
    an upstream failure, never a tenant's output."""
    chunks = aiter(stream)
    first = b""
    while not first.strip():
        try:
            first += await anext(chunks)
        except StopAsyncIteration:
            break
    if first.strip() and not first.lstrip().startswith(b"{"):
        if hasattr(chunks, "aclose"):
            await chunks.aclose()
        raise UpstreamUnavailable("the result file is not JSON lines")

    async def rest() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return rest()


async def expire_inputs(gw: Gateway, limit: int = 100) -> int:
    """Delete the input files older than `file_retention_days`; returns how many."""
    days = gw.settings.file_retention_days
    if days is None:
        return 0
    before = int(time.time() - days * 86_400)
    return await _expire(gw, await gw.store.inputs_created_before(before, limit))


async def expire_files(gw: Gateway, limit: int = 100) -> int:
    """Delete the files whose `expires_after` has passed; returns how many."""
    return await _expire(gw, await gw.store.files.expired(int(time.time()), limit))


async def _expire(gw: Gateway, expired: list[FileRow]) -> int:
    for row in expired:
        try:
            await delete(gw, row)
        except GatewayError as e:  # an upstream copy could not go: tried again next round
            log.warning("expired file %s not deleted yet: %s", row.id, e.message)
    return len(expired)


async def finish_deletes(gw: Gateway, limit: int = 100) -> int:
    """Finish the deletions that started and did not end; returns how many ended now."""
    done = 0
    for row in await gw.store.being_deleted(limit):
        try:
            await delete(gw, row)
            done += 1
        except GatewayError as e:  # an upstream copy could not go yet: next round
            log.warning("deletion of file %s not finished yet: %s", row.id, e.message)
    return done


async def delete(gw: Gateway, row: FileRow) -> None:
    """Every copy upstream, then the file, then its kept input: a failure part way leaves a
    file that a second delete finishes, never content that a listed file has lost."""
    ready = [c for c in row.copies if c.state == "ready" and c.provider_file_id]
    for c in ready:
        provider = gw.provider(c.deployment_id)
        if provider is not None and not provider.capabilities().delete:
            group = provider.deployment.model_name
            raise BadRequest(
                f"Files on model group {group!r} cannot be deleted: its provider does not "
                "support deleting files.",
                code="unsupported_operation",
            )
    # Marked first: from now on the file is gone for clients, and a deletion cut short (a
    # crash, an upstream error) is finished by `finish_deletes`, never left half-visible.
    await gw.store.mark_deleting(row.owner, row.id)
    for c in row.copies:
        provider = gw.provider(c.deployment_id)
        if provider is not None and c.provider_file_id:
            try:
                await provider.delete_input(c.provider_file_id)
            except UpstreamNotFound:
                pass  # already gone upstream: that is what we want
            except UpstreamError as e:
                raise client_error(e, provider.deployment.model_name) from e
        # Forget each copy as soon as it is gone, so a retry only repeats what failed.
        await gw.store.delete_copy(row.id, c.deployment_id)
    await gw.store.delete_file(row.owner, row.id)
    if row.source_batch is not None and (kind := _result_kind(row)) is not None:
        await _delete_results(gw, row.owner, row.source_batch, kind)
    if row.kept_key is not None:
        try:
            await gw.files.delete(row.kept_key)
        except Exception as e:  # the file is gone for clients; a leftover is only logged
            log.warning("kept input %s of deleted file %s not removed: %r", row.kept_key,
                        row.id, e)


async def _delete_results(gw: Gateway, owner: str, batch_id: str, kind: ResultKind) -> None:
    """What is kept of a deleted result file besides its record: a split batch's merged file,
    and what each deployment that ran it keeps (`Provider.delete_results`; a gateway-run
    batch's file, say)."""
    batch = await gw.store.get_batch(owner, batch_id)
    if batch is None:
        return
    if batch.provider_batch_id == SPLIT:  # merged by the gateway from its parts' results
        await gw.files.delete(split_result_key(batch.id, kind))
        ran = [(p.deployment_id, p.provider_batch_id) for p in await gw.store.parts.of(batch.id)]
    else:
        ran = [(batch.deployment_id, batch.provider_batch_id)]
    for deployment_id, native in ran:
        provider = gw.provider(deployment_id)
        if provider is None or native is None:
            continue
        try:
            await provider.delete_results(native, kind)
        except Exception as e:  # the file is gone for clients; a leftover is only logged
            log.warning("%s of batch %s not removed on deployment %s: %r", kind, batch_id,
                        deployment_id, e)
