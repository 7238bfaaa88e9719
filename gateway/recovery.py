"""After a crash: what a dead process started upstream but never recorded.

Each intent left behind (`gateway/journal.py`) names a deployment and what was being made there.
The janitor asks the deployment for it (`Provider.find_inputs` / `find_batches`):
- a copy of a file the gateway has, whose copy there is not ready, is adopted (the batch can
  run on it); any other copy named after the file and not recorded is deleted;
- a batch the gateway has no record of is cancelled: its client never got an id for it, so
  nobody could follow, download or pay attention to it.
An intent is left alone while another live process works on the same file or copy there (what it
makes is not yet recorded either); it is tried again if the deployment cannot be reached, and
dropped with a warning when the deployment cannot be searched.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable

from gateway.errors import UnsupportedOperation, UpstreamConflict, UpstreamError, UpstreamNotFound
from gateway.provider import Provider
from gateway.runtime import Gateway
from gateway.store.intents import IntentRow

log = logging.getLogger("gateway.recovery")

# Upstream clocks and ours differ a little: look this much further back than the intent.
_CLOCK_SLACK = 300


async def reconcile(gw: Gateway, limit: int = 20) -> int:
    """Settle the intents of dead processes; returns how many were settled."""
    holder = secrets.token_hex(8)
    settled = 0
    now = time.time()
    # One that cannot be settled now (or whose janitor dies) is tried again a lease later.
    retry = gw.settings.crash_recovery_seconds
    for intent in await gw.store.intents.take_stale(holder, now, retry, limit):
        provider = gw.provider(intent.deployment_id)
        if provider is None:
            log.warning("intent %s: deployment %s is no longer configured; dropped",
                        intent.id, intent.deployment_id)
        elif await gw.store.intents.others_live(intent, now):
            continue  # its lease makes it due again later
        else:
            try:
                await (_copy if intent.kind == "copy" else _batch)(gw, provider, intent)
            except UnsupportedOperation:
                log.warning("a %s for %s may be left on deployment %s: it cannot be searched",
                            intent.kind, intent.subject, intent.deployment_id)
            except UpstreamError as e:
                log.warning("intent %s on %s not settled, tried again later: %r",
                            intent.id, intent.deployment_id, e)
                continue
        await gw.store.intents.end(intent.id)
        settled += 1
    return settled


async def _copy(gw: Gateway, provider: Provider, intent: IntentRow) -> None:
    since = int(intent.created_at) - _CLOCK_SLACK
    found = await provider.find_inputs(f"{intent.subject}.jsonl", since)
    file = await gw.store.get_file(None, intent.subject)
    copy = file.copy_on(intent.deployment_id) if file is not None else None
    recorded = copy.provider_file_id if copy is not None and copy.state == "ready" else None
    extra = [native for native in found if native != recorded]
    if extra and copy is not None and recorded is None:  # file is None: deleted or never kept
        adopted = extra.pop(0)
        await gw.store.copy_made(intent.subject, intent.deployment_id, adopted)
        log.info("adopted copy of %s on %s left by a dead process", intent.subject,
                 intent.deployment_id)
    for native in extra:
        await _quietly(provider.delete_input(native))
        log.warning("removed an unrecorded copy of %s on %s", intent.subject,
                    intent.deployment_id)


async def _batch(gw: Gateway, provider: Provider, intent: IntentRow) -> None:
    if await gw.store.intents.batch_exists(intent.subject):
        return
    since = int(intent.created_at) - _CLOCK_SLACK
    found = await provider.find_batches(intent.subject, intent.input_id, since)
    recorded = await gw.store.intents.recorded_batches(intent.deployment_id, found)
    for native in found:
        if native not in recorded:
            await _quietly(provider.cancel(native))
            log.warning("cancelled an unrecorded batch on %s, started for %s by a dead process",
                        intent.deployment_id, intent.subject)


async def _quietly(call: Awaitable[object]) -> None:
    """Await an upstream removal; already gone or already finished is fine."""
    with contextlib.suppress(UpstreamNotFound, UpstreamConflict):
        await call
