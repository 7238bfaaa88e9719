"""Keeping a gateway batch in step with its provider batch.

`present` turns the adapter's typed `Batch` into the gateway's (every id a gateway id, result
files minted once for the batch's owner, the client's own metadata); `refresh` polls unless the
batch is already final, stores what changed and, on the first sight of a final status, records
the batch's usage exactly once; `shared_refresh` is the same with one upstream call per batch
at a time in this process. Used by the API (retrieve, cancel) and by the background poller;
lists answer from the database.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import msgspec

from gateway import ids, webhooks
from gateway.errors import UpstreamError, client_error, scrub
from gateway.runtime import Gateway
from gateway.store import BatchRow, Cost, FileRow
from gateway.types import (
    TERMINAL,
    TIMES,
    Batch,
    BatchError,
    BatchErrors,
    PublicBatch,
    RequestCounts,
    ResultFile,
)

log = logging.getLogger("gateway.tracking")

SPLIT = "split"  # the provider batch id of a split batch's row (gateway/split)

_to_builtins = msgspec.to_builtins


def first_answer(endpoint: str, window: str, metadata: dict[str, str] | None,
                 total: int) -> dict[str, Any]:
    """What the gateway knows of a batch before its provider says anything."""
    return {"endpoint": endpoint, "completion_window": window, "metadata": metadata,
            "request_counts": {"total": total, "completed": 0, "failed": 0}}


async def present(gw: Gateway, row: BatchRow, batch: Batch) -> dict[str, Any]:
    """The provider's Batch as the gateway's: gateway ids only, nothing deployment-specific."""
    known = row.object
    counts = batch.request_counts or msgspec.convert(known.get("request_counts") or {},
                                                     type=RequestCounts)
    if not counts.total:
        counts.total = int((known.get("request_counts") or {}).get("total") or 0)
    replacements = {row.provider_batch_id: row.id}
    public = PublicBatch(
        id=row.id,
        endpoint=str(known.get("endpoint") or ""),
        model=row.model_group,
        errors=BatchErrors(data=[_error(e, replacements) for e in batch.errors])
        if batch.errors else None,
        input_file_id=row.input_file_id,
        completion_window=str(known.get("completion_window") or "24h"),
        status=batch.status,
        output_file_id=await _result_file(gw, row, "output", batch.output),
        error_file_id=await _result_file(gw, row, "errors", batch.error),
        created_at=row.created_at,
        **{name: getattr(batch, name) for name in TIMES},
        request_counts=counts,
        metadata=known.get("metadata"),
        usage=batch.usage,
    )
    out: dict[str, Any] = _to_builtins(public)
    return out


def _error(e: BatchError, replacements: dict[str, str]) -> BatchError:
    message = scrub(e.message, replacements) if e.message else e.message
    return BatchError(code=e.code, message=message, param=e.param, line=e.line)


async def _result_file(
    gw: Gateway, row: BatchRow, kind: str, result: ResultFile | None
) -> str | None:
    if result is None:
        return None
    return await gw.store.mint_result_file(
        FileRow(
            id=ids.new_file_id(),
            owner=row.owner,
            purpose="batch_output",
            filename=f"{row.id}_{'output' if kind == 'output' else 'error'}.jsonl",
            bytes=result.bytes or 0,
            created_at=result.created_at or int(time.time()),
            status="processed",
            model_groups=[row.model_group],
            source_model=None,
            source_batch=row.id,
            result_kind=kind,
        )
    )


async def refresh(gw: Gateway, row: BatchRow) -> dict[str, Any]:
    """The batch as the provider sees it now; terminal batches never call upstream again."""
    if row.terminal:
        return row.object
    provider = gw.provider(row.deployment_id)
    if provider is None:
        return row.object  # deployment removed from config: the last answer is all we have
    if row.provider_batch_id == SPLIT:
        # Parts on several deployments (imported here: it builds on this module).
        from gateway.split import track

        return await track.refresh(gw, row)
    return await follow(gw, row, provider.poll(row.provider_batch_id))


async def shared_refresh(gw: Gateway, row: BatchRow, *, note: bool = True) -> dict[str, Any]:
    """`refresh`, sharing the upstream call with any other refresh of the same batch running
    in this process (retrieves, the poller). With `note`, a batch polled is noted for the
    background schedule (the poller's own claims have moved it already)."""
    if row.terminal or gw.provider(row.deployment_id) is None:
        return row.object

    async def poll() -> dict[str, Any]:
        obj = await refresh(gw, row)
        if note and gw.settings.batch_poll_interval > 0:
            gw.reads.polled(row.id, row.created_at)
        return obj

    return await gw.reads.flights.do(row.id, poll)


async def follow(gw: Gateway, row: BatchRow, call: Awaitable[Batch]) -> dict[str, Any]:
    """Await a provider call that answers with the batch (poll, cancel), present it, store
    it; adapter errors become client errors in terms of the model group."""
    try:
        obj = await present(gw, row, await call)
    except UpstreamError as e:
        raise client_error(e, row.model_group, {row.provider_batch_id: row.id}) from e
    await settle(gw, row, obj)
    return obj


async def settle(gw: Gateway, row: BatchRow, obj: dict[str, Any],
                 cost: Cost | None = None) -> None:
    """Store the batch's new state; the first time it is final, record its usage (and
    `cost`, if the caller worked it out) and queue its webhook events (once each, even when
    several requests or instances see it finish at the same moment)."""
    if obj == row.object:
        return
    terminal = obj["status"] in TERMINAL
    # The end, its usage and its webhook events (any key may have an endpoint) are written
    # together or not at all.
    together = gw.store.db.transaction() if terminal else contextlib.nullcontext()
    async with together:
        await gw.store.update_batch(row.id, status=obj["status"], terminal=terminal, obj=obj)
        if terminal:
            await gw.store.record_usage(row, obj, cost)
            await webhooks.enqueue(gw, row, obj["status"])
