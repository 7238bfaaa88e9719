"""pytest fixtures shared by the core's and the adapters' tests.

Registered as a pytest plugin (entry point `pytest11`): installing the gateway makes these
fixtures available to every test suite, an adapter's included, with no import.
Every test that touches storage takes `database_url`, which runs it on SQLite and on
PostgreSQL. A PostgreSQL that cannot be reached fails the run; it is never skipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.testing.s3 import S3Emulator

PG_ADMIN_DSN = os.environ.get("GATEWAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"gw_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as e:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_DSN} is not usable ({e}); start it, see README")
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared HTTP session a provider is constructed with, as the gateway gives it."""
    async with aiohttp.ClientSession() as session:
        yield session



@pytest.fixture(scope="session")
def s3_emulator() -> Iterator[S3Emulator]:
    """One S3 emulator (moto) for the session; each test takes its own bucket."""
    with S3Emulator() as emulator:
        yield emulator


@pytest.fixture
def s3_file_store_url(s3_emulator: S3Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<fresh bucket>/kept`, with the AWS_* environment pointing at the emulator (and no
    other AWS_* variable that could send obstore elsewhere) for the test's duration."""
    bucket = f"kept-{secrets.token_hex(6)}"
    s3_emulator.create_bucket(bucket)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_emulator.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/kept"
