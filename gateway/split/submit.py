"""Submitting one part of a split batch onto a deployment, crash-safe, with one failover.

A file-mode provider gets a copy of just the part's lines, named `<try>.jsonl` where `<try>`
is `<batch id>-part<k>-<random>`: one name per try, so the janitor (gateway/recovery.py),
which deletes every copy named after an intent a dead process left, can never take a copy a
later try recorded. Each upstream side effect has its intent (kinds `copy` and `batch`, subject
the try) ended in the transaction that records it on the part. A gateway-run deployment's part
is a run over the part's lines, written with the part's record in one transaction (no upstream
call, so no intent). While a part is being submitted its lease is renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from gateway.errors import (
    FAILOVER_ERRORS,
    GatewayError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    client_error,
)
from gateway.provider import Provider, Submission
from gateway.runtime import Gateway
from gateway.selfrun.provider import GatewayRunProvider, snapshot, window_seconds
from gateway.split.inputs import part_lines
from gateway.store import FileRow
from gateway.store.parts import PartRow
from gateway.store.runs import RunRow
from gateway.types import TERMINAL, Batch

log = logging.getLogger("gateway.split")

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """What every part of one split batch shares."""

    batch_id: str
    file: FileRow
    endpoint: str
    window: str
    metadata: dict[str, str] | None


def lease_seconds(gw: Gateway) -> float:
    """How long a part being submitted is held without renewal: a dead submitter's part is
    taken over after this, about when its intents are reconciled."""
    return max(gw.settings.crash_recovery_seconds, 1.0)


async def _renewing(gw: Gateway, part: PartRow, holder: str, work: Awaitable[T]) -> T:
    ttl = lease_seconds(gw)

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            with contextlib.suppress(Exception):
                await gw.store.parts.renew(part.batch_id, part.part, holder, ttl)

    beat = asyncio.create_task(renew())
    try:
        return await work
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


def _opener(gw: Gateway, job: Job, provider: Provider,
            part: PartRow) -> Callable[[], AsyncIterator[bytes]]:
    return functools.partial(part_lines, gw, job.file, provider, part.first_line, part.total)


async def submit(gw: Gateway, job: Job, part: PartRow, holder: str) -> None:
    """Submit `part` (held by `holder`) on its deployment and record it; an `UpstreamError`
    when the deployment did not take it (the part stays `submitting`, copy forgotten)."""
    provider = gw.provider(part.deployment_id)
    if provider is None:
        raise UpstreamNotFound(f"deployment {part.deployment_id} is no longer configured")
    await _renewing(gw, part, holder, _submit(gw, job, part, provider))


async def _submit(gw: Gateway, job: Job, part: PartRow, provider: Provider) -> None:
    parts = gw.store.parts
    dep = provider.deployment.id
    if isinstance(provider, GatewayRunProvider):
        await _submit_run(gw, job, part, provider)
        return
    attempt = f"{job.batch_id}-part{part.part}-{secrets.token_hex(3)}"
    input_id = part.input_id
    if provider.capabilities().input == "file" and input_id is None:
        intent = await gw.journal.begin("copy", attempt, dep)
        try:
            input_id = await provider.put_input(
                part_lines(gw, job.file, provider, part.first_line, part.total),
                f"{attempt}.jsonl")
        except UpstreamError as e:
            await gw.journal.failed(intent, e)
            raise
        except GatewayError as e:  # a line this deployment cannot take
            await gw.journal.end(intent)
            raise UpstreamBadRequest(e.message) from e
        async with gw.store.db.transaction():
            await parts.copied(job.batch_id, part.part, input_id)
            await gw.journal.end(intent)
    submission = Submission(
        batch_id=job.batch_id, file_id=job.file.id, input_id=input_id, endpoint=job.endpoint,
        completion_window=job.window, metadata=job.metadata, request_count=part.total,
        size=job.file.bytes, open_input=_opener(gw, job, provider, part))
    intent = await gw.journal.begin("batch", attempt, dep, input_id)
    try:
        native = await provider.submit(submission)
    except UpstreamError as e:
        await gw.journal.failed(intent, e)
        if input_id is not None:  # the next try is elsewhere
            await forget_copy(gw, provider, part, input_id)
        raise
    async with gw.store.db.transaction():
        await parts.submitted(job.batch_id, part.part, native.id, native.status,
                              native.status in TERMINAL, msgspec.to_builtins(native))
        await gw.journal.end(intent)


async def _submit_run(gw: Gateway, job: Job, part: PartRow,
                      provider: GatewayRunProvider) -> None:
    now = int(time.time())
    run = RunRow(
        id="run_" + secrets.token_hex(12), batch_id=job.batch_id, deployment_id=part.deployment_id,
        file_id=job.file.id, endpoint=job.endpoint, first_line=part.first_line,
        total=part.total, status="in_progress", created_at=now, in_progress_at=now,
        expires_at=now + window_seconds(job.window))
    native: Batch = snapshot(run)
    async with gw.store.db.transaction():
        await gw.store.runs.insert(run)
        await gw.store.parts.submitted(job.batch_id, part.part, run.id, native.status, False,
                                       msgspec.to_builtins(native))
    provider.on_change()


async def forget_copy(gw: Gateway, provider: Provider, part: PartRow, input_id: str) -> None:
    """Delete a part's upstream copy (best effort: a leftover is only logged)."""
    try:
        await provider.delete_input(input_id)
    except UpstreamNotFound:
        pass
    except UpstreamError as e:
        log.warning("copy of part %d of %s on %s not deleted: %r", part.part, part.batch_id,
                    part.deployment_id, e)
    await gw.store.parts.copied(part.batch_id, part.part, None)


def refused(gw: Gateway, dep_id: str, e: UpstreamError) -> None:
    """Note a deployment that did not take a part, as placement does for whole batches."""
    if isinstance(e, FAILOVER_ERRORS):
        gw.router.cool_down(dep_id, e.retry_after if isinstance(e, UpstreamRateLimited) else None)
    log.warning("part submission on %s failed: %r", dep_id, e)


async def _tried(gw: Gateway, job: Job, part: PartRow, holder: str) -> UpstreamError | None:
    """Submit `part` on its deployment; the error if the deployment did not take it."""
    try:
        await submit(gw, job, part, holder)
    except UpstreamError as e:
        refused(gw, part.deployment_id, e)
        return e
    gw.router.recovered(part.deployment_id)
    return None


async def with_failover(gw: Gateway, job: Job, part: PartRow, holder: str,
                        others: list[str]) -> UpstreamError | None:
    """Submit `part`; if its deployment does not take it and this is its first try, once more
    on the first of `others` (deployments holding the file). The part ends `failed` with the
    reason when no try took it; that error is returned."""
    error = await _tried(gw, job, part, holder)
    if error is None:
        return None
    others = [d for d in others if d != part.deployment_id and gw.provider(d) is not None]
    if part.attempt < 2 and others:
        provider = gw.providers[others[0]]
        await gw.store.parts.move(part.batch_id, part.part, others[0],
                                  provider.deployment.model_name, part.attempt + 1)
        moved = await gw.store.parts.get(part.batch_id, part.part)
        assert moved is not None
        part = moved
        error = await _tried(gw, job, part, holder)
        if error is None:
            return None
    reason = client_error(error, part.model_group)
    await gw.store.parts.failed(part.batch_id, part.part, reason.code or "part_failed",
                                reason.message)
    return error
