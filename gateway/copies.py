"""Making a deployment's copy of an input file from the input the gateway kept.

A copy that failed at upload (or belongs to a deployment added since) is made again: in the
background once its backoff has passed, and on demand when a batch needs it. A lease in the
database makes sure two instances never make the same copy at once.
"""

from __future__ import annotations

import logging
import secrets

from gateway.errors import GatewayError, UpstreamBadRequest, UpstreamError, UpstreamUnavailable
from gateway.filestore import FileStore, KeptFileMissing
from gateway.journal import Journal
from gateway.provider import Provider
from gateway.rewrite import Rewriter, rewritten
from gateway.store import FileRow, Store

log = logging.getLogger("gateway.copies")

# Longer than any upload should take: a copy whose maker died is taken over after this.
_LEASE_SECONDS = 3600.0


class Copier:
    def __init__(self, store: Store, files: FileStore, journal: Journal, backoff: float) -> None:
        self.store = store
        self.files = files
        self.journal = journal
        self.backoff = backoff

    async def make(
        self, file: FileRow, provider: Provider, *, due_only: bool = False
    ) -> str | None:
        """The native id of a new copy on `provider`'s deployment, or None when another maker
        holds it or its retry time has not come (`due_only`). A failure is recorded (the copy
        is made again after its backoff) and raised as an `UpstreamError`."""
        dep = provider.deployment.id
        if file.kept_key is None:
            return None  # uploaded before the gateway kept inputs: nothing to copy from
        holder = secrets.token_hex(8)
        if not await self.store.claim_copy(file.id, dep, holder, _LEASE_SECONDS,
                                           due_only=due_only):
            return None
        intent = await self.journal.begin("copy", file.id, dep)
        try:
            content = await self.files.open(file.kept_key)
            rewriter = Rewriter(provider.rewrite(), file.model_groups)
            native = await provider.put_input(rewritten(content, rewriter), f"{file.id}.jsonl")
        except (UpstreamError, GatewayError, KeptFileMissing, OSError) as e:
            log.warning("copy of %s to deployment %s failed: %r", file.id, dep, e)
            await self.store.copy_failed(file.id, dep, self.backoff)
            await self.journal.failed(intent, e)
            if isinstance(e, UpstreamError):
                raise
            if isinstance(e, GatewayError):  # a line this deployment cannot take
                raise UpstreamBadRequest(e.message) from e
            raise UpstreamUnavailable(f"the kept input could not be read: {e!r}") from e
        except BaseException:
            await self.store.copy_failed(file.id, dep, self.backoff)
            raise
        async with self.store.db.transaction():
            await self.store.copy_made(file.id, dep, native)
            await self.journal.end(intent)
        log.info("copy of %s made on deployment %s", file.id, dep)
        return native

    async def retry_due(self, providers: dict[str, Provider], limit: int = 20) -> int:
        """Make the failed copies whose retry time has come; returns how many were made."""
        made = 0
        for owner, file_id, dep in await self.store.copies_due(list(providers), limit):
            file = await self.store.get_file(owner, file_id)
            if file is None:
                continue
            try:
                if await self.make(file, providers[dep], due_only=True):
                    made += 1
            except UpstreamError:
                pass  # recorded; tried again after its backoff
        return made
