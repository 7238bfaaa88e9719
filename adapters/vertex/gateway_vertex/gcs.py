"""The few GCS JSON-API calls the adapter needs: upload (multipart, or resumable in chunks for
anything larger than one chunk, so memory stays bounded), object metadata, download, list,
delete."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway import UpstreamNotFound, UpstreamUnavailable
from gateway_vertex.transport import GoogleApi

DEFAULT_BASE = "https://storage.googleapis.com"
CONTENT_TYPE = "application/jsonl"
# Resumable chunks must be multiples of 256 KiB (all but the last).
CHUNK_QUANTUM = 256 << 10
DEFAULT_CHUNK = 32 * CHUNK_QUANTUM  # 8 MiB
_READ_CHUNK = 256 << 10


@dataclass(frozen=True)
class GcsPath:
    bucket: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> GcsPath:
        if not uri.startswith("gs://"):
            raise UpstreamNotFound(f"not a gs:// URI: {uri[:100]!r}")
        bucket, _, name = uri[5:].partition("/")
        if not bucket or not name:
            raise UpstreamNotFound(f"not a gs:// object URI: {uri[:100]!r}")
        return cls(bucket, name)

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def endpoint(configured: str | None) -> tuple[str, bool]:
    """(base URL, authenticate?) following Google's clients: an explicit `gcs_api_base`, else
    `STORAGE_EMULATOR_HOST` (scheme optional; emulators take no credentials), else GCS."""
    if configured:
        return configured.rstrip("/"), True
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        if "://" not in emulator:
            emulator = f"http://{emulator}"
        return emulator.rstrip("/"), False
    return DEFAULT_BASE, True


class Gcs:
    def __init__(self, api: GoogleApi, base: str, auth: bool, chunk: int = DEFAULT_CHUNK) -> None:
        self.api = api
        self.base = base
        self.auth = auth
        self.chunk = max(CHUNK_QUANTUM, chunk // CHUNK_QUANTUM * CHUNK_QUANTUM)

    def _object_url(self, path: GcsPath) -> URL:
        # Object names travel percent-encoded in the path, `/` included.
        return URL(f"{self.base}/storage/v1/b/{quote(path.bucket, safe='')}/o/"
                   f"{quote(path.name, safe='')}", encoded=True)

    def _upload_url(self, bucket: str) -> str:
        return f"{self.base}/upload/storage/v1/b/{quote(bucket, safe='')}/o"

    async def upload(self, path: GcsPath, content: AsyncIterator[bytes]) -> dict[str, Any]:
        """Store a stream; returns the object resource."""
        buffer = bytearray()
        stream = aiter(content)
        async for chunk in stream:
            buffer += chunk
            if len(buffer) > self.chunk:
                break
        else:
            return await self._multipart(path, bytes(buffer))
        session = await self._start_resumable(path)
        offset = 0
        ended = False
        while not ended:
            # Send whole chunks while more data is known to follow; the last one carries
            # the total size, which is only known once the stream is exhausted.
            while len(buffer) > self.chunk:
                persisted = await self._put(session, bytes(buffer[: self.chunk]), offset, None)
                if isinstance(persisted, dict):
                    raise UpstreamUnavailable("GCS ended a resumable upload before its end")
                del buffer[: persisted - offset]
                offset = persisted
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                ended = True
            else:
                buffer += chunk
        total = offset + len(buffer)
        while True:
            result = await self._put(session, bytes(buffer), offset, total)
            if isinstance(result, dict):
                return result
            del buffer[: result - offset]  # the service kept less than we sent
            offset = result

    async def _multipart(self, path: GcsPath, data: bytes) -> dict[str, Any]:
        # Built by hand (as Google's clients do) so the 401 retry can send the bytes again.
        boundary = secrets.token_hex(16)
        meta = json.dumps({"name": path.name, "contentType": CONTENT_TYPE}).encode()
        body = b"".join((
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            meta,
            f"\r\n--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ))
        result = await self.api.call(
            "POST", self._upload_url(path.bucket), auth=self.auth,
            params={"uploadType": "multipart"}, data=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
            timeout=self.api.transfer_timeout,
        )
        assert isinstance(result, dict)
        return result

    async def _start_resumable(self, path: GcsPath) -> str:
        resp = await self.api.open(
            "POST", self._upload_url(path.bucket), auth=self.auth,
            params={"uploadType": "resumable", "name": path.name},
            json={"name": path.name, "contentType": CONTENT_TYPE},
            headers={"X-Upload-Content-Type": CONTENT_TYPE},
        )
        resp.release()
        location = resp.headers.get("Location")
        if not location:
            raise UpstreamUnavailable("GCS started a resumable upload without a Location")
        return location

    async def _put(
        self, session: str, data: bytes, offset: int, total: int | None
    ) -> int | dict[str, Any]:
        """Send one chunk; the bytes now persisted (308), or the object resource when done."""
        if data:
            span = f"bytes {offset}-{offset + len(data) - 1}/{'*' if total is None else total}"
        else:
            span = f"bytes */{total}"
        resp = await self.api.open(
            "PUT", session, auth=self.auth, data=data, ok=(200, 201, 308),
            headers={"Content-Range": span}, timeout=self.api.transfer_timeout,
        )
        try:
            if resp.status != 308:
                body = await resp.json(content_type=None)
                assert isinstance(body, dict)
                return body
            kept = resp.headers.get("Range")  # "bytes=0-N"; absent when nothing was kept
            return int(kept.rpartition("-")[2]) + 1 if kept else 0
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise UpstreamUnavailable(f"GCS resumable upload: {type(e).__name__}: {e}") from e
        finally:
            resp.release()

    async def get(self, path: GcsPath) -> dict[str, Any]:
        result = await self.api.call("GET", self._object_url(path), auth=self.auth)
        assert isinstance(result, dict)
        return result

    async def open(self, path: GcsPath) -> aiohttp.ClientResponse:
        return await self.api.open("GET", self._object_url(path), auth=self.auth,
                                   params={"alt": "media"}, timeout=self.api.transfer_timeout)

    async def list(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        url = f"{self.base}/storage/v1/b/{quote(bucket, safe='')}/o"
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = await self.api.call("GET", url, auth=self.auth, params=params)
            items += page.get("items") or [] if isinstance(page, dict) else []
            token = page.get("nextPageToken") if isinstance(page, dict) else None
            if not token:
                return items

    async def delete(self, path: GcsPath) -> None:
        await self.api.call("DELETE", self._object_url(path), auth=self.auth, ok=(200, 204))


async def read(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """A download's body in chunks; the response is released however the reader stops."""
    try:
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as e:
        raise UpstreamUnavailable(f"GCS download: {type(e).__name__}: {e}") from e
    finally:
        resp.release()

