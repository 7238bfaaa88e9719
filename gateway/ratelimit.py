"""`rpm_limit`: requests per minute to the gateway's API, per key, user and team.

Called from authentication for every request made with a virtual key; the master key is not
limited. A key none of whose levels has a limit costs nothing (no database work); otherwise one
upsert per request counts it in the database (gateway/store/rates.py), so the limit holds
across instances. Windows are whole minutes (fixed, not sliding): a caller can make up to
`rpm_limit` requests at the end of one minute and as many at the start of the next. A request
refused by one level still counts for the levels that had room.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from gateway.errors import RateLimited
from gateway.store.rates import WINDOW_SECONDS

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.store import Store


def _limits(principal: Principal) -> list[tuple[str, int, str]]:
    """(counter, rpm_limit, who) of each limited level of the caller."""
    key = principal.key
    if key is None:
        return []
    out = [(f"key:{key.id}", key.rpm_limit, "key")] if key.rpm_limit is not None else []
    for kind, level in (("user", principal.user), ("team", principal.team)):
        if level is not None and level.rpm_limit is not None:
            out.append((f"{kind}:{level.id}", level.rpm_limit, f"key's {kind} {level.id!r}"))
    return out


async def admit(store: Store, principal: Principal) -> Principal:
    """`principal`, unless one of its levels reached its `rpm_limit` this minute (429)."""
    limits = _limits(principal)
    if not limits:
        return principal
    now = time.time()
    window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
    full = [entry for entry in limits if entry[1] <= 0]
    if not full:
        took = await store.rates.take([(c, limit) for c, limit, _ in limits], window)
        full = [entry for entry in limits if entry[0] not in took]
    if full:
        _, limit, who = full[0]
        wait = max(1, math.ceil(window + WINDOW_SECONDS - now))
        raise RateLimited(
            f"Rate limit reached for this {who}: {limit} requests per minute. "
            f"Try again in {wait} s.",
            code="rate_limit_exceeded", headers={"Retry-After": str(wait)},
        )
    return principal
