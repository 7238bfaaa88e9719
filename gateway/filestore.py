"""Where the gateway keeps its own copy of every file: a local directory or an object store.

Both are written as a stream of pieces and made visible under their key only on commit, so a
reader never sees half a file and a failed or abandoned upload leaves nothing under the key.
Memory stays bounded by a few pieces (plus a few multipart parts for an object store) whatever
the file size.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import unquote, urlsplit

import obstore
from obstore.store import from_url

if TYPE_CHECKING:
    from obstore import BytesStream
    from obstore.store import ClientConfig, ObjectStore

__all__ = ["FileStore", "KeptFileMissing", "Writer", "open_file_store"]

READ_CHUNK = 1 << 20
# obstore joins network reads until a chunk reaches this size; READ_CHUNK caps what we hand on.
_OBJECT_MIN_CHUNK = 256 << 10
_QUEUE_PIECES = 8
# S3 parts must be at least 5 MiB (all but the last); each part in flight is buffered whole, so
# this pair bounds the upload's memory at about PART * (CONCURRENCY + 1).
_PART_SIZE = 5 << 20
_PART_CONCURRENCY = 3
# How long abort lets obstore abort a multipart upload itself before cancelling the task
# (a cancelled put leaves the incomplete multipart upload behind in the bucket).
_ABORT_GRACE_S = 10.0
_STALE_PART_S = 3600.0

_OBJECT_SCHEMES = {"s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "memory"}
# obstore takes these through client_options; given as store config they make it panic.
_CLIENT_OPTIONS = {
    "allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type",
    "http1_only", "http2_keep_alive_interval", "http2_keep_alive_timeout",
    "http2_keep_alive_while_idle", "http2_only", "pool_idle_timeout", "pool_max_idle_per_host",
    "proxy_url", "proxy_ca_certificate", "proxy_excludes", "randomize_addresses",
    "read_timeout", "root_certificate", "timeout", "user_agent",
}


class KeptFileMissing(Exception):
    """The key does not exist in the store."""


def check_key(key: str) -> str:
    """A key is a relative path of plain segments; anything else could escape the store."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in ("", ".", "..") for p in parts)
        # Temporary files end in .part and are swept; a key must never look like one.
        or key.endswith(".part")
    ):
        raise ValueError(f"invalid file store key: {key!r}")
    return key


class Writer(ABC):
    """One object being written: pieces in order, then commit (or abort)."""

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def commit(self) -> int:
        """Make the object visible under its key; returns its size in bytes."""

    @abstractmethod
    async def abort(self) -> None:
        """Discard what was written. Idempotent, safe after a failed write; no-op after commit."""


class FileStore(ABC):
    url: str

    @abstractmethod
    def writer(self, key: str) -> Writer: ...

    @abstractmethod
    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of at most READ_CHUNK.

        Raises KeptFileMissing here, before any chunk, so a handler can still answer 404.
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    async def close(self) -> None:
        return None


class _State(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"
    # A write raised or was cancelled: whether its piece landed is unknown, so the object could
    # only be committed with a hole in it.
    FAILED = "failed"


def _check_writable(state: _State) -> None:
    if state is not _State.OPEN:
        raise RuntimeError(f"writer is {state.value}")


# --- local directory ---------------------------------------------------------------------------


class _LocalWriter(Writer):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._tmp: str | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._state = _State.OPEN
        self._replaced = False
        # A cancelled await does not stop a thread: abort waits for the last one to finish.
        self._pending: asyncio.Future[None] | None = None

    async def _in_thread(self, fn: Callable[..., None], *args: Any) -> None:
        self._pending = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        await asyncio.shield(self._pending)

    def _open(self) -> IO[bytes]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            dir=self._path.parent, prefix=f".{self._path.name}.", suffix=".part"
        )
        return os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.write(data)

    async def write(self, data: bytes) -> None:
        _check_writable(self._state)
        try:
            await self._in_thread(self._write, data)
        except BaseException:
            self._state = _State.FAILED
            raise
        self._size += len(data)

    def _finish(self) -> None:
        if self._file is None:
            self._file = self._open()
        assert self._tmp is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._path)
        self._tmp = None
        self._replaced = True
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def commit(self) -> int:
        _check_writable(self._state)
        self._state = _State.COMMITTING
        await self._in_thread(self._finish)
        self._state = _State.COMMITTED
        return self._size

    def _discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        for path in (self._tmp, self._path if self._replaced else None):
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._tmp = None

    async def abort(self) -> None:
        if self._state in (_State.COMMITTED, _State.ABORTED):
            return
        self._state = _State.ABORTED
        if self._pending is not None:
            await asyncio.wait({self._pending})
        await asyncio.to_thread(self._discard)


class _LocalReader:
    """Reads in a thread; closes the file at the end, on error or on aclose()."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file: IO[bytes] | None = file

    def __aiter__(self) -> _LocalReader:
        return self

    async def __anext__(self) -> bytes:
        if self._file is None:
            raise StopAsyncIteration
        try:
            chunk = await asyncio.to_thread(self._file.read, READ_CHUNK)
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LocalFileStore(FileStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"local:{root}"
        root.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Remove temporary files a crash left behind (old enough that no writer owns them)."""
        cutoff = time.time() - _STALE_PART_S
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if not name.endswith(".part"):
                    continue
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def writer(self, key: str) -> Writer:
        return _LocalWriter(self._path(key))

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeptFileMissing(key) from None
        return _LocalReader(file)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)


# --- object store ------------------------------------------------------------------------------


class _Signal(enum.Enum):
    END = "end"
    ABORT = "abort"


class _Aborted(Exception):
    """Raised into obstore's upload so that it aborts the multipart upload itself."""


class _Pieces:
    """The async iterator obstore pulls the upload from. A class, not an async generator: obstore
    may drop it half-way, and a plain object needs no finalisation by the event loop."""

    def __init__(self, queue: asyncio.Queue[bytes | _Signal]) -> None:
        self._queue = queue

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if item is _Signal.END:
            raise StopAsyncIteration
        if item is _Signal.ABORT:
            raise _Aborted
        return item


class _ObjectWriter(Writer):
    def __init__(self, store: ObjectStore, path: str) -> None:
        self._store = store
        self._path = path
        self._queue: asyncio.Queue[bytes | _Signal] = asyncio.Queue(_QUEUE_PIECES)
        # Started by the first write, so a writer aborted before any data costs no request.
        self._task: asyncio.Task[None] | None = None
        self._size = 0
        self._state = _State.OPEN

    async def _upload(self) -> None:
        await obstore.put_async(
            self._store,
            self._path,
            _Pieces(self._queue),
            chunk_size=_PART_SIZE,
            max_concurrency=_PART_CONCURRENCY,
        )

    def _started(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._upload())
        return self._task

    async def _send(self, item: bytes | _Signal) -> None:
        task = self._started()
        if task.done():
            _raise_ended(task)
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        # Wait for room, unless the upload dies first: then no room would ever come.
        put = asyncio.ensure_future(self._queue.put(item))
        try:
            await asyncio.wait({put, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if put.cancelled():
            _raise_ended(task)

    async def write(self, data: bytes) -> None:
        _check_writable(self._state)
        try:
            await self._send(data)
        except BaseException:
            self._state = _State.FAILED
            raise
        self._size += len(data)

    async def commit(self) -> int:
        _check_writable(self._state)
        self._state = _State.COMMITTING
        await self._send(_Signal.END)
        assert self._task is not None
        # Shielded: a cancelled commit must not cancel the upload half-way (that would leave
        # an incomplete multipart upload behind); abort() waits for it or aborts it instead.
        await asyncio.shield(self._task)
        self._state = _State.COMMITTED
        return self._size

    async def abort(self) -> None:
        if self._state in (_State.COMMITTED, _State.ABORTED):
            return
        self._state = _State.ABORTED
        task = self._task
        if task is None:
            return
        if not task.done():
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_Signal.ABORT)
            try:
                await asyncio.wait({task}, timeout=_ABORT_GRACE_S)
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
        if task.cancelled() or task.exception() is not None:
            return
        # The upload completed (a commit was cancelled at the very end): undo it.
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self._store, self._path)


def _raise_ended(task: asyncio.Task[None]) -> NoReturn:
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc
    raise RuntimeError("the upload ended before all data was sent")


async def _bounded(stream: BytesStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        if len(chunk) <= READ_CHUNK:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), READ_CHUNK):
            yield bytes(view[start : start + READ_CHUNK])


def _public_url(url: str) -> str:
    """The URL without credentials or query, fit for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class ObjectFileStore(FileStore):
    def __init__(self, url: str, options: Mapping[str, str] | None = None) -> None:
        self.url = _public_url(url)
        scheme = urlsplit(url).scheme
        if scheme == "memory":
            self.store: ObjectStore = from_url("memory:///")
            return
        config: dict[str, Any] = {}
        client: dict[str, Any] = {}
        for name, value in (options or {}).items():
            (client if name.lower() in _CLIENT_OPTIONS else config)[name.lower()] = value
        try:
            self.store = from_url(
                url, client_options=cast("ClientConfig", client) if client else None, **config
            )
        except obstore.exceptions.BaseError as e:
            # obstore's message goes on with a multi-line debug dump.
            raise ValueError(f"file store {self.url}: {str(e).splitlines()[0]}") from e

    def writer(self, key: str) -> Writer:
        return _ObjectWriter(self.store, check_key(key))

    async def open(self, key: str) -> AsyncIterator[bytes]:
        try:
            result = await obstore.get_async(self.store, check_key(key))
        except FileNotFoundError:
            raise KeptFileMissing(key) from None
        return _bounded(result.stream(min_chunk_size=_OBJECT_MIN_CHUNK))

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self.store, check_key(key))

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, check_key(key))
        except FileNotFoundError:
            return False
        return True


def open_file_store(
    url: str | None, data_dir: str | Path, options: Mapping[str, str] | None = None
) -> FileStore:
    """The store for `url`: none, a path or file:///dir for a local directory (default
    `<data_dir>/files`); s3://, gs://, az:// (bucket/prefix) or memory:// for an object store.

    `options` go to obstore's store (e.g. endpoint, region, allow_http); S3 also reads the
    standard AWS_* environment variables.
    """
    if not url:
        return LocalFileStore(Path(data_dir).absolute() / "files")
    scheme, sep, _ = url.partition("://")
    if not sep:
        return LocalFileStore(Path(url).expanduser().absolute())
    scheme = scheme.lower()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file store URL must be file:///absolute/dir, not {url!r}")
        return LocalFileStore(Path(unquote(parts.path)))
    if scheme in _OBJECT_SCHEMES:
        return ObjectFileStore(url, options)
    raise ValueError(f"unsupported file store URL scheme {scheme!r} in {_public_url(url)!r}")
