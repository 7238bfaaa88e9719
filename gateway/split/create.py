"""Creating a split batch: its parts sized by weight, one per deployment, submitted at once.

The batch and its parts are written first (each part leased to this request), then every part
is submitted concurrently; a part its deployment does not take is tried once more on another
deployment of the groups. When no part could be submitted the batch is removed and the client
gets the error placement would give; otherwise the failed parts' lines end in the error file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Any

from gateway import dispatch, ids
from gateway.errors import UpstreamError
from gateway.runtime import Gateway
from gateway.split import SPLIT, plan
from gateway.split.submit import Job, lease_seconds, with_failover
from gateway.split.track import view
from gateway.store import BatchRow
from gateway.store.parts import SUBMITTING, PartRow
from gateway.tracking import first_answer, settle


async def place(gw: Gateway, req: dispatch.Request, wanted: int | str) -> dict[str, Any] | None:
    """Create the batch as parts; None when it is not worth splitting (one part would run:
    one suitable deployment, one line, or a file without a kept input or a line count)."""
    file = req.file
    count = file.request_count
    if wanted == 1 or count is None or count < 2 or file.kept_key is None:
        return None
    await dispatch.check_endpoint(gw, req)
    ordered = dispatch.candidates(gw, req)
    n = min(len(ordered) if wanted == plan.AUTO else int(wanted), len(ordered), count)
    if n < 2:
        return None
    chosen = ordered[:n]
    providers = [gw.providers[d] for d in chosen]
    ranges = plan.ranges(count, [plan.weight(p.deployment.model_info) for p in providers])
    batch_id = ids.new_batch_id()
    holder = secrets.token_hex(8)
    until = time.time() + lease_seconds(gw)
    parts = [
        PartRow(batch_id=batch_id, part=k, first_line=first, total=total, attempt=1,
                deployment_id=p.deployment.id, model_group=p.deployment.model_name,
                input_id=None, provider_batch_id=None, status=SUBMITTING, terminal=False,
                object={}, holder=holder, lease_until=until)
        for k, (p, (first, total)) in enumerate(zip(providers, ranges, strict=True))
    ]
    first = first_answer(req.endpoint, req.window, req.metadata, count)
    row = BatchRow(id=batch_id, owner=req.owner, deployment_id=chosen[0],
                   model_group=parts[0].model_group, provider_batch_id=SPLIT,
                   input_file_id=file.id, created_at=int(time.time()), status="in_progress",
                   terminal=False, object=first)
    # Whole from the start: lists answer with the stored object, even before the parts run.
    row = dataclasses.replace(row, object=await view(gw, row, parts, "in_progress"))
    await gw.store.parts.create(row, parts)
    job = Job(batch_id, file, req.endpoint, req.window, req.metadata)
    spare = [d for d in ordered if d not in chosen] + chosen
    errors = await asyncio.gather(*(with_failover(gw, job, p, holder, spare) for p in parts))
    failures: list[tuple[str, UpstreamError]] = [
        (p.model_group, e) for p, e in zip(parts, errors, strict=True) if e is not None]
    if len(failures) == len(parts):
        await gw.store.parts.discard(batch_id)
        raise dispatch.all_failed(failures, req.groups)
    obj = await view(gw, row, await gw.store.parts.of(batch_id), "in_progress")
    await settle(gw, row, obj)
    return obj
