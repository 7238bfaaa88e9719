"""Persistence: every table and every query of the gateway, on SQLite or PostgreSQL.

All SQL lives here so the driver layer (`databases`) can be swapped. Every lookup of a file or
batch takes the owner, so another key's id is indistinguishable from a missing one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import msgspec
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

metadata = sa.MetaData()

schema_version = sa.Table(
    "gateway_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

keys = sa.Table(
    "gateway_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_alias", sa.String(256)),
    sa.Column("team_id", sa.String(256)),
    sa.Column("user_id", sa.String(256)),
    sa.Column("models", sa.Text, nullable=False),  # JSON list; empty = every model group
    sa.Column("metadata", sa.Text, nullable=False),  # JSON object
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
)

files = sa.Table(
    "gateway_files",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("model_groups", sa.Text, nullable=False),  # JSON list
    # For input files: the body.model the user wrote (kept for files from before v3).
    sa.Column("source_model", sa.String(256)),
    # Version 3: input files are kept by the gateway (`kept_key` in the file store) with their
    # request count; a batch's result files name the batch and which result they are.
    sa.Column("request_count", sa.Integer),
    sa.Column("kept_key", sa.String(512)),
    sa.Column("source_batch", sa.String(64)),
    sa.Column("result_kind", sa.String(16)),
    sa.Index("ix_gateway_files_owner_seq", "owner", "seq"),
    sa.Index("uq_gateway_files_result", "source_batch", "result_kind", unique=True),
)

placements = sa.Table(
    "gateway_file_placements",
    metadata,
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("provider_file_id", sa.String(512), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("file_id", "deployment_id"),
    sa.UniqueConstraint("deployment_id", "provider_file_id", name="uq_placement_native"),
)

copies = sa.Table(
    "gateway_copies",
    metadata,
    # One deployment's copy of an input file: `ready` (provider_file_id set), `pending` (being
    # made) or `failed` (made again from the kept input after `next_attempt_at`).
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("provider_file_id", sa.String(512)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    # Who is making it now, until when: a dead instance's copy is made by another.
    sa.Column("holder", sa.String(64)),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("file_id", "deployment_id"),
    sa.Index("ix_gateway_copies_retry", "state", "next_attempt_at"),
)

adapter_state = sa.Table(
    "gateway_adapter_state",
    metadata,
    # Small values adapters keep per deployment (`ProviderContext.state`).
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("key", sa.String(256), nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("deployment_id", "key"),
)

batches = sa.Table(
    "gateway_batches",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("model_group", sa.String(256), nullable=False),
    sa.Column("provider_batch_id", sa.String(512), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("terminal", sa.Boolean, nullable=False),
    sa.Column("object", sa.Text, nullable=False),  # last Batch answered, gateway ids only
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_gateway_batches_owner_seq", "owner", "seq"),
)

usage = sa.Table(
    "gateway_usage",
    metadata,
    # One row per batch, written once when the batch is first seen finished: the primary key
    # is what makes "bill each batch exactly once" hold across instances and races.
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("model_group", sa.String(256), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("requests_completed", sa.Integer, nullable=False),
    sa.Column("requests_failed", sa.Integer, nullable=False),
    # NULL when the provider did not report tokens: unknown is not zero.
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    sa.Column("total_tokens", sa.BigInteger),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
    sa.Index("ix_gateway_usage_owner", "owner"),
)

leases = sa.Table(
    "gateway_batch_leases",
    metadata,
    # Who refreshes an unfinished batch in the background, until when: instances claim rows
    # whose lease has run out, so two never poll the same batch and a dead one's work moves on.
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
)

# Versioned migrations: each entry creates what its version adds (tables, or a function for
# changes to existing ones). Append, never edit. Tables are created as defined now, so a
# function adds only what an older database lacks.
Migration = Sequence[sa.Table] | Callable[["Store"], Awaitable[None]]


async def _v3_kept_inputs(store: Store) -> None:
    """Copies with a state; result files linked to their batch instead of a provider file."""
    for column in ("request_count", "kept_key", "source_batch", "result_kind"):
        if column not in await store.columns("gateway_files"):
            kind = files.c[column].type.compile(dialect=store.dialect)
            await store.db.execute(f"ALTER TABLE gateway_files ADD COLUMN {column} {kind}")
    for index in files.indexes:
        if index.name == "uq_gateway_files_result":
            await store.db.execute(
                str(sa.schema.CreateIndex(index, if_not_exists=True).compile(
                    dialect=store.dialect))
            )
    await store.create(copies, adapter_state)
    # Input copies carry over as ready; batch outputs find their batch through its answer.
    await store.db.execute(
        "INSERT INTO gateway_copies (file_id, deployment_id, provider_file_id, state, attempts,"
        " next_attempt_at, lease_until) SELECT p.file_id, p.deployment_id, p.provider_file_id,"
        " 'ready', 0, 0, 0 FROM gateway_file_placements p JOIN gateway_files f"
        " ON f.id = p.file_id WHERE f.purpose = 'batch'"
    )
    for r in await store.db.fetch_all(sa.select(batches.c.id, batches.c.object)):
        answer = _unjson(r["object"])
        for key, kind in (("output_file_id", "output"), ("error_file_id", "errors")):
            if isinstance(answer.get(key), str):
                await store.db.execute(
                    files.update().where(files.c.id == answer[key])
                    .values(source_batch=r["id"], result_kind=kind)
                )
    await store.db.execute("DROP TABLE gateway_file_placements")


MIGRATIONS: list[Migration] = [
    (keys, files, placements, batches),
    (usage, leases),
    _v3_kept_inputs,
]

_json = msgspec.json.encode
_unjson = msgspec.json.decode


@dataclass(frozen=True)
class KeyRow:
    id: str
    key_alias: str | None
    team_id: str | None
    user_id: str | None
    models: list[str]
    metadata: dict[str, Any]
    created_at: int
    expires_at: int | None


@dataclass(frozen=True)
class Copy:
    """One deployment's copy of an input file."""

    deployment_id: str
    provider_file_id: str | None
    state: str  # "ready" | "pending" | "failed"
    attempts: int = 0


@dataclass(frozen=True)
class FileRow:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    status: str
    model_groups: list[str]
    source_model: str | None
    request_count: int | None = None
    kept_key: str | None = None  # where the file store keeps its content
    source_batch: str | None = None  # result files: the batch (gateway id) ...
    result_kind: str | None = None  # ... and which result: "output" | "errors"
    copies: tuple[Copy, ...] = ()

    def copy_on(self, deployment_id: str) -> Copy | None:
        return next((c for c in self.copies if c.deployment_id == deployment_id), None)


@dataclass(frozen=True)
class BatchRow:
    id: str
    owner: str
    deployment_id: str
    model_group: str
    provider_batch_id: str
    input_file_id: str
    created_at: int
    status: str
    terminal: bool
    object: dict[str, Any]


def _key(r: Any) -> KeyRow:
    return KeyRow(
        id=r["id"],
        key_alias=r["key_alias"],
        team_id=r["team_id"],
        user_id=r["user_id"],
        models=_unjson(r["models"]),
        metadata=_unjson(r["metadata"]),
        created_at=r["created_at"],
        expires_at=r["expires_at"],
    )


def _file(r: Any, pls: tuple[Copy, ...] = ()) -> FileRow:
    return FileRow(
        id=r["id"],
        owner=r["owner"],
        purpose=r["purpose"],
        filename=r["filename"],
        bytes=r["bytes"],
        created_at=r["created_at"],
        status=r["status"],
        model_groups=_unjson(r["model_groups"]),
        source_model=r["source_model"],
        request_count=r["request_count"],
        kept_key=r["kept_key"],
        source_batch=r["source_batch"],
        result_kind=r["result_kind"],
        copies=pls,
    )


_BATCH_FIELDS = (
    "id", "owner", "deployment_id", "model_group", "provider_batch_id", "input_file_id",
    "created_at", "status", "terminal", "object",
)


def _batch(r: Any) -> BatchRow:
    return BatchRow(
        id=r["id"],
        owner=r["owner"],
        deployment_id=r["deployment_id"],
        model_group=r["model_group"],
        provider_batch_id=r["provider_batch_id"],
        input_file_id=r["input_file_id"],
        created_at=r["created_at"],
        status=r["status"],
        terminal=bool(r["terminal"]),
        object=_unjson(r["object"]),
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def driver_url(url: str) -> str:
    """Accept the URLs people have (`postgres://`, `sqlite:///file`) and name the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


class _SQLitePool:
    """At most `size` aiosqlite connections, kept open between queries.

    `databases` opens a new aiosqlite connection, with a new thread, for every connection it
    hands out: ~3 ms per request. This pool (swapped in for its own) reuses a few; each
    transaction still holds a connection of its own, so isolation is unchanged.
    """

    def __init__(self, database: str, size: int = 4) -> None:
        self.database = database
        self.idle: list[aiosqlite.Connection] = []
        self.all: list[aiosqlite.Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._memref = None  # read by databases' SQLiteBackend.disconnect

    async def acquire(self) -> aiosqlite.Connection:
        await self._slots.acquire()
        if self.idle:
            return self.idle.pop()
        conn = aiosqlite.connect(database=self.database, isolation_level=None)
        await conn.__aenter__()
        # WAL lets readers proceed during a write; the timeout waits out a concurrent writer
        # (another gateway process on the same file) instead of failing.
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=10000")
        self.all.append(conn)
        return conn

    async def release(self, conn: aiosqlite.Connection) -> None:
        self.idle.append(conn)
        self._slots.release()

    async def close(self) -> None:
        for conn in self.all:
            await conn.close()
        self.all.clear()
        self.idle.clear()


# The two lookups on every retrieve, as plain SQL on the driver: going through `databases`
# compiles the SQLAlchemy statement and wraps rows on each call (~540 us a query, measured on
# SQLite and PostgreSQL). PostgreSQL runs them on asyncpg directly (~250 us); SQLite on a
# synchronous connection in the event loop: an indexed read in WAL mode never waits for a
# writer and takes microseconds, less than the hop to an aiosqlite thread.
_KEY_BY_HASH = (
    "SELECT id, key_alias, team_id, user_id, models, metadata, created_at, expires_at "
    "FROM gateway_keys WHERE key_hash = {0}"
)
_BATCH_BY_ID = (
    "SELECT id, owner, deployment_id, model_group, provider_batch_id, input_file_id, "
    "created_at, status, terminal, object FROM gateway_batches WHERE id = {0} AND owner = {1}"
)
# A key and one of its batches in one round trip: the whole database work of a retrieve.
_KEY_AND_BATCH = (
    "SELECT k.id, k.key_alias, k.team_id, k.user_id, k.models, k.metadata, k.created_at, "
    "k.expires_at, b.id AS b_id, b.owner AS b_owner, b.deployment_id AS b_deployment_id, "
    "b.model_group AS b_model_group, b.provider_batch_id AS b_provider_batch_id, "
    "b.input_file_id AS b_input_file_id, b.created_at AS b_created_at, b.status AS b_status, "
    "b.terminal AS b_terminal, b.object AS b_object "
    "FROM gateway_keys k LEFT JOIN gateway_batches b ON b.id = {0} AND b.owner = k.id "
    "WHERE k.key_hash = {1}"
)


async def _keep_session(connection: Any) -> None:
    """Release asyncpg connections without its reset (`RESET ALL`, `UNLISTEN *`, ...): one
    more round trip after every query. The gateway keeps no session state (no SET, LISTEN or
    session-level locks; transactions end before release), so there is nothing to reset."""


class Store:
    def __init__(self, url: str) -> None:
        self.url = driver_url(url)
        self.is_postgres = self.url.startswith("postgresql")
        self.db = Database(self.url, reset=_keep_session) if self.is_postgres \
            else Database(self.url)
        self._sqlite_pool: _SQLitePool | None = None
        if self.is_postgres:
            marks: tuple[str, ...] = ("$1", "$2")
        else:
            marks = ("?", "?")
            backend = self.db._backend
            self._sqlite_pool = _SQLitePool(backend._pool._database)
            backend._pool = self._sqlite_pool
        self._key_by_hash = _KEY_BY_HASH.format(*marks)
        self._batch_by_id = _BATCH_BY_ID.format(*marks)
        self._key_and_batch = _KEY_AND_BATCH.format(*marks)
        self._reader: sqlite3.Connection | None = None
        self.dialect: sa.Dialect = (
            postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
            if self.is_postgres else sqlite.aiosqlite.dialect()
        )

    async def _fetch_row(self, sql: str, *args: Any) -> Any:
        if self._reader is not None:
            cursor = self._reader.execute(sql, args)
            row = cursor.fetchone()
            if row is None:
                return None
            return dict(zip((d[0] for d in cursor.description), row, strict=True))
        async with self.db.connection() as conn:
            return await conn.raw_connection.fetchrow(sql, *args)

    async def connect(self) -> None:
        await self.db.connect()
        await self.migrate()
        if self._sqlite_pool is not None:
            self._reader = sqlite3.connect(
                self._sqlite_pool.database, isolation_level=None, check_same_thread=False
            )
            self._reader.execute("PRAGMA busy_timeout=1000")

    async def disconnect(self) -> None:
        await self.db.disconnect()
        if self._sqlite_pool is not None:
            await self._sqlite_pool.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> None:
        async with self.db.transaction():
            if self.is_postgres:
                # Two instances starting together must not both run a migration.
                await self.db.execute("SELECT pg_advisory_xact_lock(7401)")
            await self.db.execute(
                str(sa.schema.CreateTable(schema_version, if_not_exists=True).compile(
                    dialect=self.dialect))
            )
            current = await self.db.fetch_val(
                sa.select(sa.func.coalesce(sa.func.max(schema_version.c.version), 0))
            )
            for version, step in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                if callable(step):
                    await step(self)
                else:
                    await self.create(*step)
                await self.db.execute(
                    schema_version.insert().values(version=version, applied_at=int(time.time()))
                )

    async def create(self, *tables: sa.Table) -> None:
        for table in tables:
            await self.db.execute(
                str(sa.schema.CreateTable(table, if_not_exists=True).compile(
                    dialect=self.dialect))
            )
            for index in table.indexes:
                await self.db.execute(
                    str(sa.schema.CreateIndex(index, if_not_exists=True).compile(
                        dialect=self.dialect))
                )

    async def columns(self, table: str) -> set[str]:
        if self.is_postgres:
            rows = await self.db.fetch_all(
                "SELECT column_name FROM information_schema.columns WHERE table_name = :t",
                {"t": table},
            )
            return {r["column_name"] for r in rows}
        return {r["name"] for r in await self.db.fetch_all(f"PRAGMA table_info({table})")}

    # -- keys ----------------------------------------------------------------------------------

    async def insert_key(
        self,
        key_hash: str,
        *,
        models: list[str],
        key_alias: str | None,
        team_id: str | None,
        user_id: str | None,
        metadata: dict[str, Any],
        expires_at: int | None,
    ) -> KeyRow:
        row = {
            "id": "key_" + key_hash[:24],
            "key_hash": key_hash,
            "key_alias": key_alias,
            "team_id": team_id,
            "user_id": user_id,
            "models": _json(models).decode(),
            "metadata": _json(metadata).decode(),
            "created_at": int(time.time()),
            "expires_at": expires_at,
        }
        await self.db.execute(keys.insert().values(**row))
        return _key(row)

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        r = await self._fetch_row(self._key_by_hash, key_hash)
        return _key(r) if r else None

    async def key_and_batch(
        self, key_hash: str, batch_id: str
    ) -> tuple[KeyRow | None, BatchRow | None]:
        r = await self._fetch_row(self._key_and_batch, batch_id, key_hash)
        if r is None:
            return None, None
        if r["b_id"] is None:
            return _key(r), None
        return _key(r), _batch({name: r["b_" + name] for name in _BATCH_FIELDS})

    async def key_by_id(self, key_id: str) -> KeyRow | None:
        r = await self.db.fetch_one(keys.select().where(keys.c.id == key_id))
        return _key(r) if r else None

    async def list_keys(self, offset: int, limit: int) -> tuple[list[KeyRow], int]:
        rows = await self.db.fetch_all(
            keys.select().order_by(keys.c.created_at.desc(), keys.c.id).offset(offset).limit(limit)
        )
        total = await self.db.fetch_val(sa.select(sa.func.count()).select_from(keys))
        return [_key(r) for r in rows], int(total)

    async def delete_keys(self, key_ids: Sequence[str]) -> list[str]:
        async with self.db.transaction():
            found = await self.db.fetch_all(sa.select(keys.c.id).where(keys.c.id.in_(key_ids)))
            ids_found = [r["id"] for r in found]
            if ids_found:
                await self.db.execute(keys.delete().where(keys.c.id.in_(ids_found)))
        return ids_found

    # -- files ---------------------------------------------------------------------------------

    @staticmethod
    def _file_values(row: FileRow) -> dict[str, Any]:
        return {
            "id": row.id,
            "owner": row.owner,
            "purpose": row.purpose,
            "filename": row.filename,
            "bytes": row.bytes,
            "created_at": row.created_at,
            "status": row.status,
            "model_groups": _json(row.model_groups).decode(),
            "source_model": row.source_model,
            "request_count": row.request_count,
            "kept_key": row.kept_key,
            "source_batch": row.source_batch,
            "result_kind": row.result_kind,
        }

    async def insert_file(self, row: FileRow, retry_at: float = 0.0) -> None:
        """A new file and its copies; failed copies are made again from `retry_at` on."""
        async with self.db.transaction():
            await self.db.execute(files.insert().values(**self._file_values(row)))
            if row.copies:
                await self.db.execute_many(
                    copies.insert(),
                    [
                        {
                            "file_id": row.id,
                            "deployment_id": c.deployment_id,
                            "provider_file_id": c.provider_file_id,
                            "state": c.state,
                            "attempts": c.attempts,
                            "next_attempt_at": retry_at,
                            "lease_until": 0.0,
                        }
                        for c in row.copies
                    ],
                )

    async def get_file(self, owner: str | None, file_id: str) -> FileRow | None:
        """A file of `owner` (None: of anyone, for the master key)."""
        q = files.select().where(files.c.id == file_id)
        r = await self.db.fetch_one(q if owner is None else q.where(files.c.owner == owner))
        if r is None:
            return None
        return _file(r, await self._copies(file_id))

    async def _copies(self, file_id: str) -> tuple[Copy, ...]:
        rows = await self.db.fetch_all(
            copies.select().where(copies.c.file_id == file_id).order_by(copies.c.deployment_id)
        )
        return tuple(
            Copy(c["deployment_id"], c["provider_file_id"], c["state"], c["attempts"])
            for c in rows
        )

    async def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[FileRow], bool]:
        q = files.select().where(files.c.owner == owner)
        if purpose:
            q = q.where(files.c.purpose == purpose)
        if after:
            cursor = (
                sa.select(files.c.seq)
                .where(files.c.id == after, files.c.owner == owner)
                .scalar_subquery()
            )
            q = q.where(files.c.seq > cursor if ascending else files.c.seq < cursor)
        q = q.order_by(files.c.seq.asc() if ascending else files.c.seq.desc()).limit(limit + 1)
        rows = await self.db.fetch_all(q)
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    async def delete_file(self, owner: str, file_id: str) -> None:
        async with self.db.transaction():
            await self.db.execute(copies.delete().where(copies.c.file_id == file_id))
            await self.db.execute(
                files.delete().where(files.c.id == file_id, files.c.owner == owner)
            )

    async def delete_copy(self, file_id: str, deployment_id: str) -> None:
        await self.db.execute(
            copies.delete().where(
                copies.c.file_id == file_id, copies.c.deployment_id == deployment_id
            )
        )

    async def claim_copy(
        self, file_id: str, deployment_id: str, holder: str, ttl: float, *, due_only: bool
    ) -> bool:
        """Take the job of making a copy (a new one, or one not `ready` whose lease ran out;
        with `due_only`, also only once its retry time has come). True if `holder` got it."""
        now = time.time()
        stmt = self._insert(copies).values(
            file_id=file_id, deployment_id=deployment_id, provider_file_id=None,
            state="pending", attempts=0, next_attempt_at=now, holder=holder,
            lease_until=now + ttl,
        )
        condition = sa.and_(copies.c.state != "ready", copies.c.lease_until < now)
        if due_only:
            condition = sa.and_(condition, copies.c.next_attempt_at <= now)
        await self.db.execute(
            stmt.on_conflict_do_update(
                index_elements=[copies.c.file_id, copies.c.deployment_id],
                set_={"holder": holder, "lease_until": now + ttl, "state": "pending"},
                where=condition,
            )
        )
        won = await self.db.fetch_val(
            sa.select(copies.c.holder).where(
                copies.c.file_id == file_id, copies.c.deployment_id == deployment_id,
                copies.c.state == "pending",
            )
        )
        return bool(won == holder)

    async def copy_made(self, file_id: str, deployment_id: str, provider_file_id: str) -> None:
        await self.db.execute(
            copies.update()
            .where(copies.c.file_id == file_id, copies.c.deployment_id == deployment_id)
            .values(state="ready", provider_file_id=provider_file_id, holder=None,
                    lease_until=0.0)
        )

    async def copy_failed(self, file_id: str, deployment_id: str, backoff: float) -> None:
        """Mark a copy failed; it is made again after `backoff` doubled per earlier attempt
        (capped at a day)."""
        row = await self.db.fetch_one(
            sa.select(copies.c.attempts).where(
                copies.c.file_id == file_id, copies.c.deployment_id == deployment_id
            )
        )
        attempts = (row["attempts"] if row else 0) + 1
        wait = min(backoff * 2 ** (attempts - 1), 86_400.0)
        await self.db.execute(
            copies.update()
            .where(copies.c.file_id == file_id, copies.c.deployment_id == deployment_id)
            .values(state="failed", attempts=attempts, next_attempt_at=time.time() + wait,
                    holder=None, lease_until=0.0)
        )

    async def copies_due(
        self, deployment_ids: Sequence[str], limit: int
    ) -> list[tuple[str, str, str]]:
        """(owner, file id, deployment id) of failed copies whose retry time has come."""
        now = time.time()
        rows = await self.db.fetch_all(
            sa.select(files.c.owner, copies.c.file_id, copies.c.deployment_id)
            .select_from(copies.join(files, files.c.id == copies.c.file_id))
            .where(
                copies.c.state != "ready",
                copies.c.next_attempt_at <= now,
                copies.c.lease_until < now,
                copies.c.deployment_id.in_(list(deployment_ids)),
            )
            .order_by(copies.c.next_attempt_at)
            .limit(limit)
        )
        return [(r["owner"], r["file_id"], r["deployment_id"]) for r in rows]

    async def inputs_created_before(self, before: int, limit: int) -> list[FileRow]:
        """Input files uploaded before `before` (unix seconds), oldest first."""
        rows = await self.db.fetch_all(
            files.select()
            .where(files.c.purpose == "batch", files.c.created_at < before)
            .order_by(files.c.seq)
            .limit(limit)
        )
        return [_file(r, await self._copies(r["id"])) for r in rows]

    async def mint_result_file(self, row: FileRow) -> str:
        """The gateway id of a batch's result file (`row.source_batch`, `row.result_kind`),
        minted on first sight. Idempotent under concurrency: the unique (batch, kind) index
        decides which mint wins; everyone returns the winner's id."""
        existing = await self.result_file_id(row.source_batch or "", row.result_kind or "")
        if existing:
            return existing
        await self.db.execute(self._insert_ignore(files, self._file_values(row)))
        winner = await self.result_file_id(row.source_batch or "", row.result_kind or "")
        assert winner is not None
        return winner

    async def result_file_id(self, batch_id: str, kind: str) -> str | None:
        value = await self.db.fetch_val(
            sa.select(files.c.id).where(files.c.source_batch == batch_id,
                                        files.c.result_kind == kind)
        )
        return str(value) if value is not None else None

    def _insert(self, table: sa.Table) -> Any:
        """INSERT with the dialect's ON CONFLICT clauses (both databases have them)."""
        return pg_insert(table) if self.is_postgres else sqlite_insert(table)

    def _insert_ignore(self, table: sa.Table, values: dict[str, Any]) -> Any:
        return self._insert(table).values(**values).on_conflict_do_nothing()

    # -- adapter state -------------------------------------------------------------------------

    async def state_get(self, deployment_id: str, key: str) -> bytes | None:
        value = await self.db.fetch_val(
            sa.select(adapter_state.c.value).where(
                adapter_state.c.deployment_id == deployment_id, adapter_state.c.key == key
            )
        )
        return bytes(value) if value is not None else None

    async def state_put(self, deployment_id: str, key: str, value: bytes) -> None:
        stmt = self._insert(adapter_state).values(
            deployment_id=deployment_id, key=key, value=value, updated_at=time.time()
        )
        await self.db.execute(
            stmt.on_conflict_do_update(
                index_elements=[adapter_state.c.deployment_id, adapter_state.c.key],
                set_={"value": value, "updated_at": time.time()},
            )
        )

    async def state_delete(self, deployment_id: str, key: str) -> None:
        await self.db.execute(
            adapter_state.delete().where(
                adapter_state.c.deployment_id == deployment_id, adapter_state.c.key == key
            )
        )

    # -- batches -------------------------------------------------------------------------------

    async def insert_batch(self, row: BatchRow) -> None:
        await self.db.execute(
            batches.insert().values(
                id=row.id,
                owner=row.owner,
                deployment_id=row.deployment_id,
                model_group=row.model_group,
                provider_batch_id=row.provider_batch_id,
                input_file_id=row.input_file_id,
                created_at=row.created_at,
                status=row.status,
                terminal=row.terminal,
                object=_json(row.object).decode(),
                updated_at=time.time(),
            )
        )

    async def get_batch(self, owner: str, batch_id: str) -> BatchRow | None:
        r = await self._fetch_row(self._batch_by_id, batch_id, owner)
        return _batch(r) if r else None

    async def update_batch(
        self, batch_id: str, *, status: str, terminal: bool, obj: dict[str, Any]
    ) -> None:
        await self.db.execute(
            batches.update()
            .where(batches.c.id == batch_id)
            .values(status=status, terminal=terminal, object=_json(obj).decode(),
                    updated_at=time.time())
        )

    async def record_usage(self, row: BatchRow, obj: dict[str, Any]) -> None:
        """The usage of a finished batch, once: a second call for the same batch is a no-op."""
        counts = obj.get("request_counts") or {}
        reported = obj.get("usage")
        tokens: dict[str, Any] = reported if isinstance(reported, dict) else {}
        values = {
            "batch_id": row.id,
            "owner": row.owner,
            "model_group": row.model_group,
            "deployment_id": row.deployment_id,
            "status": obj["status"],
            "requests_completed": int(counts.get("completed") or 0),
            "requests_failed": int(counts.get("failed") or 0),
            "input_tokens": _int_or_none(tokens.get("input_tokens")),
            "output_tokens": _int_or_none(tokens.get("output_tokens")),
            "total_tokens": _int_or_none(tokens.get("total_tokens")),
            "recorded_at": int(time.time()),
        }
        await self.db.execute(self._insert_ignore(usage, values))

    async def list_usage(self, owner: str | None, limit: int) -> list[dict[str, Any]]:
        q = usage.select().order_by(usage.c.recorded_at.desc(), usage.c.batch_id).limit(limit)
        if owner is not None:
            q = q.where(usage.c.owner == owner)
        return [dict(r._mapping) for r in await self.db.fetch_all(q)]

    async def claim_unfinished(
        self, holder: str, deployment_ids: Sequence[str], limit: int, ttl: float
    ) -> list[BatchRow]:
        """Up to `limit` unfinished batches on `deployment_ids` whose lease ran out, now leased
        to `holder`. The least recently claimed come first, so a batch whose upstream keeps
        failing cannot starve the others."""
        now = time.time()
        candidates = await self.db.fetch_all(
            sa.select(batches.c.id)
            .select_from(batches.outerjoin(leases, leases.c.batch_id == batches.c.id))
            .where(
                batches.c.terminal.is_(False),
                batches.c.deployment_id.in_(list(deployment_ids)),
                sa.or_(leases.c.lease_until.is_(None), leases.c.lease_until < now),
            )
            .order_by(sa.func.coalesce(leases.c.lease_until, 0), batches.c.seq)
            .limit(limit)
        )
        claimed: list[BatchRow] = []
        for candidate in candidates:
            batch_id = candidate["id"]
            # The conditional upsert is atomic per row on both databases: of two instances
            # claiming the same batch, only one finds the old lease expired.
            stmt = self._insert(leases).values(
                batch_id=batch_id, holder=holder, lease_until=now + ttl
            )
            await self.db.execute(
                stmt.on_conflict_do_update(
                    index_elements=[leases.c.batch_id],
                    set_={"holder": holder, "lease_until": now + ttl},
                    where=leases.c.lease_until < now,
                )
            )
            won = await self.db.fetch_val(
                sa.select(leases.c.holder).where(leases.c.batch_id == batch_id)
            )
            if won == holder:
                r = await self.db.fetch_one(batches.select().where(batches.c.id == batch_id))
                if r is not None:
                    claimed.append(_batch(r))
        return claimed

    async def list_batches(
        self, owner: str, *, after: str | None, limit: int, model_groups: Sequence[str] | None
    ) -> tuple[list[BatchRow], bool]:
        # Keyset pagination on the insertion sequence: newest first, `after` strictly older.
        q = batches.select().where(batches.c.owner == owner)
        if model_groups:
            q = q.where(batches.c.model_group.in_(list(model_groups)))
        if after:
            cursor = (
                sa.select(batches.c.seq)
                .where(batches.c.id == after, batches.c.owner == owner)
                .scalar_subquery()
            )
            q = q.where(batches.c.seq < cursor)
        rows = await self.db.fetch_all(q.order_by(batches.c.seq.desc()).limit(limit + 1))
        return [_batch(r) for r in rows[:limit]], len(rows) > limit
