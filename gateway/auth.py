"""Who is calling: virtual keys (stored as SHA-256 hashes) and the master key; which model
groups the caller may use (key ∩ user ∩ team).

Key rows (with their user's and team's models and blocked flags) and the batch rows a retrieve
reads are cached per process for `general_settings.row_cache_seconds` (default 1 s; 0 = off).
That is the staleness accepted: a deleted, blocked or narrowed key (or user, or team) keeps
working for at most that long on instances other than the one that made the change, whose
cache an admin write clears at once. An expiry is checked on every request, cached or not. A
batch row cached is only the owner's own batch: a finished batch never changes, and an
unfinished one is still read through to its provider. The master key reads any tenant's
batch by id."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from starlette.requests import Request

from gateway import ratelimit, reqctx
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.store import BatchRow, KeyAccess, KeyRow, Level, Store
from gateway.ttlcache import TTLCache

MASTER_OWNER = "master"


@dataclass(frozen=True)
class Principal:
    """The caller. `owner` scopes every file and batch lookup: the key's user
    (`user:<user_id>`) if it has one, else the key's token id."""

    owner: str
    is_master: bool
    key: KeyRow | None = None
    user: Level | None = None
    team: Level | None = None

    def _refused_by(self, model_group: str) -> str | None:
        """Which level refuses `model_group` ("key", "user 'u'", "team 't'"), or None. Each
        level's empty list means no restriction at that level, as in LiteLLM."""
        if self.key is None:
            return None if self.is_master else "key"
        if self.key.models and model_group not in self.key.models:
            return "key"
        for kind, level in (("user", self.user), ("team", self.team)):
            if level is not None and level.models and model_group not in level.models:
                return f"key's {kind} {level.id!r}"
        return None

    def may_use(self, model_group: str) -> bool:
        return self._refused_by(model_group) is None

    def require(self, model_groups: list[str]) -> None:
        for group in model_groups:
            refused = self._refused_by(group)
            if refused is not None:
                raise PermissionDenied(
                    f"This {refused} is not allowed to use model {group!r}.",
                    param="model",
                    code="model_not_allowed",
                )


def _noted(principal: Principal) -> Principal:
    """The caller, noted for the access log by its token id (`key_…`, or "master")."""
    reqctx.note(key=principal.key.id if principal.key else MASTER_OWNER)
    return principal


def hash_key(key: str) -> str:
    # Generated keys are 190+ bits of randomness and custom ones at least 20 characters, so a
    # fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("api-key") or None


class Authenticator:
    def __init__(self, store: Store, master_key: str | None, cache_seconds: float = 1.0) -> None:
        self.store = store
        self.master_key = master_key
        # By key hash: never a key that was not found (a new key works at once).
        self.keys: TTLCache[str, KeyAccess] = TTLCache(cache_seconds)
        self.batches: TTLCache[tuple[str, str], BatchRow] = TTLCache(cache_seconds)

    async def __call__(self, request: Request) -> Principal:
        if (known := _known(request)) is not None:
            return known
        key = self._presented(request)
        if self._is_master(key):
            return _remember(request, _noted(Principal(owner=MASTER_OWNER, is_master=True)))
        key_hash = hash_key(key)
        access = self.keys.get(key_hash)
        if access is None:
            access = await self.store.key_access(key_hash)
            if access is not None:
                self.keys.put(key_hash, access)
        return _remember(request, await ratelimit.admit(self.store, self._principal(access)))

    async def with_batch(
        self, request: Request, batch_id: str
    ) -> tuple[Principal, BatchRow | None]:
        """The caller and their batch `batch_id` (None if not theirs) in one database trip."""
        if (known := _known(request)) is not None:
            return known, await self._batch(None if known.is_master else known.owner, batch_id)
        key = self._presented(request)
        if self._is_master(key):  # any tenant's batch
            return (_remember(request, _noted(Principal(owner=MASTER_OWNER, is_master=True))),
                    await self._batch(None, batch_id))
        key_hash = hash_key(key)
        access = self.keys.get(key_hash)
        if access is not None:
            principal = self._principal(access)
            batch = await self._batch(principal.owner, batch_id)
        else:
            access, batch = await self.store.key_and_batch(key_hash, batch_id)
            principal = self._principal(access)
            if access is not None:
                self.keys.put(key_hash, access)
            if batch is not None:
                self.batches.put((principal.owner, batch_id), batch)
        return _remember(request, await ratelimit.admit(self.store, principal)), batch

    async def _batch(self, owner: str | None, batch_id: str) -> BatchRow | None:
        """`owner`'s batch; None: any owner's (cached as the master key's)."""
        key = (owner or MASTER_OWNER, batch_id)
        batch = self.batches.get(key)
        if batch is None:
            batch = await self.store.get_batch(owner, batch_id)
            if batch is not None:
                self.batches.put(key, batch)
        return batch

    def batch_changed(self, owner: str, batch: BatchRow) -> None:
        """A newer state of a batch this process read (a retrieve refreshed it)."""
        self.batches.replace((owner, batch.id), batch)

    @staticmethod
    def _presented(request: Request) -> str:
        key = presented_key(request)
        if not key:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
        return key

    def _is_master(self, key: str) -> bool:
        return bool(self.master_key) and hmac.compare_digest(
            key.encode(), str(self.master_key).encode()
        )

    @staticmethod
    def _principal(access: KeyAccess | None) -> Principal:
        row = access.key if access else None
        if access is None or row is None or (
            row.expires_at is not None and row.expires_at <= time.time()
        ):
            raise AuthenticationFailed(
                "Invalid, deleted or expired API key.", code="invalid_api_key"
            )
        if row.blocked:
            raise AuthenticationFailed(
                "This key is blocked (the master key can unblock it with /key/unblock).",
                code="key_blocked",
            )
        for kind, level in (("user", access.user), ("team", access.team)):
            if level is not None and level.blocked:
                raise AuthenticationFailed(
                    f"This key's {kind} {level.id!r} is blocked.", code=f"{kind}_blocked"
                )
        return _noted(Principal(owner=row.owner, is_master=False, key=row,
                                user=access.user, team=access.team))

    async def master(self, request: Request) -> Principal:
        principal = await self(request)
        if not principal.is_master:
            raise PermissionDenied(
                "This endpoint needs the master key.", code="master_key_required"
            )
        if request.method != "GET":
            # An admin write (a key, user or team changed): this instance sees it at once.
            self.keys.clear()
        return principal


def _known(request: Request) -> Principal | None:
    """The caller, if this request was authenticated already: a wrapper that authenticates
    first (Idempotency-Key) must not make the route count it against `rpm_limit` again."""
    known: Principal | None = getattr(request.state, "principal", None)
    return known


def _remember(request: Request, principal: Principal) -> Principal:
    request.state.principal = principal
    return principal
