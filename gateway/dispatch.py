"""Placing a batch: on a deployment of its groups that can run it, with failover.

Deployments are tried in the router's order. One that holds a ready copy of the input (or takes
its input inline) is tried first; one whose copy is missing or failed gets the copy made first.
A deployment that cannot run the batch at all (endpoint, request count) is skipped; one that
is busy or down is cooled down and the next is tried.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec

from gateway import ids
from gateway.errors import (
    FAILOVER_ERRORS,
    BadRequest,
    DeploymentFull,
    GatewayError,
    RateLimited,
    Unsuitable,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamFailed,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    client_error,
)
from gateway.jsonl import lines
from gateway.provider import Provider, Submission
from gateway.rewrite import Rewriter, rewritten
from gateway.runtime import Gateway
from gateway.store import BatchRow, FileRow
from gateway.tracking import first_answer, present
from gateway.types import TERMINAL, Batch

log = logging.getLogger("gateway.dispatch")


@dataclass(frozen=True)
class Request:
    owner: str
    file: FileRow
    groups: list[str]
    endpoint: str
    window: str
    metadata: dict[str, str] | None


def _runs(provider: Provider, req: Request) -> str | None:
    """Why `provider` cannot run this batch at all, or None."""
    caps = provider.capabilities()
    count = req.file.request_count
    if req.endpoint not in caps.endpoints:
        return f"it needs {req.endpoint}"
    if count is not None and count < caps.min_requests:
        return f"it has {count} requests; one needs at least {caps.min_requests}"
    if count is not None and count > caps.max_requests:
        return f"it has {count} requests; one takes at most {caps.max_requests}"
    if caps.input == "inline" and req.file.kept_key is None:
        return "the file was uploaded before the gateway kept inputs"
    return None


def _opener(gw: Gateway, file: FileRow, provider: Provider) -> AsyncIterator[bytes]:
    rewriter = Rewriter(provider.rewrite(), file.model_groups)

    async def pieces() -> AsyncIterator[bytes]:
        async for piece in rewritten(await gw.files.open(file.kept_key or ""), rewriter):
            yield piece

    return pieces()


async def _lines_url(gw: Gateway, file: FileRow) -> str | None:
    """The `url` every line of a kept input names (validated alike at upload), or None. Only
    for files uploaded before the gateway kept it with the file (`FileRow.endpoint`)."""
    if file.kept_key is None:
        return None
    content = await gw.files.open(file.kept_key)
    try:
        async for raw in lines(content):
            url = msgspec.json.decode(raw, type=_LineUrl).url
            return url
    finally:
        if hasattr(content, "aclose"):
            await content.aclose()
    return None


class _LineUrl(msgspec.Struct):
    url: str


async def check_endpoint(gw: Gateway, req: Request) -> None:
    """400 when the batch's endpoint is not the `url` of the file's lines."""
    url = req.file.endpoint or await _lines_url(gw, req.file)
    if url is not None and url != req.endpoint:
        raise BadRequest(
            f"endpoint {req.endpoint!r} differs from the url of the file's lines ({url!r}).",
            param="endpoint",
            code="endpoint_mismatch",
        )


def candidates(gw: Gateway, req: Request) -> list[str]:
    """The deployments that can run this batch, in the router's order, those holding a
    ready copy (or taking their input inline) first; a 400 when there are none."""
    file = req.file
    found: list[Provider] = []
    unsuitable: list[str] = []
    for group in req.groups:
        for d in gw.groups.get(group, []):
            provider = gw.providers[d.id]
            reason = _runs(provider, req)
            if reason is None:
                found.append(provider)
            else:
                unsuitable.append(reason)
    ordered = gw.router.order([p.deployment.id for p in found])

    def ready(dep_id: str) -> bool:
        copy = file.copy_on(dep_id)
        caps = gw.providers[dep_id].capabilities()
        return caps.input == "inline" or (copy is not None and copy.state == "ready")

    # Copies that exist first; a deployment that needs its copy made comes after them.
    ordered = [d for d in ordered if ready(d)] + [d for d in ordered if not ready(d)]
    if not ordered:
        why = f" ({'; '.join(sorted(set(unsuitable)))})" if unsuitable else ""
        raise BadRequest(
            f"No deployment of {', '.join(req.groups)} can run this batch{why}.",
            param="input_file_id",
            code="no_suitable_deployment",
        )
    return ordered


async def place(gw: Gateway, req: Request) -> dict[str, object]:
    """Create the batch on the first deployment that takes it; the gateway's Batch."""
    file = req.file
    await check_endpoint(gw, req)
    ordered = candidates(gw, req)
    batch_id = ids.new_batch_id()
    failures: list[tuple[str, UpstreamError]] = []
    for dep_id in ordered:
        provider = gw.providers[dep_id]
        group = provider.deployment.model_name
        input_id: str | None = None
        if provider.capabilities().input == "file":
            copy = file.copy_on(dep_id)
            input_id = copy.provider_file_id if copy and copy.state == "ready" else None
            if input_id is None:
                try:
                    input_id = await gw.copier.make(file, provider)
                except UpstreamError as e:
                    failures.append((group, e))
                    continue
                if input_id is None:  # another request is making it right now
                    failures.append((group, UpstreamUnavailable("the copy is being made")))
                    continue
        job = Submission(
            batch_id=batch_id,
            file_id=file.id,
            input_id=input_id,
            endpoint=req.endpoint,
            completion_window=req.window,
            metadata=req.metadata,
            request_count=file.request_count or 0,
            size=file.bytes,
            open_input=functools.partial(_opener, gw, file, provider),
        )
        try:
            native, intent = await _submit(gw, provider, job)
        except Unsuitable as e:
            log.info("deployment %s cannot run batch %s: %s", dep_id, batch_id, e.detail)
            failures.append((group, e))
            continue
        except FAILOVER_ERRORS as e:
            retry = e.retry_after if isinstance(e, UpstreamRateLimited) else None
            gw.router.cool_down(dep_id, retry)
            log.warning("batch create on %s failed, trying the next: %r", dep_id, e)
            failures.append((group, e))
            continue
        except UpstreamNotFound as e:
            log.warning("deployment %s lost its copy of file %s", dep_id, file.id)
            failures.append((group, e))
            continue
        except UpstreamBadRequest as e:
            native_file = {input_id: file.id} if input_id else {}
            raise client_error(e, group, native_file) from e
        gw.router.recovered(dep_id)
        row = BatchRow(
            id=batch_id,
            owner=req.owner,
            deployment_id=dep_id,
            model_group=group,
            provider_batch_id=native.id,
            input_file_id=file.id,
            created_at=int(time.time()),
            status=native.status,
            terminal=False,
            object={},
        )
        row = dataclasses.replace(row, object=first_answer(
            req.endpoint, req.window, req.metadata, file.request_count or 0))
        obj = await present(gw, row, native)
        row = dataclasses.replace(row, object=obj, status=obj["status"],
                                  terminal=obj["status"] in TERMINAL)
        async with gw.store.db.transaction():
            await gw.store.insert_batch(row)
            await gw.journal.end(intent)
        return obj
    raise all_failed(failures, req.groups)


async def _submit(gw: Gateway, provider: Provider, job: Submission) -> tuple[Batch, str]:
    """Submit, an intent written first; the batch and the intent to end with its record."""
    intent = await gw.journal.begin("batch", job.batch_id, provider.deployment.id, job.input_id)
    try:
        return await provider.submit(job), intent
    except UpstreamError as e:
        await gw.journal.failed(intent, e)
        raise


def all_failed(failures: list[tuple[str, UpstreamError]], groups: list[str]) -> GatewayError:
    rejected = [(g, e) for g, e in failures if isinstance(e, UpstreamBadRequest)]
    if rejected:  # a provider refused the file itself: the client's to fix
        return client_error(rejected[0][1], rejected[0][0])
    if failures and all(isinstance(e, UpstreamRateLimited | DeploymentFull) for _, e in failures):
        waits = [e.retry_after for _, e in failures
                 if isinstance(e, UpstreamRateLimited) and e.retry_after]
        err = client_error(failures[0][1], failures[0][0])
        if waits and isinstance(err, RateLimited):
            err.headers["Retry-After"] = str(int(min(waits)))
        return err
    return UpstreamFailed(
        f"No deployment of {', '.join(groups)} accepted the batch ({len(failures)} tried).",
        code="upstream_error",
    )
