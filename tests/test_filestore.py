"""The file store on a local directory and on S3 (moto over HTTP): what is committed comes back
byte for byte in bounded chunks, and nothing uncommitted, aborted or failed is ever visible."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.filestore import (
    READ_CHUNK,
    FileStore,
    KeptFileMissing,
    LocalFileStore,
    open_file_store,
)
from gateway.testing.s3 import S3Emulator

PIECE = 256 << 10
MiB = 1 << 20
KEY = "inputs/file-abc123.jsonl"


def pieces(total: int, seed: int = 1) -> list[bytes]:
    data = random.Random(seed).randbytes(total)
    return [data[i : i + PIECE] for i in range(0, total, PIECE)]


async def write_all(store: FileStore, key: str, parts: list[bytes]) -> int:
    writer = store.writer(key)
    for part in parts:
        await writer.write(part)
    return await writer.commit()


async def read_all(store: FileStore, key: str) -> tuple[bytes, list[int]]:
    chunks = [chunk async for chunk in await store.open(key)]
    return b"".join(chunks), [len(c) for c in chunks]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "local":
        return None
    value: str = request.getfixturevalue("s3_file_store_url")
    return value


@pytest.fixture
async def store(url: str | None, tmp_path: Path) -> AsyncIterator[FileStore]:
    fs = open_file_store(url, tmp_path)
    yield fs
    await fs.close()


class Behind:
    """What the backend really holds, looked at without the store."""

    def __init__(self, backend: str, url: str | None, tmp_path: Path,
                 request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self.root = tmp_path / "files"
        if backend == "s3":
            assert url is not None
            self.bucket = urlsplit(url).netloc
            emulator: S3Emulator = request.getfixturevalue("s3_emulator")
            self.s3: Any = emulator.client()

    def names(self) -> list[str]:
        """Every object or file, including temporary files and unfinished multipart uploads."""
        if self.backend == "local":
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                          if p.is_file())
        objects = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return sorted([o["Key"] for o in objects] + [f"(upload) {u['Key']}" for u in uploads])

    def visible(self) -> list[str]:
        return [n for n in self.names() if not n.endswith(".part") and "(upload)" not in n]

    def content(self, key: str) -> bytes:
        if self.backend == "local":
            return (self.root / key).read_bytes()
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=f"kept/{key}")["Body"].read()
        return body


@pytest.fixture
def behind(backend: str, url: str | None, tmp_path: Path,
           request: pytest.FixtureRequest) -> Behind:
    return Behind(backend, url, tmp_path, request)


async def test_round_trip_multi_mib(store: FileStore) -> None:
    # Two full 5 MiB parts and a short one; the tail is not a whole piece.
    parts = pieces(11 * MiB + 777)
    assert await write_all(store, KEY, parts) == 11 * MiB + 777
    assert await store.exists(KEY)
    data, sizes = await read_all(store, KEY)
    assert hashlib.sha256(data).digest() == hashlib.sha256(b"".join(parts)).digest()
    assert max(sizes) <= READ_CHUNK


async def test_reads_stream_in_bounded_chunks(store: FileStore) -> None:
    await write_all(store, KEY, pieces(8 * MiB))
    _, sizes = await read_all(store, KEY)
    assert sum(sizes) == 8 * MiB
    assert max(sizes) <= 1 * MiB
    assert len(sizes) >= 8


async def test_empty_file(store: FileStore) -> None:
    assert await write_all(store, KEY, []) == 0
    assert await store.exists(KEY)
    assert await read_all(store, KEY) == (b"", [])


async def test_objects_land_under_the_prefix(store: FileStore, behind: Behind) -> None:
    parts = pieces(300_000, seed=2)
    await write_all(store, KEY, parts)
    if behind.backend == "s3":
        assert behind.names() == [f"kept/{KEY}"]
    else:
        assert behind.names() == [KEY]
    assert behind.content(KEY) == b"".join(parts)


async def test_open_missing_raises_before_any_chunk(store: FileStore) -> None:
    with pytest.raises(KeptFileMissing):
        await store.open("inputs/missing.jsonl")
    # A "directory" (a prefix of stored keys) is not a file either.
    await write_all(store, KEY, pieces(1000))
    with pytest.raises(KeptFileMissing):
        await store.open("inputs")
    assert not await store.exists("inputs")


async def test_abort_leaves_nothing(store: FileStore, behind: Behind) -> None:
    writer = store.writer(KEY)
    # More than one 5 MiB part: on S3 a multipart upload is under way when we abort.
    for part in pieces(7 * MiB):
        await writer.write(part)
    await writer.abort()
    await writer.abort()
    assert not await store.exists(KEY)
    with pytest.raises(KeptFileMissing):
        await store.open(KEY)
    # Nor a .part file, nor an unfinished multipart upload.
    assert behind.names() == []
    with pytest.raises(RuntimeError):
        await writer.write(b"more")
    with pytest.raises(RuntimeError):
        await writer.commit()


@pytest.mark.parametrize("upload_finished", [False, True])
async def test_abort_after_cancelled_commit_leaves_nothing(
    store: FileStore, behind: Behind, upload_finished: bool
) -> None:
    """A handler cancelled in commit() then aborts: whether the upload (thread) went on to
    finish or not, nothing may stay behind."""
    writer = store.writer(KEY)
    # Small enough when the upload is to finish: the end marker then needs no room in the
    # queue and is sent before the commit is cancelled.
    for part in pieces(3 * PIECE if upload_finished else 6 * MiB):
        await writer.write(part)
    commit = asyncio.create_task(writer.commit())
    await asyncio.sleep(0)  # one turn, so that the commit gets under way
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    if upload_finished:
        # White-box: the commit's own work, which a cancelled commit() leaves running.
        background = getattr(writer, "_task", None) or getattr(writer, "_pending", None)
        assert background is not None
        await asyncio.wait({background})
        assert await store.exists(KEY)
    await writer.abort()
    assert not await store.exists(KEY)
    assert behind.names() == []


async def test_abort_after_commit_keeps_the_file(store: FileStore) -> None:
    writer = store.writer(KEY)
    await writer.write(b"kept\n")
    await writer.commit()
    await writer.abort()
    assert (await read_all(store, KEY))[0] == b"kept\n"


async def test_uncommitted_write_is_invisible(store: FileStore, behind: Behind) -> None:
    writer = store.writer(KEY)
    for part in pieces(6 * MiB):
        await writer.write(part)
    assert not await store.exists(KEY)
    with pytest.raises(KeptFileMissing):
        await store.open(KEY)
    assert behind.visible() == []
    await writer.abort()


async def test_failed_upload_makes_write_raise(
    backend: str, url: str | None, tmp_path: Path
) -> None:
    if backend == "s3":
        assert url is not None
        store = open_file_store(url.replace("s3://", "s3://missing-"), tmp_path)
    else:
        store = open_file_store(None, tmp_path)
        (tmp_path / "files" / "inputs").write_bytes(b"a file where a directory must go")
    writer = store.writer(KEY)

    async def write_until_it_fails() -> None:
        for part in pieces(40 * MiB):
            await writer.write(part)

    # The timeout only turns a hang (the bug this is about) into a failure.
    with pytest.raises(OSError):
        await asyncio.wait_for(write_until_it_fails(), 60)
    with pytest.raises(RuntimeError, match="failed"):
        await writer.commit()
    await writer.abort()
    assert not await store.exists(KEY)


async def test_delete_is_idempotent(store: FileStore) -> None:
    await store.delete(KEY)
    await write_all(store, KEY, pieces(1000))
    await store.delete(KEY)
    assert not await store.exists(KEY)
    with pytest.raises(KeptFileMissing):
        await store.open(KEY)
    await store.delete(KEY)


async def test_overwrite_replaces_whole(store: FileStore) -> None:
    await write_all(store, KEY, pieces(2 * MiB, seed=3))
    await write_all(store, KEY, [b"short"])
    assert (await read_all(store, KEY))[0] == b"short"


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "inputs/../../x", "/abs/key", "..", "a//b", "./a", "", "a\\b",
            "inputs/x.part"]
)
async def test_bad_keys_refused(store: FileStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.writer(key)
    with pytest.raises(ValueError):
        await store.open(key)
    with pytest.raises(ValueError):
        await store.delete(key)
    with pytest.raises(ValueError):
        await store.exists(key)


# --- local directory only ----------------------------------------------------------------------


async def test_local_commit_leaves_no_part_file(tmp_path: Path) -> None:
    store = open_file_store(None, tmp_path)
    await write_all(store, KEY, pieces(MiB))
    assert [p.name for p in (tmp_path / "files" / "inputs").iterdir()] == ["file-abc123.jsonl"]


def test_local_open_sweeps_stale_part_files(tmp_path: Path) -> None:
    inputs = tmp_path / "files" / "inputs"
    inputs.mkdir(parents=True)
    stale, fresh, kept = inputs / ".a.x1.part", inputs / ".b.x2.part", inputs / "c.jsonl"
    for path in (stale, fresh, kept):
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(kept, (two_hours_ago, two_hours_ago))
    open_file_store(None, tmp_path)
    assert sorted(p.name for p in inputs.iterdir()) == [".b.x2.part", "c.jsonl"]


def test_urls_select_the_store(tmp_path: Path) -> None:
    default = open_file_store(None, tmp_path)
    assert isinstance(default, LocalFileStore)
    assert default.url == f"local:{tmp_path / 'files'}"
    assert open_file_store(f"file://{tmp_path}/kept", tmp_path).url == f"local:{tmp_path}/kept"
    assert open_file_store(str(tmp_path / "plain"), "unused").url == f"local:{tmp_path}/plain"
    assert (tmp_path / "plain").is_dir()
    s3 = open_file_store("s3://AKIAX:secret@bucket-name/kept?x=1", tmp_path)
    assert s3.url == "s3://bucket-name/kept"
    assert open_file_store("gs://bucket-name/kept", tmp_path).url == "gs://bucket-name/kept"
    with pytest.raises(ValueError, match="scheme"):
        open_file_store("ftp://host/dir", tmp_path)
    with pytest.raises(ValueError, match="not valid"):
        open_file_store("s3://bucket-name/kept", tmp_path, {"no_such_option": "1"})


async def test_memory_store_round_trip(tmp_path: Path) -> None:
    store = open_file_store("memory://", tmp_path)
    parts = pieces(3 * MiB + 5)
    await write_all(store, KEY, parts)
    data, sizes = await read_all(store, KEY)
    assert data == b"".join(parts)
    assert max(sizes) <= READ_CHUNK
    with pytest.raises(KeptFileMissing):
        await store.open("inputs/missing")


async def test_s3_options_instead_of_environment(
    s3_emulator: S3Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    s3_emulator.create_bucket("kept-by-options")
    store = open_file_store("s3://kept-by-options/kept", tmp_path, s3_emulator.options())
    parts = pieces(6 * MiB)
    await write_all(store, KEY, parts)
    assert (await read_all(store, KEY))[0] == b"".join(parts)


# --- memory use ---------------------------------------------------------------------------------

# In a child process: the emulator, in this one, keeps the object in memory.
_RSS_CHILD = """
import asyncio, json, os, sys
from gateway.filestore import open_file_store

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

async def write(store, key, mib):
    writer = store.writer(key)
    filler = bytes(range(256)) * 1024
    for i in range(mib * 4):
        # A new object per piece: a store that kept references would then show in RSS.
        await writer.write(i.to_bytes(8, "little") + filler[8:])
    return await writer.commit()

async def main():
    store = open_file_store(sys.argv[1], "unused")
    await write(store, "warm-up", 6)
    before = peak_kib()
    size = await write(store, "big", int(sys.argv[2]))
    print(json.dumps({"size": size, "growth_kib": peak_kib() - before}), flush=True)

asyncio.run(main())
# Exit at once: an obstore (tokio) thread still handing back the last result while the
# interpreter finalises takes the process down with SIGABRT.
os._exit(0)
"""


def test_s3_upload_memory_does_not_grow_with_size(
    s3_file_store_url: str, s3_emulator: S3Emulator
) -> None:
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, s3_file_store_url, "64"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["size"] == 64 * MiB
    assert result["growth_kib"] < 40 * 1024, result
    bucket = urlsplit(s3_file_store_url).netloc
    s3: Any = s3_emulator.client()
    assert s3.head_object(Bucket=bucket, Key="kept/big")["ContentLength"] == 64 * MiB
    for key in ("kept/big", "kept/warm-up"):
        s3.delete_object(Bucket=bucket, Key=key)
