"""Keeping a gateway batch in step with its provider batch.

`present` turns the provider's Batch into the gateway's (every id a gateway id, output files
minted once for the batch's owner); `refresh` fetches it unless it is already final, stores
what changed and, on the first sight of a final status, records the batch's usage exactly once.
Used by the API and by the background poller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from gateway.errors import UpstreamError, client_error, scrub
from gateway.provider import ProviderBatch
from gateway.runtime import Gateway
from gateway.store import BatchRow

log = logging.getLogger("gateway.tracking")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_COUNTS = ("total", "completed", "failed")


async def present(
    gw: Gateway, row: BatchRow, native: ProviderBatch
) -> dict[str, Any]:
    """The provider's Batch with every id a gateway id and nothing deployment-specific."""
    obj = dict(native)
    obj["id"] = row.id
    obj["object"] = "batch"
    obj["input_file_id"] = row.input_file_id
    obj["endpoint"] = obj.get("endpoint") or row.object.get("endpoint")
    obj["model"] = row.model_group
    obj["created_at"] = row.created_at
    counts = obj.get("request_counts") or {}
    obj["request_counts"] = {k: int(counts.get(k) or 0) for k in _COUNTS}
    replacements = {row.provider_batch_id: row.id}
    for key in ("output_file_id", "error_file_id"):
        obj[key] = await _public_file(gw, row, key, obj.get(key), replacements)
    errors = obj.get("errors")
    if isinstance(errors, dict) and isinstance(errors.get("data"), list):
        obj["errors"] = {"object": "list", "data": [_error(e, replacements)
                                                    for e in errors["data"]]}
    elif errors is not None:
        obj["errors"] = None
    return obj


def _error(e: Any, replacements: dict[str, str]) -> dict[str, Any]:
    e = e if isinstance(e, dict) else {"message": str(e)}
    line = e.get("line")
    try:
        line = int(line) if line not in (None, "") else None
    except (TypeError, ValueError):
        line = None
    message = e.get("message")
    return {
        "code": e.get("code"),
        "line": line,
        "message": scrub(message, replacements) if isinstance(message, str) else None,
        "param": e.get("param"),
    }


async def _public_file(
    gw: Gateway, row: BatchRow, key: str, native: Any, replacements: dict[str, str]
) -> str | None:
    if not native or not isinstance(native, str):
        return None  # null, missing and the "" quirk all mean "no file"
    existing = await gw.store.file_id_for(row.deployment_id, native)
    if existing:
        replacements[native] = existing
        return existing
    provider = gw.provider(row.deployment_id)
    if provider is None:
        return None
    info = await provider.retrieve_file(native)
    if key == "error_file_id" and info.bytes == 0:
        return None  # Azure attaches an empty error file to clean batches
    file_id = await gw.store.mint_provider_file(
        row.owner,
        row.deployment_id,
        native,
        purpose="batch_output",
        # The provider's filename may embed its batch id: name it after ours.
        filename=f"{row.id}_{key.removesuffix('_file_id')}.jsonl",
        size=info.bytes or 0,
        created_at=info.created_at or int(time.time()),
        model_group=row.model_group,
    )
    replacements[native] = file_id
    return file_id


async def refresh(gw: Gateway, row: BatchRow) -> dict[str, Any]:
    """The batch as the provider sees it now; terminal batches never call upstream again."""
    if row.terminal:
        return row.object
    provider = gw.provider(row.deployment_id)
    if provider is None:
        return row.object  # deployment removed from config: the last answer is all we have
    return await follow(gw, row, provider.retrieve_batch(row.provider_batch_id))


async def follow(gw: Gateway, row: BatchRow, call: Awaitable[ProviderBatch]) -> dict[str, Any]:
    """Await a provider call that answers with the batch (retrieve, cancel), present it,
    store it; adapter errors become client errors in terms of the model group."""
    try:
        obj = await present(gw, row, await call)
    except UpstreamError as e:
        raise client_error(e, row.model_group, {row.provider_batch_id: row.id}) from e
    await settle(gw, row, obj)
    return obj


async def settle(gw: Gateway, row: BatchRow, obj: dict[str, Any]) -> None:
    """Store the batch's new state; the first time it is final, record its usage (once, even
    when several requests or instances see it finish at the same moment)."""
    if obj == row.object:
        return
    terminal = obj["status"] in TERMINAL
    await gw.store.update_batch(row.id, status=obj["status"], terminal=terminal, obj=obj)
    if terminal:
        await gw.store.record_usage(row, obj)


