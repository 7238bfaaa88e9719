"""One output and one error file from every part of a split batch, each line once, in input
order, with memory that does not grow with the batch.

A provider may write its results in any order, so lines are put in order through a temporary
index on disk (SQLite, in the spool directory): the input's custom_ids with their line numbers,
then every part's result lines keyed by the line number their custom_id has within the part's
range (the first result for a line wins, so a line is never in the files twice). A line of the
part's range without a result gets an error line saying why (its part failed, expired, was
cancelled). Then both files are streamed out of the index in line order into the gateway's file
store. Nothing is kept between runs: a merge cut short (a crash) is simply done again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.errors import UpstreamNotFound
from gateway.filestore import Writer
from gateway.jsonl import lines
from gateway.runtime import Gateway
from gateway.selfrun import wire
from gateway.split import result_key
from gateway.split.inputs import custom_id, custom_ids
from gateway.store import BatchRow, FileRow
from gateway.store.parts import PartRow
from gateway.types import ResultKind

log = logging.getLogger("gateway.split")

_CHUNK = 2000  # rows per index write or read
_PIECE = 256 << 10  # bytes per write to the file store

T = TypeVar("T")


@dataclass(frozen=True)
class Merged:
    completed: int  # lines in the output file
    failed: int  # lines in the error file
    output_bytes: int | None  # None: no such file
    error_bytes: int | None


Why = Callable[[PartRow], tuple[str, str]]


class _Index:
    """The temporary index, used from worker threads one call at a time."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4096;"
            "CREATE TABLE idx (cid TEXT NOT NULL, n INTEGER PRIMARY KEY);"
            "CREATE TABLE res (n INTEGER PRIMARY KEY, failed INTEGER NOT NULL, line BLOB);")

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(work, self.db)

    def close(self) -> None:
        self.db.close()


def _many(sql: str, rows: list[tuple[Any, ...]]) -> Callable[[sqlite3.Connection], None]:
    def work(db: sqlite3.Connection) -> None:
        db.execute("BEGIN")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    return work


async def merge(gw: Gateway, row: BatchRow, file: FileRow, parts: Sequence[PartRow],
                why: Why) -> Merged:
    """Write the batch's merged files (`result_key`) from its ended parts."""
    spool = gw.settings.spool_dir
    if spool:
        os.makedirs(spool, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="split-merge-", dir=spool) as tmp:
        index = _Index(os.path.join(tmp, "index.db"))
        try:
            await _input(gw, file, index)
            for part in parts:
                await _results(gw, part, index)
                await _missing(part, index, why)
            return await _write(gw, row, index)
        finally:
            index.close()


async def _input(gw: Gateway, file: FileRow, index: _Index) -> None:
    rows: list[tuple[Any, ...]] = []
    n = 0
    async for cid in custom_ids(gw, file):
        n += 1
        rows.append((cid, n))
        if len(rows) >= _CHUNK:
            await index.run(_many("INSERT INTO idx (cid, n) VALUES (?, ?)", rows))
            rows = []
    if rows:
        await index.run(_many("INSERT INTO idx (cid, n) VALUES (?, ?)", rows))
    await index.run(lambda db: db.execute("CREATE INDEX idx_cid ON idx (cid, n)"))


_PLACE = ("INSERT OR IGNORE INTO res (n, failed, line) SELECT n, ?, ? FROM idx"
          " WHERE cid = ? AND n BETWEEN ? AND ? LIMIT 1")


async def _results(gw: Gateway, part: PartRow, index: _Index) -> None:
    """The part's output and error lines, each at its line number."""
    provider = gw.provider(part.deployment_id)
    if provider is None or part.provider_batch_id is None:
        return  # never ran, or its deployment left the config: every line is missing
    for kind, failed in (("output", 0), ("error", 1)):
        if not part.object.get(kind):
            continue
        which: ResultKind = "output" if kind == "output" else "errors"
        try:
            stream = await provider.results(part.provider_batch_id, which)
        except UpstreamNotFound:  # its lines become error lines below
            log.warning("split batch %s: the %s of part %d is gone", part.batch_id, which,
                        part.part)
            continue
        rows: list[tuple[Any, ...]] = []
        try:
            async for raw in lines(stream):
                cid = custom_id(raw)
                if cid is None:
                    continue
                rows.append((failed, raw, cid, part.first_line, part.last_line))
                if len(rows) >= _CHUNK:
                    await index.run(_many(_PLACE, rows))
                    rows = []
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        if rows:
            await index.run(_many(_PLACE, rows))


async def _missing(part: PartRow, index: _Index, why: Why) -> None:
    """An error line for every line of the part that has no result, with the reason."""
    code, message = why(part)
    after = part.first_line - 1
    while True:
        def page(db: sqlite3.Connection, after: int = after) -> list[tuple[int, str]]:
            return db.execute(
                "SELECT i.n, i.cid FROM idx i LEFT JOIN res r ON r.n = i.n WHERE r.n IS NULL"
                " AND i.n > ? AND i.n <= ? ORDER BY i.n LIMIT ?",
                (after, part.last_line, _CHUNK)).fetchall()
        found = await index.run(page)
        if not found:
            return
        await index.run(_many("INSERT INTO res (n, failed, line) VALUES (?, 1, ?)", [
            (n, wire.error_line(cid, code, message)) for n, cid in found]))
        after = found[-1][0]


async def _write(gw: Gateway, row: BatchRow, index: _Index) -> Merged:
    counts: dict[int, int] = {}
    sizes: dict[int, int | None] = {}
    for failed, which in ((0, "output"), (1, "errors")):
        writer: Writer | None = None
        count = 0
        try:
            async for piece, lines_in in _ordered(index, failed):
                if writer is None:
                    writer = gw.files.writer(result_key(row.id, which))  # type: ignore[arg-type]
                await writer.write(piece)
                count += lines_in
            sizes[failed] = await writer.commit() if writer is not None else None
        except BaseException:
            if writer is not None:
                await writer.abort()
            raise
        counts[failed] = count
    return Merged(completed=counts[0], failed=counts[1], output_bytes=sizes[0],
                  error_bytes=sizes[1])


async def _ordered(index: _Index, failed: int) -> AsyncIterator[tuple[bytes, int]]:
    """The index's lines of one kind in line order, in pieces (and how many lines each)."""
    after = 0
    piece: list[bytes] = []
    size = 0
    while True:
        def page(db: sqlite3.Connection, after: int = after) -> list[tuple[int, bytes]]:
            return db.execute("SELECT n, line FROM res WHERE failed = ? AND n > ? ORDER BY n"
                              " LIMIT ?", (failed, after, _CHUNK)).fetchall()
        found = await index.run(page)
        if not found:
            break
        for _, line in found:
            piece.append(bytes(line) + b"\n")
            size += len(line) + 1
            if size >= _PIECE:
                yield b"".join(piece), len(piece)
                piece = []
                size = 0
        after = found[-1][0]
    if piece:
        yield b"".join(piece), len(piece)
