"""Writing one upload to the kept store and to every file-input deployment at once.

Each deployment's copy is an upload task fed through a small queue, so the copies are written
while the client's upload is still arriving and memory stays at a few chunks per deployment.
A copy only completes when `finish()` ends its stream, which happens after the whole file has
been validated; `abort()` cancels the half-sent uploads instead, and the provider never sees a
complete file. A copy that fails does not fail the upload: the gateway keeps the file and the
copy is made again later (`copies.Copier`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from gateway.errors import GatewayError, UpstreamError
from gateway.filestore import Writer
from gateway.journal import Journal, ambiguous
from gateway.jsonl import Block
from gateway.provider import Provider, RenameModel
from gateway.rewrite import Rewriter
from gateway.store import Copy

log = logging.getLogger("gateway.fanout")

_QUEUE_CHUNKS = 8  # per deployment; chunks are ~64-256 KiB


class _Copy:
    def __init__(self, provider: Provider, name: str, models: list[str], journal: Journal,
                 file_id: str) -> None:
        self.provider = provider
        self.rewriter = Rewriter(provider.rewrite(), models)
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        self.intent: str | None = None
        self.task: asyncio.Task[str] = asyncio.create_task(self._make(journal, file_id, name))
        self.task.add_done_callback(self._unblock)

    async def _make(self, journal: Journal, file_id: str, name: str) -> str:
        self.intent = await journal.begin("copy", file_id, self.provider.deployment.id)
        return await self.provider.put_input(self._chunks(), name)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    def _unblock(self, _: object) -> None:
        # The upload ended early (failed): empty the queue so a pending put() returns.
        while not self.queue.empty():
            self.queue.get_nowait()

    async def put(self, data: bytes) -> None:
        if not self.task.done():  # a failed copy takes no more data; it is made again later
            await self.queue.put(data)


class Fanout:
    def __init__(
        self,
        kept: Writer,
        providers: list[Provider],
        file_id: str,
        models: list[str],
        journal: Journal,
        inline: Sequence[Provider] = (),
    ) -> None:
        self.kept = kept
        self.journal = journal
        # Upstream copies are named after the gateway id: providers insist on `.jsonl`, an
        # admin looking at a provider console can tell which gateway file a copy belongs to,
        # and after a crash `recovery` finds them by it.
        self.copies = [_Copy(p, f"{file_id}.jsonl", models, journal, file_id)
                       for p in providers]
        self.settled: list[str] = []  # intents to end with the file's record
        # Inline deployments get no copy, but a line they cannot take must still be a 400 at
        # upload, naming the line, as it is for file deployments: their rewrite runs, unkept.
        self.checks = [Rewriter(p.rewrite(), models) for p in inline
                       if not isinstance(p.rewrite(), RenameModel)]
        self.finished = False

    async def keep(self, raw: bytes) -> None:
        """Bytes of the upload as the client sent them, for the kept copy."""
        if raw:
            await self.kept.write(raw)

    async def send(self, blocks: list[Block], raw: bytes = b"") -> None:
        """Validated lines for the copies (and, when given, the bytes they came in)."""
        await self.keep(raw)
        for block in blocks:
            for check in self.checks:
                check(block)
            made: dict[object, bytes] = {}
            for copy in self.copies:
                key = copy.rewriter.shared_as
                if key is None:
                    await copy.put(copy.rewriter(block))
                    continue
                if key not in made:
                    made[key] = copy.rewriter(block)
                await copy.put(made[key])

    async def finish(self) -> tuple[int, list[Copy]]:
        """Keep the file, end every copy's stream and wait for the uploads: the kept size and
        each deployment's copy, `ready` or `failed`."""
        size = await self.kept.commit()
        for copy in self.copies:
            if not copy.task.done():
                await copy.queue.put(None)
        results = await asyncio.gather(*(c.task for c in self.copies), return_exceptions=True)
        self.finished = True
        out: list[Copy] = []
        for copy, result in zip(self.copies, results, strict=True):
            dep = copy.provider.deployment.id
            if copy.intent is not None and (isinstance(result, str) or not ambiguous(result)):
                self.settled.append(copy.intent)
            if isinstance(result, str):
                out.append(Copy(dep, result, "ready"))
            else:
                log.warning("copy to deployment %s failed, to be made again: %r", dep, result)
                if not isinstance(result, UpstreamError | GatewayError | OSError):
                    log.error("unexpected failure of a copy", exc_info=result)
                out.append(Copy(dep, None, "failed", attempts=1))
        return size, out

    async def abort(self) -> None:
        """Stop every copy before it completes; delete any that completed regardless."""
        if self.finished:
            return
        await self.kept.abort()
        for copy in self.copies:
            copy.task.cancel()
        results = await asyncio.gather(*(c.task for c in self.copies), return_exceptions=True)
        for copy, result in zip(self.copies, results, strict=True):
            if isinstance(result, str):
                done = await remove_one(copy.provider, result)
            else:
                # Cancelled mid-stream, the provider never saw a whole file: nothing to find.
                done = isinstance(result, asyncio.CancelledError) or not ambiguous(result)
            if done and copy.intent is not None:
                await self.journal.end(copy.intent)


async def remove_one(provider: Provider, native: str) -> bool:
    """Delete a copy upstream, best effort (the caller is already failing); whether it went."""
    try:
        await provider.delete_input(native)
    except (GatewayError, UpstreamError) as e:
        log.warning("could not remove copy on %s: %r", provider.deployment.id, e)
        return False
    return True
