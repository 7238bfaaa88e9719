"""The database driver: asyncpg (PostgreSQL) or aiosqlite (SQLite) behind one small interface.

A statement is a SQLAlchemy Core construct or SQL text, with `:name` parameters either way. Each
is compiled once for the dialect (cached by statement object, or by the text) and run on the
driver directly; rows come back as the driver makes them (asyncpg `Record`, `sqlite3.Row`),
read by column name. A transaction holds one connection; everything the same task runs on this
database until it ends, a nested `transaction()` included, runs on that connection (so do tasks
started inside it, which must not query concurrently: one connection runs one query at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import aiosqlite
import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.compiler import SQLCompiler

Statement = str | sa.ClauseElement
Values = Mapping[str, Any]
# An asyncpg Record or a sqlite3.Row: `row["column"]`, `row[0]`, `dict(row)`.
Row = Any


def driver_url(url: str) -> str:
    """Accept the URLs people have (`postgres://`, `sqlite:///file`) and name the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


class _Compiled:
    """A statement's SQL for one dialect and how to order its parameters."""

    __slots__ = ("bound", "names", "sql")

    def __init__(self, stmt: Statement, dialect: sa.Dialect) -> None:
        element = sa.text(stmt) if isinstance(stmt, str) else stmt
        # Lists given to `in_()` become one placeholder per item.
        compiled = element.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        self.sql = str(compiled)
        self.names: tuple[str, ...] = ()
        self.bound: dict[str, Any] = {}
        if isinstance(compiled, SQLCompiler):  # not DDL
            self.names = tuple(compiled.positiontup or ())
            required = {k for k, b in compiled.binds.items() if b.required}
            # Values written into the statement itself (`column == value`).
            self.bound = {k: v for k, v in compiled.params.items() if k not in required}

    def args(self, values: Values | None) -> list[Any]:
        """Positional arguments; a parameter neither bound nor in `values` is a KeyError."""
        merged = ({**self.bound, **values} if self.bound else values) if values else self.bound
        return [merged[name] for name in self.names]


# Per dialect: compiled statements by the statement object's id (the entry goes when the
# statement does) or by the SQL text. Shared by every Database, whatever thread it runs in.
_COMPILED: dict[str, dict[int | str, _Compiled]] = {"postgresql": {}, "sqlite": {}}


class _Connection(Protocol):
    """What both drivers do, on a pool (a connection per call) or on one connection."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]: ...
    async def fetchrow(self, sql: str, args: Sequence[Any]) -> Row | None: ...
    async def execute(self, sql: str, args: Sequence[Any]) -> None: ...
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None: ...


class _Asyncpg:
    """An asyncpg pool or one of its connections: they have the same query methods."""

    def __init__(self, target: Any) -> None:
        self.target = target

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        rows: list[Row] = await self.target.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, args: Sequence[Any]) -> Row | None:
        return await self.target.fetchrow(sql, *args)

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        await self.target.execute(sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self.target.executemany(sql, args)


async def _keep_session(connection: Any) -> None:
    """Release asyncpg connections without its reset (`RESET ALL`, `UNLISTEN *`, ...): one
    more round trip after every query. The gateway keeps no session state (no SET, LISTEN or
    session-level locks), so there is nothing to reset; asyncpg still rolls back a transaction
    left open, which a managed one never is."""


class _Postgres:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: Any = None

    async def open(self) -> _Connection:
        self.pool = await asyncpg.create_pool(self.dsn, reset=_keep_session)
        return _Asyncpg(self.pool)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield _Asyncpg(conn)


class _Aiosqlite:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        # One hop to the connection's thread: execute, fetch and close the cursor there.
        return list(await self.conn.execute_fetchall(sql, args))

    async def fetchrow(self, sql: str, args: Sequence[Any]) -> Row | None:
        rows = await self.fetch(sql, args)
        return rows[0] if rows else None

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        await self.conn.execute_fetchall(sql, args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        cursor = await self.conn.executemany(sql, args)
        await cursor.close()


async def _settled(statement: Awaitable[None]) -> None:
    """Await a transaction statement to its end even if this task is cancelled meanwhile (the
    cancel goes through after). aiosqlite runs it in the connection's thread whatever happens
    here: a connection released before it ends could go back to the pool inside a transaction,
    holding the write lock for every later query."""
    task = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        raise


async def _rollback(conn: _Aiosqlite) -> None:
    if conn.conn.in_transaction:  # accurate: every statement before this one has ended
        await conn.execute("ROLLBACK", ())


class _SQLitePool:
    """At most `size` aiosqlite connections (a thread each), kept open between queries; each
    transaction holds one of its own, so isolation is as with separate connections."""

    def __init__(self, path: str, size: int = 4) -> None:
        self.path = path
        self.idle: list[_Aiosqlite] = []
        self.all: list[_Aiosqlite] = []
        self.slots = asyncio.Semaphore(size)

    async def _acquire(self) -> _Aiosqlite:
        await self.slots.acquire()
        try:
            if self.idle:
                return self.idle.pop()
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                # WAL lets readers proceed during a write; the timeout waits out a concurrent
                # writer (another gateway process on the same file) instead of failing.
                await conn.execute_fetchall("PRAGMA journal_mode=WAL")
                await conn.execute_fetchall("PRAGMA busy_timeout=10000")
            except BaseException:
                await conn.close()
                raise
            self.all.append(_Aiosqlite(conn))
            return self.all[-1]
        except BaseException:
            self.slots.release()
            raise

    def _release(self, conn: _Aiosqlite) -> None:
        self.idle.append(conn)
        self.slots.release()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Aiosqlite]:
        conn = await self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        async with self.connection() as conn:
            return await conn.fetch(sql, args)

    async def fetchrow(self, sql: str, args: Sequence[Any]) -> Row | None:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, args)

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        async with self.connection() as conn:
            await conn.execute(sql, args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        async with self.connection() as conn:
            await conn.executemany(sql, args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        async with self.connection() as conn:
            try:
                # IMMEDIATE: take the write lock now (waiting out another writer for up to the
                # busy timeout) rather than fail when a read turns into a write halfway through.
                await _settled(conn.execute("BEGIN IMMEDIATE", ()))
                yield conn
                await _settled(conn.execute("COMMIT", ()))
            except BaseException:
                await _settled(_rollback(conn))
                raise

    async def close(self) -> None:
        for conn in self.all:
            await conn.conn.close()
        self.all.clear()
        self.idle.clear()


class Database:
    """`Database(url)` (either form `driver_url` takes); `connect()` before use."""

    def __init__(self, url: str) -> None:
        self.url = driver_url(url)
        self.is_postgres = self.url.startswith("postgresql")
        self.dialect: sa.Dialect
        self._backend: _Postgres | _SQLitePool
        if self.is_postgres:
            self.dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
            self._backend = _Postgres("postgresql://" + self.url.split("://", 1)[1])
        elif self.url.startswith("sqlite"):
            self.dialect = sqlite.aiosqlite.dialect()
            self._path = self.url.split(":///", 1)[1].split("?", 1)[0]
            self._backend = _SQLitePool(self._path)
        else:
            raise ValueError(f"unsupported database URL {url!r}: use postgresql:// or sqlite:///")
        self._compiled = _COMPILED["postgresql" if self.is_postgres else "sqlite"]
        # The connection of the transaction the current task is in, if any.
        self._tx: ContextVar[_Connection | None] = ContextVar(f"tx-{id(self)}", default=None)
        self._reader: sqlite3.Connection | None = None
        # Outside a transaction: a pooled connection per call.
        self._any: _Connection = self._backend if isinstance(self._backend, _SQLitePool) \
            else _Asyncpg(None)

    async def connect(self) -> None:
        if isinstance(self._backend, _Postgres):
            self._any = await self._backend.open()
            return
        # The lookups' connection (see `lookup`); its reads see every committed write.
        self._reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._reader.row_factory = sqlite3.Row
        self._reader.execute("PRAGMA busy_timeout=1000")

    async def disconnect(self) -> None:
        await self._backend.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def compile(self, stmt: Statement) -> _Compiled:
        key: int | str = stmt if isinstance(stmt, str) else id(stmt)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = _Compiled(stmt, self.dialect)
            if not isinstance(stmt, str):
                weakref.finalize(stmt, self._compiled.pop, key, None).atexit = False
            self._compiled[key] = compiled
        return compiled

    def insert(self, table: sa.Table) -> Any:
        """INSERT with the dialect's ON CONFLICT clauses (both databases have them)."""
        return pg_insert(table) if self.is_postgres else sqlite_insert(table)

    def _conn(self) -> _Connection:
        return self._tx.get() or self._any

    async def fetch_all(self, stmt: Statement, values: Values | None = None) -> list[Row]:
        c = self.compile(stmt)
        return await self._conn().fetch(c.sql, c.args(values))

    async def fetch_row(self, stmt: Statement, values: Values | None = None) -> Row | None:
        c = self.compile(stmt)
        return await self._conn().fetchrow(c.sql, c.args(values))

    async def fetch_val(self, stmt: Statement, values: Values | None = None) -> Any:
        row = await self.fetch_row(stmt, values)
        return None if row is None else row[0]

    async def execute(self, stmt: Statement, values: Values | None = None) -> None:
        c = self.compile(stmt)
        await self._conn().execute(c.sql, c.args(values))

    async def execute_many(self, stmt: Statement, values: Sequence[Values]) -> None:
        c = self.compile(stmt)
        await self._conn().executemany(c.sql, [c.args(v) for v in values])

    async def lookup(self, stmt: Statement, values: Values | None = None) -> Row | None:
        """`fetch_row` for the reads on every request (a key, a batch: one row by an indexed
        column). SQLite runs it synchronously in the event loop: an indexed read in WAL mode
        never waits for a writer and takes microseconds, less than the hop to an aiosqlite
        thread. PostgreSQL takes any pooled connection."""
        c = self.compile(stmt)
        if self._reader is not None and self._tx.get() is None:
            row: Row | None = self._reader.execute(c.sql, c.args(values)).fetchone()
            return row
        return await self._conn().fetchrow(c.sql, c.args(values))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Commit when the block ends, roll back if it raises. Inside one, this joins it."""
        if self._tx.get() is not None:
            yield
            return
        async with self._backend.transaction() as conn:
            token = self._tx.set(conn)
            try:
                yield
            finally:
                self._tx.reset(token)
