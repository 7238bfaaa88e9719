"""Writing one upload to every target deployment at once, all or nothing.

Each deployment's copy is an upload task fed through a small queue, so the copies are written
while the client's upload is still arriving and memory stays at a few chunks per deployment.
A copy only completes when `finish()` ends its stream, which happens after the whole file has
been validated; `abort()` cancels the half-sent uploads instead, and the provider never sees a
complete file. If some copies complete and another fails, the completed ones are deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from gateway.errors import GatewayError, UpstreamError, client_error
from gateway.jsonl import ModelSwap, rewrite_lines
from gateway.provider import Deployment, Provider, ProviderFile
from gateway.store import Placement

log = logging.getLogger("gateway.fanout")

_QUEUE_CHUNKS = 8  # per deployment; chunks are ~64-256 KiB


class _Copy:
    def __init__(self, provider: Provider, filename: str, models: list[str]) -> None:
        self.provider = provider
        # A provider that keeps the default prepare_line only renames body.model: that can be
        # done on the raw bytes.
        self.swap = (
            ModelSwap(models, provider.deployment.model)
            if type(provider).prepare_line is Provider.prepare_line
            else None
        )
        # Copies made by the same byte-level rename of the same model are identical: made once.
        self.same_as = provider.deployment.model if self.swap is not None else None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        self.task: asyncio.Task[ProviderFile] = asyncio.create_task(
            provider.upload_file(self._chunks(), filename)
        )
        self.task.add_done_callback(self._unblock)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    def _unblock(self, _: object) -> None:
        # The upload ended early (failed): empty the queue so a pending put() returns.
        while not self.queue.empty():
            self.queue.get_nowait()

    def rewrite(self, lines: list[tuple[int, bytes]]) -> bytes:
        return rewrite_lines(lines, self.provider.prepare_line, self.swap)

    async def put(self, data: bytes) -> None:
        if self.task.done():
            raise _public(self.provider.deployment, self.task.exception())
        await self.queue.put(data)


def _public(deployment: Deployment, error: BaseException | None) -> BaseException:
    """What the client is told about a failed copy: the model group, never the deployment."""
    log.warning("upload to deployment %s failed: %r", deployment.id, error)
    if isinstance(error, UpstreamError):
        return client_error(error, deployment.model_name)
    return error or RuntimeError("an upload finished before its file was complete")


class Fanout:
    def __init__(
        self,
        providers: dict[str, Provider],
        targets: list[Deployment],
        filename: str,
        models: list[str],
    ) -> None:
        self.copies = [_Copy(providers[d.id], filename, models) for d in targets]
        self.finished = False

    async def send(self, lines: list[tuple[int, bytes]]) -> None:
        if not lines:
            return
        made: dict[str, bytes] = {}
        for copy in self.copies:
            if copy.same_as is None:
                await copy.put(copy.rewrite(lines))
                continue
            if copy.same_as not in made:
                made[copy.same_as] = copy.rewrite(lines)
            await copy.put(made[copy.same_as])

    async def finish(self) -> list[Placement]:
        """End every copy's stream and wait for the uploads. All succeed, or none is kept."""
        for copy in self.copies:
            if not copy.task.done():
                await copy.queue.put(None)
        results = await asyncio.gather(*(c.task for c in self.copies), return_exceptions=True)
        self.finished = True
        done = [
            Placement(c.provider.deployment.id, r.id, r.status)
            for c, r in zip(self.copies, results, strict=True)
            if isinstance(r, ProviderFile)
        ]
        failed = [
            (c.provider.deployment, r)
            for c, r in zip(self.copies, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if not failed:
            return done
        await self.remove(done)
        raise _public(*failed[0])

    async def abort(self) -> None:
        """Stop every copy before it completes; delete any that completed regardless."""
        if self.finished:
            return  # finish() already kept all copies or removed them
        for copy in self.copies:
            copy.task.cancel()
        results = await asyncio.gather(*(c.task for c in self.copies), return_exceptions=True)
        await self.remove(
            [
                Placement(c.provider.deployment.id, r.id, r.status)
                for c, r in zip(self.copies, results, strict=True)
                if isinstance(r, ProviderFile)
            ]
        )

    async def remove(self, placements: list[Placement]) -> None:
        by_id = {c.provider.deployment.id: c.provider for c in self.copies}

        async def remove_one(p: Placement) -> None:
            try:
                await by_id[p.deployment_id].delete_file(p.provider_file_id)
            except (GatewayError, UpstreamError) as e:
                # Best effort: the caller is already being told the upload failed.
                log.warning("could not remove copy on %s: %r", p.deployment_id, e)

        await asyncio.gather(*(remove_one(p) for p in placements))
