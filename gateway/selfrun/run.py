"""One run on the instance that holds its deployment: its lines not yet done, sent within the
deployment's limits, checkpointed, and at the end its result files.

- **Checkpoints**: finished lines are recorded in small transactions (every `FLUSH_LINES` lines
  or `FLUSH_SECONDS`), each also renewing the lease and reading the run's status, so a cancel
  made on any instance is seen within a checkpoint. A resumed run skips recorded lines: a
  finished line is never sent again; at most the lines in flight or not yet recorded when an
  instance died are.
- **Memory**: the input is streamed; at most `window` lines are between read and recorded,
  and recorded lines are never held again until the result files are streamed out of the
  database in line order.
- **Stops**: a cancel or the end of the completion window stops new requests at once; lines in
  flight finish; the lines never sent become `batch_cancelled` / `batch_expired` error lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Iterable

from gateway.filestore import KeptFileMissing, Writer
from gateway.jsonl import lines
from gateway.rewrite import Rewriter, rewritten
from gateway.runtime import Gateway
from gateway.selfrun import wire
from gateway.selfrun.provider import GatewayRunProvider, result_key
from gateway.selfrun.sender import Outcome, Sender
from gateway.store.runs import LeaseLost, RunRow, Tally, to_the_end
from gateway.tracking import refresh

log = logging.getLogger("gateway.selfrun")

FLUSH_LINES = 200
FLUSH_SECONDS = 0.5
_PAGE = 1000
_PIECE = 256 << 10


class InputGone(Exception):
    """The kept input of the run's file is no longer there (the file was deleted)."""


class Run:
    def __init__(self, gw: Gateway, provider: GatewayRunProvider, sender: Sender,
                 row: RunRow, holder: str, ttl: float) -> None:
        self.gw = gw
        self.runs = gw.store.runs
        self.provider = provider
        self.sender = sender
        self.row = row
        self.holder = holder
        self.ttl = ttl
        self.status = row.status
        self.expires_at = row.expires_at
        self.stop = asyncio.Event()
        self.lost = False  # another instance holds the deployment now: write nothing more
        self.buffer: list[tuple[int, Outcome]] = []
        self._flushing = asyncio.Lock()
        parallel = provider.params.max_parallel_requests
        # Lines between read and recorded: those in flight plus those waiting for a retry.
        self.window = max(2 * parallel, parallel + 16)

    # -- status --------------------------------------------------------------------------------

    def notice(self, status: str, expires_at: int | None) -> None:
        """The run's status as the database has it now (a cancel may come from anywhere)."""
        self.status = status
        self.expires_at = expires_at
        if status == "cancelling" or self._expired():
            self.stop.set()

    def _expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at

    # -- the whole run -------------------------------------------------------------------------

    async def __call__(self) -> None:
        try:
            if self.status in ("validating", "in_progress"):
                await self._send_all()
            if not self.lost:
                await self._end()
        except LeaseLost:
            self.lost = True
        except InputGone:
            await self._fail("input_file_deleted",
                             "The batch's input file was deleted before the batch ended.")
        except asyncio.CancelledError:
            # Shutting down: what is finished is kept, what is in flight is sent again later.
            with contextlib.suppress(Exception):
                await self._flush()
            raise
        if self.lost:
            log.info("run %s moved to another instance", self.row.id)

    async def _send_all(self) -> None:
        room = asyncio.Semaphore(self.window)
        tasks: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            room.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        ticker = asyncio.create_task(self._tick())
        try:
            async with contextlib.aclosing(self._pending()) as pending:
                async for n, request in pending:
                    if self._expired():
                        self.stop.set()
                    if self.stop.is_set() or failures:
                        break
                    await room.acquire()
                    if self.stop.is_set():
                        room.release()
                        break
                    task = asyncio.create_task(self._one(n, request))
                    tasks.add(task)
                    task.add_done_callback(done)
            while tasks:
                await asyncio.wait(list(tasks))
        finally:
            ticker.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(ticker, *tasks, return_exceptions=True)
        await self._flush()
        if failures:  # a bug, not an answer: the run starts again from its checkpoint
            raise failures[0]

    async def _one(self, n: int, request: wire.RequestLine) -> None:
        url = wire.endpoint_url(self.provider.params.api_base, request.url)
        outcome = await self.sender.send(url, self.row.endpoint, request.custom_id,
                                         bytes(request.body), self.stop)
        if outcome is not None:
            await self._record(n, outcome)

    async def _tick(self) -> None:
        """Checkpoint on a beat, so counts grow and a cancel is seen while lines are slow."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self._flush()
            except Exception:
                log.exception("checkpoint of run %s failed; trying again", self.row.id)

    # -- checkpoints ---------------------------------------------------------------------------

    async def _record(self, n: int, outcome: Outcome) -> None:
        self.buffer.append((n, outcome))
        while len(self.buffer) >= FLUSH_LINES and not self.lost:
            try:
                await self._flush()
            except Exception:  # the database is away: hold on (bounded) and try again
                log.exception("checkpoint of run %s failed; trying again", self.row.id)
                await asyncio.sleep(1.0)

    async def _flush(self) -> None:
        # Whole, even when the caller is cancelled: the checkpoint and what it took off the
        # buffer must not part (lines counted twice, or dropped).
        await to_the_end(self._flush_now())

    async def _flush_now(self) -> None:
        async with self._flushing:
            if self.lost:
                return
            taken = self.buffer[:]
            tally = Tally(
                completed=sum(1 for _, o in taken if not o.failed),
                failed=sum(1 for _, o in taken if o.failed),
                **_tokens(o for _, o in taken),
            )
            try:
                status, expires_at = await self.runs.checkpoint(
                    self.row, self.holder, self.ttl,
                    [(n, o.failed, o.line) for n, o in taken], tally)
            except LeaseLost:
                self.lost = True
                self.stop.set()
                return
            # Lines recorded meanwhile were appended after these.
            del self.buffer[:len(taken)]
            self.notice(status, expires_at)

    # -- the input -----------------------------------------------------------------------------

    async def _pending(self) -> AsyncGenerator[tuple[int, wire.RequestLine]]:
        """The run's lines with no result yet, in order, as this deployment's requests."""
        row = self.row
        file = await self.gw.store.get_file(None, row.file_id)
        if file is None or file.kept_key is None:
            raise InputGone(row.file_id)
        rewriter = Rewriter(self.provider.rewrite(), file.model_groups)
        try:
            content = await self.gw.files.open(file.kept_key)
        except KeptFileMissing as e:
            raise InputGone(row.file_id) from e
        done = self._done()
        next_done: int | None = None
        last = row.first_line + row.total - 1
        n = 0
        try:
            next_done = await anext(done, None)
            # Numbered as the run's lines are everywhere: the n-th request line of the input.
            async for raw in lines(rewritten(content, rewriter)):
                n += 1
                if n < row.first_line:
                    continue
                if n > last:
                    break
                while next_done is not None and next_done < n:
                    next_done = await anext(done, None)
                if next_done == n:
                    continue
                yield n, wire.decode_line(raw)
        finally:
            await done.aclose()
            close = getattr(content, "aclose", None)
            if close is not None:
                await close()

    async def _done(self) -> AsyncGenerator[int]:
        after = 0
        while page := await self.runs.done_lines(self.row.id, after, _PAGE):
            for n in page:
                yield n
            after = page[-1]

    # -- the end -------------------------------------------------------------------------------

    async def _end(self) -> None:
        if self.status == "cancelling":
            target, why = "cancelled", wire.CANCELLED
        elif self.status != "finalizing" and self._expired():
            target, why = "expired", wire.EXPIRED
        else:
            target, why = "completed", None
        now = int(time.time())
        if target == "completed" and self.status != "finalizing":
            self.status = await self.runs.move(self.row, self.holder, self.ttl, "finalizing",
                                               finalizing_at=now)
            if self.status == "cancelling":  # a cancel came first: every line is done anyway
                target, why = "cancelled", wire.CANCELLED
        if why is not None:
            await self._abandon(*why)
        sizes = await self._write_results()
        ended = await self.runs.finish(
            self.row, self.holder, self.ttl, target,
            **{f"{target}_at": int(time.time()), "output_bytes": sizes.get("output"),
               "error_bytes": sizes.get("errors")})
        log.info("run %s of batch %s ended %s", self.row.id, self.row.batch_id, ended)
        await self._settle()

    async def _abandon(self, code: str, message: str) -> None:
        """Every line never sent becomes an error line with `code`."""
        async with contextlib.aclosing(self._pending()) as pending:
            async for n, request in pending:
                await self._record(n, Outcome(True, wire.error_line(request.custom_id, code,
                                                                    message)))
        await self._flush()
        if self.lost:
            raise LeaseLost(self.row.deployment_id)

    async def _write_results(self) -> dict[str, int]:
        """The output and error files from the checkpoint, in line order; their sizes."""
        writers: dict[bool, Writer] = {}
        pieces: dict[bool, list[bytes]] = {False: [], True: []}
        try:
            after = 0
            while page := await self.runs.results(self.row.id, after, _PAGE):
                for _, failed, result in page:
                    pieces[failed].append(result + b"\n")
                for failed in (False, True):
                    if sum(map(len, pieces[failed])) >= _PIECE:
                        await self._write(writers, failed, pieces)
                after = page[-1][0]
            for failed in (False, True):
                if pieces[failed]:
                    await self._write(writers, failed, pieces)
            return {("errors" if failed else "output"): await w.commit()
                    for failed, w in writers.items()}
        except BaseException:
            for w in writers.values():
                await w.abort()
            raise

    async def _write(self, writers: dict[bool, Writer], failed: bool,
                     pieces: dict[bool, list[bytes]]) -> None:
        if failed not in writers:
            writers[failed] = self.gw.files.writer(
                result_key(self.row.id, "errors" if failed else "output"))
        await writers[failed].write(b"".join(pieces[failed]))
        pieces[failed].clear()

    async def _fail(self, code: str, message: str) -> None:
        try:
            await self.runs.finish(self.row, self.holder, self.ttl, "failed",
                                   failed_at=int(time.time()), error_code=code,
                                   error_message=message)
        except LeaseLost:
            self.lost = True
            return
        log.warning("run %s of batch %s failed: %s", self.row.id, self.row.batch_id, message)
        await self._settle()

    async def _settle(self) -> None:
        """Record the batch's end now (usage, webhooks) rather than at its next poll."""
        try:
            batch = await self.runs.batch(self.row.batch_id)
            if batch is not None and not batch.terminal and batch.provider_batch_id == self.row.id:
                await to_the_end(refresh(self.gw, batch))
        except Exception:
            log.exception("recording the end of batch %s failed; its next poll will",
                          self.row.batch_id)


def _tokens(outcomes: Iterable[Outcome]) -> dict[str, int | None]:
    reported = [o.tokens for o in outcomes if o.tokens is not None]
    if not reported:
        return {"input_tokens": None, "output_tokens": None, "total_tokens": None}
    return {"input_tokens": sum(t.input for t in reported),
            "output_tokens": sum(t.output for t in reported),
            "total_tokens": sum(t.total for t in reported)}
