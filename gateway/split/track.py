"""Keeping a split batch in step with its parts: what the client sees, and when it ends.

`refresh` polls every unfinished part (cancelling them when the batch is being cancelled),
takes over a part whose submitter died, tries a part that failed once more on another
deployment, and once every part has ended merges their results and ends the batch, its usage
and webhook events written once (`tracking.settle`). The client sees one batch: in progress
until every part ends, `request_counts` and usage summed.

The end status:
1. `cancelled` when the client cancelled the batch (the lines that finished are in the output);
2. otherwise `completed` when at least one part completed;
3. otherwise `expired` when at least one part expired;
4. otherwise `failed` (every part failed, or was cancelled by someone other than the client).
The lines of a part that did not complete and have no result are in the error file with the
part's reason (`batch_expired`, `batch_cancelled`, or the failure's code).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from gateway.errors import GatewayError, UpstreamError
from gateway.pricing import prices_for
from gateway.runtime import Gateway
from gateway.selfrun import wire
from gateway.split import merge
from gateway.split.submit import Job, forget_copy, lease_seconds, with_failover
from gateway.store import BatchRow, Cost
from gateway.store.parts import SUBMITTING, PartRow
from gateway.tracking import present, settle
from gateway.types import (
    TERMINAL,
    Batch,
    BatchError,
    RequestCounts,
    ResultFile,
    Usage,
)

log = logging.getLogger("gateway.split")

_TOKENS = ("input_tokens", "output_tokens", "total_tokens")


def end_status(cancelled: bool, parts: Sequence[PartRow]) -> str:
    """The batch's status once every part has ended (see the module's rule)."""
    statuses = {p.status for p in parts}
    if cancelled:
        return "cancelled"
    for status in ("completed", "expired"):
        if status in statuses:
            return status
    return "failed"


def why(part: PartRow) -> tuple[str, str]:
    """The code and message of the error line of a line of `part` that has no result."""
    if part.status == "expired":
        return wire.EXPIRED
    if part.status == "cancelled":
        return wire.CANCELLED
    if part.status == "completed":
        return ("missing_result", "The deployment that ran this request returned no result "
                "for it.")
    code = part.error_code or _native_code(part) or "batch_failed"
    return (code, "This request could not be executed: the part of the batch holding it "
            f"failed ({code}).")


def _native_code(part: PartRow) -> str | None:
    errors = part.object.get("errors") or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    return code if isinstance(code, str) else None


def _counts(parts: Sequence[PartRow]) -> tuple[int, int]:
    completed = failed = 0
    for p in parts:
        counts = p.object.get("request_counts") or {}
        completed += int(counts.get("completed") or 0)
        failed += int(counts.get("failed") or 0)
    return completed, failed


def _usage(parts: Sequence[PartRow]) -> Usage | None:
    reported = [p.object["usage"] for p in parts if isinstance(p.object.get("usage"), dict)]
    if not reported:
        return None
    sums: dict[str, int | None] = {}
    for name in _TOKENS:
        values = [u[name] for u in reported if isinstance(u.get(name), int)]
        sums[name] = sum(values) if values else None
    return Usage(**sums)


def _cost(gw: Gateway, parts: Sequence[PartRow]) -> Cost:
    """What the parts cost, each at its own deployment's batch prices; unpriced (None) when
    a part that completed requests reported no tokens, or its deployment has no price."""
    usd, reported = 0.0, False
    for p in parts:
        usage = p.object.get("usage")
        if not isinstance(usage, dict):
            if (p.object.get("request_counts") or {}).get("completed"):
                return Cost(None)  # work done at an unknown cost: never a silent 0
            continue
        reported = True
        deployment = gw.deployments.get(p.deployment_id)
        prices = prices_for(deployment) if deployment is not None else None
        sent, received = usage.get("input_tokens"), usage.get("output_tokens")
        if prices is None or not isinstance(sent, int) or not isinstance(received, int):
            return Cost(None)
        usd += prices.cost(sent, received)
    return Cost(usd if reported else None)


def _total(row: BatchRow, parts: Sequence[PartRow]) -> int:
    return sum(p.total for p in parts) or int(
        (row.object.get("request_counts") or {}).get("total") or 0)


def _times(row: BatchRow, **now: int | None) -> dict[str, int | None]:
    known = row.object
    times: dict[str, int | None] = {
        "in_progress_at": known.get("in_progress_at") or row.created_at,
        "expires_at": known.get("expires_at") or row.created_at + 86_400,
        "cancelling_at": known.get("cancelling_at"),
        "finalizing_at": known.get("finalizing_at"),
    }
    times.update({k: v for k, v in now.items() if v is not None})
    return times


async def view(gw: Gateway, row: BatchRow, parts: Sequence[PartRow],
               status: str) -> dict[str, Any]:
    """The batch while its parts run: counts and usage summed."""
    completed, failed = _counts(parts)
    extra = {"finalizing_at": int(time.time())} if status == "finalizing" else {}
    batch = Batch(id=row.provider_batch_id, status=status,  # type: ignore[arg-type]
                  request_counts=RequestCounts(_total(row, parts), completed, failed),
                  usage=_usage(parts))
    return await present(gw, row, _timed(batch, _times(row, **extra)))


def _timed(batch: Batch, times: dict[str, int | None]) -> Batch:
    for name, value in times.items():
        setattr(batch, name, value)
    return batch


async def refresh(gw: Gateway, row: BatchRow) -> dict[str, Any]:
    current = await gw.store.parts.batch(row.id) or row
    if current.terminal:
        return current.object
    cancelling = current.status == "cancelling"
    parts = await gw.store.parts.of(row.id)
    file = await gw.store.get_file(None, row.input_file_id)
    job = Job(row.id, file, str(row.object.get("endpoint") or ""),
              str(row.object.get("completion_window") or "24h"),
              row.object.get("metadata")) if file is not None else None
    await asyncio.gather(*(_advance(gw, current, job, p, cancelling, parts) for p in parts))
    parts = await gw.store.parts.of(row.id)
    if not all(p.terminal for p in parts) or any(_retry_due(gw, p, cancelling, parts)
                                                 for p in parts):
        obj = await view(gw, current, parts, "cancelling" if cancelling else "in_progress")
        await settle(gw, current, obj)
        return obj
    if current.status != "finalizing" and not cancelling:
        obj = await view(gw, current, parts, "finalizing")
        await settle(gw, current, obj)
        current = dataclasses.replace(current, status="finalizing", object=obj)
    try:
        return await _end(gw, current, parts, cancelling)
    except Exception:  # a part's results could not be read: merged again at the next refresh
        log.exception("split batch %s: merge failed; it is done again later", row.id)
        return current.object


async def _end(gw: Gateway, row: BatchRow, parts: list[PartRow],
               cancelling: bool) -> dict[str, Any]:
    file = await gw.store.get_file(None, row.input_file_id)
    if file is None or file.kept_key is None:
        # The input was deleted: without it nothing can be put in order.
        merged = merge.Merged(*_counts(parts), None, None)
    else:
        merged = await merge.merge(gw, row, file, parts, why)
    status = end_status(cancelling, parts)
    now = int(time.time())
    errors = None
    if status == "failed":
        errors = [BatchError(code=why(p)[0], message=f"Lines {p.first_line} to {p.last_line} "
                             f"failed: {why(p)[0]}.") for p in parts]
    batch = Batch(
        id=row.provider_batch_id, status=status,  # type: ignore[arg-type]
        request_counts=RequestCounts(_total(row, parts), merged.completed, merged.failed),
        usage=_usage(parts), errors=errors,
        output=ResultFile(bytes=merged.output_bytes, created_at=now)
        if merged.output_bytes is not None else None,
        error=ResultFile(bytes=merged.error_bytes, created_at=now)
        if merged.error_bytes is not None else None)
    times = _times(row, finalizing_at=row.object.get("finalizing_at") or now,
                   **{f"{status}_at": now})
    obj = await present(gw, row, _timed(batch, times))
    # Priced part by part: the prices held at create are the first part's deployment's.
    await settle(gw, row, obj, _cost(gw, parts))
    log.info("split batch %s ended %s (%d parts)", row.id, status, len(parts))
    return obj


def _retry_due(gw: Gateway, part: PartRow, cancelling: bool,
               parts: Sequence[PartRow]) -> bool:
    return (not cancelling and part.status == "failed" and part.attempt < 2
            and bool(_others(gw, part, parts)))


def _others(gw: Gateway, part: PartRow, parts: Sequence[PartRow]) -> list[str]:
    """Deployments a failed part may be tried again on: of the batch's groups, not its own,
    those running no part of the batch first."""
    groups = {p.model_group for p in parts}
    deps = [d.id for g in sorted(groups) for d in gw.groups.get(g, [])
            if d.id != part.deployment_id]
    ordered = gw.router.order(deps)
    busy = {p.deployment_id for p in parts}
    return [d for d in ordered if d not in busy] + [d for d in ordered if d in busy]


async def _advance(gw: Gateway, row: BatchRow, job: Job | None, part: PartRow,
                   cancelling: bool, parts: Sequence[PartRow]) -> None:
    """One step for one part: poll (or cancel) it, take it over, or try it again."""
    try:
        if part.status == SUBMITTING:
            if part.lease_until < time.time() and job is not None:
                await _take_over(gw, job, part, cancelling, parts)
        elif part.provider_batch_id is not None and not part.terminal:
            await _poll(gw, part, cancelling)
        elif _retry_due(gw, part, cancelling, parts) and job is not None:
            await _retry(gw, job, part, parts)
    except (UpstreamError, GatewayError) as e:
        log.warning("split batch %s: part %d not refreshed: %r", row.id, part.part, e)
    except Exception:  # one part's trouble must not fail the batch's retrieve: next refresh
        log.exception("split batch %s: part %d not refreshed", row.id, part.part)


async def _poll(gw: Gateway, part: PartRow, cancelling: bool) -> None:
    provider = gw.provider(part.deployment_id)
    if provider is None or part.provider_batch_id is None:
        return
    if cancelling and part.status not in ("cancelling", *TERMINAL) \
            and provider.capabilities().cancel:
        native = await provider.cancel(part.provider_batch_id)
    else:
        native = await provider.poll(part.provider_batch_id)
    terminal = native.status in TERMINAL
    await gw.store.parts.seen(part.batch_id, part.part, native.status, terminal,
                              msgspec.to_builtins(native))
    if terminal and part.input_id is not None:
        await forget_copy(gw, provider, part, part.input_id)


async def _take_over(gw: Gateway, job: Job, part: PartRow, cancelling: bool,
                     parts: Sequence[PartRow]) -> None:
    """A part whose submitter died before recording it: submitted again (its copy, if one
    was recorded, is used)."""
    holder = secrets.token_hex(8)
    if not await gw.store.parts.resume(part.batch_id, part.part, holder, lease_seconds(gw)):
        return
    taken = await gw.store.parts.get(part.batch_id, part.part)
    if taken is None:
        return
    if cancelling:
        await gw.store.parts.failed(part.batch_id, part.part, "batch_cancelled",
                                    "The batch was cancelled before this part started.")
        return
    log.info("split batch %s: part %d taken over", part.batch_id, part.part)
    provider = gw.provider(taken.deployment_id)
    if taken.input_id is not None and provider is not None:
        # A new copy: the janitor cancels every batch made from the old one that nobody
        # recorded, and must not take this try's batch for one of them.
        await forget_copy(gw, provider, taken, taken.input_id)
        taken = dataclasses.replace(taken, input_id=None)
    await with_failover(gw, job, taken, holder, _others(gw, taken, parts))


async def _retry(gw: Gateway, job: Job, part: PartRow, parts: Sequence[PartRow]) -> None:
    """A part that failed on its deployment, tried once more on another."""
    holder = secrets.token_hex(8)
    for dep_id in _others(gw, part, parts):
        provider = gw.provider(dep_id)
        if provider is None:
            continue
        if not await gw.store.parts.retry(part, holder, lease_seconds(gw), dep_id,
                                          provider.deployment.model_name):
            return  # another instance took it
        taken = await gw.store.parts.get(part.batch_id, part.part)
        assert taken is not None
        log.info("split batch %s: part %d failed on %s, trying %s", part.batch_id, part.part,
                 part.deployment_id, dep_id)
        await with_failover(gw, job, taken, holder, [])
        return


async def cancel(gw: Gateway, row: BatchRow) -> dict[str, Any]:
    """Cancel every part; the batch ends `cancelled` once they have all ended."""
    obj = dict(row.object)
    obj["status"] = "cancelling"
    obj["cancelling_at"] = obj.get("cancelling_at") or int(time.time())
    await gw.store.update_batch(row.id, status="cancelling", terminal=False, obj=obj)
    return await refresh(gw, dataclasses.replace(row, status="cancelling", object=obj))


async def admin_parts(gw: Gateway, row: BatchRow) -> list[dict[str, Any]]:
    """The parts as the master key sees them: where each runs and how far it is."""
    out = []
    for p in await gw.store.parts.of(row.id):
        counts = p.object.get("request_counts") or {}
        out.append({
            "deployment_id": p.deployment_id, "model_group": p.model_group,
            "status": p.status, "attempt": p.attempt, "first_line": p.first_line,
            "total": p.total,
            "request_counts": {"total": p.total,
                               "completed": int(counts.get("completed") or 0),
                               "failed": int(counts.get("failed") or 0)},
        })
    return out

