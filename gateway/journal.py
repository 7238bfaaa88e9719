"""The intent journal: a row written before each upstream side effect (a copy, a batch create)
and removed together with the row that records its outcome.

A process renews all its intents on one beat while it lives; if it dies between the upstream
call and the record, its intents' leases run out and `recovery` finds what was made upstream.
An intent is also left for `recovery` when an upstream call ended in a way that does not say
whether the provider acted (a timeout, a dropped connection).
"""

from __future__ import annotations

import secrets
import time

from gateway.errors import GatewayError, UpstreamError, UpstreamUnavailable
from gateway.store import Store
from gateway.store.intents import IntentRow


class Journal:
    def __init__(self, store: Store, lease: float = 60.0) -> None:
        self.store = store
        self.lease = lease  # renewed every lease / 4 (`renew`, on the background beat)
        self.holder = secrets.token_hex(8)  # this process

    async def begin(self, kind: str, subject: str, deployment_id: str,
                    input_id: str | None = None) -> str:
        now = time.time()
        intent_id = secrets.token_hex(12)
        await self.store.intents.begin(IntentRow(
            id=intent_id, kind=kind, subject=subject, deployment_id=deployment_id,
            input_id=input_id, holder=self.holder, lease_until=now + self.lease,
            created_at=now))
        return intent_id

    async def end(self, intent_id: str) -> None:
        await self.store.intents.end(intent_id)

    async def failed(self, intent_id: str, error: BaseException) -> None:
        """The upstream call failed: forget the intent unless the provider may have acted."""
        if not ambiguous(error):
            await self.end(intent_id)

    async def renew(self) -> None:
        await self.store.intents.renew(self.holder, time.time() + self.lease)


def ambiguous(error: BaseException) -> bool:
    """Whether a failed upstream call may still have had its effect: no answer came back (a
    timeout, a reset, the task cancelled) or a 5xx (a proxy's, perhaps, after the provider
    acted). A refusal (4xx, 429) says the provider did nothing."""
    if isinstance(error, UpstreamUnavailable):
        status = error.upstream_status
        return status is None or status >= 500
    return not isinstance(error, UpstreamError | GatewayError)
