"""A database written by the previous schema (version 2) migrates to the current one: input
copies carry over as ready, batch result files find their batch, nothing is lost."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.store import Database, Store
from gateway.testing.fixtures import PG_ADMIN_DSN

# Version 2's tables as that release created them (the parts these rows need).
_OLD_SCHEMA = [
    "CREATE TABLE gateway_schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT "
    "NULL)",
    "CREATE TABLE gateway_keys (id VARCHAR(64) PRIMARY KEY, key_hash VARCHAR(64) NOT NULL "
    "UNIQUE, key_alias VARCHAR(256), team_id VARCHAR(256), user_id VARCHAR(256), models TEXT "
    "NOT NULL, metadata TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT)",
    "CREATE TABLE gateway_files (seq {serial} PRIMARY KEY, id VARCHAR(64) NOT NULL UNIQUE, "
    "owner VARCHAR(64) NOT NULL, purpose VARCHAR(32) NOT NULL, filename VARCHAR(512) NOT NULL, "
    "bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, status VARCHAR(32) NOT NULL, "
    "model_groups TEXT NOT NULL, source_model VARCHAR(256))",
    "CREATE TABLE gateway_file_placements (file_id VARCHAR(64) NOT NULL, deployment_id "
    "VARCHAR(128) NOT NULL, provider_file_id VARCHAR(512) NOT NULL, state VARCHAR(32) NOT "
    "NULL, PRIMARY KEY (file_id, deployment_id))",
    "CREATE TABLE gateway_batches (seq {serial} PRIMARY KEY, id VARCHAR(64) NOT NULL UNIQUE, "
    "owner VARCHAR(64) NOT NULL, deployment_id VARCHAR(128) NOT NULL, model_group "
    "VARCHAR(256) NOT NULL, provider_batch_id VARCHAR(512) NOT NULL, input_file_id "
    "VARCHAR(64) NOT NULL, created_at BIGINT NOT NULL, status VARCHAR(32) NOT NULL, terminal "
    "BOOLEAN NOT NULL, object TEXT NOT NULL, updated_at FLOAT NOT NULL)",
    "CREATE TABLE gateway_usage (batch_id VARCHAR(64) PRIMARY KEY, owner VARCHAR(64) NOT NULL, "
    "model_group VARCHAR(256) NOT NULL, deployment_id VARCHAR(128) NOT NULL, status "
    "VARCHAR(32) NOT NULL, requests_completed INTEGER NOT NULL, requests_failed INTEGER NOT "
    "NULL, input_tokens BIGINT, output_tokens BIGINT, total_tokens BIGINT, recorded_at BIGINT "
    "NOT NULL)",
    "CREATE TABLE gateway_batch_leases (batch_id VARCHAR(64) PRIMARY KEY, holder VARCHAR(64) "
    "NOT NULL, lease_until FLOAT NOT NULL)",
    "INSERT INTO gateway_schema_version VALUES (1, 0), (2, 0)",
]

_FILE = ("INSERT INTO gateway_files (id, owner, purpose, filename, bytes, created_at, status, "
         "model_groups) VALUES (:id, 'key_a', :purpose, 'f.jsonl', 10, 1, 'processed', "
         "'[\"g\"]')")


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A database of its own (the session's PostgreSQL one already has today's schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"gw_migrate_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_version_2_database_migrates(empty_database_url: str) -> None:
    database_url = empty_database_url
    old = Database(database_url)
    await old.connect()
    serial = "SERIAL" if database_url.startswith("postgresql") else "INTEGER"
    for sql in _OLD_SCHEMA:
        await old.execute(sql.replace("{serial}", serial))
    await old.execute(_FILE, {"id": "file-in", "purpose": "batch"})
    await old.execute(_FILE, {"id": "file-out", "purpose": "batch_output"})
    await old.execute(
        "INSERT INTO gateway_file_placements VALUES ('file-in', 'dep1', 'native-in', 'processed'),"
        " ('file-out', 'dep1', 'native-out', 'processed')"
    )
    answer = json.dumps({"id": "batch_1", "status": "completed", "output_file_id": "file-out"})
    await old.execute(
        "INSERT INTO gateway_batches (id, owner, deployment_id, model_group, provider_batch_id,"
        " input_file_id, created_at, status, terminal, object, updated_at) VALUES ('batch_1', "
        "'key_a', 'dep1', 'g', 'native-batch', 'file-in', 1, 'completed', TRUE, :obj, 0)",
        {"obj": answer},
    )
    await old.disconnect()

    store = Store(database_url)
    await store.connect()
    try:
        kept = await store.get_file("key_a", "file-in")
        assert kept is not None and kept.kept_key is None  # not kept: uploaded before v3
        (copy,) = kept.copies
        assert (copy.deployment_id, copy.provider_file_id, copy.state) == \
            ("dep1", "native-in", "ready")
        out = await store.get_file("key_a", "file-out")
        assert out is not None and (out.source_batch, out.result_kind) == ("batch_1", "output")
        assert await store.result_file_id("batch_1", "output") == "file-out"
        batch = await store.get_batch("key_a", "batch_1")
        assert batch is not None and batch.object["output_file_id"] == "file-out"
    finally:
        await store.disconnect()
