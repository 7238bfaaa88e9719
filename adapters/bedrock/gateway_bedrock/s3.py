"""The few S3 calls the adapter needs, signed with botocore's S3 signer over aiohttp: a streamed
upload (one PutObject when the content fits in a part, else a multipart upload holding at most
about two parts in memory, aborted on failure), HEAD, GET (streamed), list and delete."""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from gateway import UpstreamNotFound, UpstreamUnavailable
from gateway_bedrock.aws import Aws, error_code, error_for

CONTENT_TYPE = "application/jsonl"
_READ_CHUNK = 256 << 10
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Virtual-hosted-style addressing needs a bucket name that is one DNS label.
_DNS_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Path:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Path:
        if not uri.startswith("s3://"):
            raise UpstreamNotFound(f"not an s3:// URI: {uri[:100]!r}")
        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise UpstreamNotFound(f"not an s3:// object URI: {uri[:100]!r}")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _q(value: str) -> str:
    """Percent-encoding as SigV4 canonicalises it (RFC 3986 unreserved characters kept)."""
    return quote(value, safe="-_.~")


def _query(params: dict[str, str]) -> str:
    return "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(params.items()))


def _xml(raw: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(raw)
    except ET.ParseError as e:
        raise UpstreamUnavailable(f"S3 {what}: not XML ({e})") from e


def _find(element: ET.Element, *path: str) -> list[ET.Element]:
    """Children by local name along `path` (S3 answers with or without its namespace)."""
    found = [element]
    for name in path:
        found = [c for e in found for c in e if c.tag.rsplit("}", 1)[-1] == name]
    return found


def _text(element: ET.Element, *path: str) -> str | None:
    found = _find(element, *path)
    return found[0].text or "" if found else None


class S3:
    def __init__(self, aws: Aws, region: str, endpoint: str | None, part_size: int) -> None:
        self.aws = aws
        self.region = region
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.part_size = part_size

    def url(self, bucket: str, key: str = "", query: str = "") -> str:
        """Path style on a configured endpoint (emulators, S3-compatible stores); virtual-hosted
        style on AWS when the bucket name allows it."""
        path = quote(key, safe="/-_.~")
        if self.endpoint:
            base = f"{self.endpoint}/{bucket}/{path}" if key else f"{self.endpoint}/{bucket}"
        elif _DNS_LABEL.fullmatch(bucket):
            base = f"https://{bucket}.s3.{self.region}.amazonaws.com/{path}"
        else:
            base = f"https://s3.{self.region}.amazonaws.com/{bucket}/{path}"
        return f"{base}?{query}" if query else base

    async def _call(self, method: str, url: str, *, body: bytes = b"",
                    headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
                    transfer: bool = False) -> tuple[aiohttp.ClientResponse, bytes]:
        return await self.aws.read("s3", self.region, method, url, body=body, headers=headers,
                                   ok=ok, transfer=transfer)

    # -- upload ----------------------------------------------------------------------------------

    async def upload(self, path: S3Path, content: AsyncIterator[bytes]) -> None:
        """Store a stream: one PutObject if it fits in a part, else a multipart upload."""
        buffer = bytearray()
        stream = aiter(content)
        async for chunk in stream:
            buffer += chunk
            if len(buffer) >= self.part_size:
                break
        else:
            await self._call("PUT", self.url(path.bucket, path.key), body=bytes(buffer),
                             headers={"Content-Type": CONTENT_TYPE}, transfer=True)
            return
        upload_id = await self._start(path)
        try:
            etags: list[str] = []
            ended = False
            while True:
                # Whole parts while more data may follow; the last one may be smaller.
                while len(buffer) >= self.part_size or (ended and buffer):
                    with memoryview(buffer) as view:
                        part = bytes(view[: self.part_size])
                    del buffer[: self.part_size]
                    etags.append(await self.upload_part(path, upload_id, len(etags) + 1, part))
                    del part
                if ended:
                    break
                try:
                    buffer += await anext(stream)
                except StopAsyncIteration:
                    ended = True
            await self._complete(path, upload_id, etags)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._call("DELETE", self.url(path.bucket, path.key,
                                                    _query({"uploadId": upload_id})),
                                 ok=(200, 204))
            raise

    async def _start(self, path: S3Path) -> str:
        _, raw = await self._call("POST", self.url(path.bucket, path.key, "uploads="),
                                  headers={"Content-Type": CONTENT_TYPE})
        upload_id = _text(_xml(raw, "CreateMultipartUpload"), "UploadId")
        if not upload_id:
            raise UpstreamUnavailable("S3 CreateMultipartUpload answered without an UploadId")
        return upload_id

    async def upload_part(self, path: S3Path, upload_id: str, number: int, data: bytes) -> str:
        query = _query({"partNumber": str(number), "uploadId": upload_id})
        resp, _ = await self._call("PUT", self.url(path.bucket, path.key, query), body=data,
                                   transfer=True)
        etag = resp.headers.get("ETag")
        if not etag:
            raise UpstreamUnavailable(f"S3 UploadPart {number} answered without an ETag")
        return etag

    async def _complete(self, path: S3Path, upload_id: str, etags: list[str]) -> None:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_escape(etag)}</ETag></Part>"
                        for n, etag in enumerate(etags, start=1))
        body = f'<CompleteMultipartUpload xmlns="{_XMLNS}">{parts}</CompleteMultipartUpload>'
        resp, raw = await self._call(
            "POST", self.url(path.bucket, path.key, _query({"uploadId": upload_id})),
            body=body.encode(), headers={"Content-Type": "application/xml"}, transfer=True)
        # A 200 may still carry an error (S3 reports failures found while assembling so).
        if _xml(raw, "CompleteMultipartUpload").tag.rsplit("}", 1)[-1] == "Error":
            code, _ = error_code(500, raw, resp.headers)
            raise error_for(500 if code in ("InternalError", "") else 400, raw, resp.headers)

    # -- the rest --------------------------------------------------------------------------------

    async def head(self, path: S3Path) -> None:
        """UpstreamNotFound when the object does not exist."""
        await self._call("HEAD", self.url(path.bucket, path.key))

    async def open(self, path: S3Path) -> aiohttp.ClientResponse:
        return await self.aws.open("s3", self.region, "GET", self.url(path.bucket, path.key),
                                   transfer=True)

    async def get(self, path: S3Path) -> bytes:
        _, raw = await self._call("GET", self.url(path.bucket, path.key), transfer=True)
        return raw

    async def list(self, bucket: str, prefix: str) -> list[str]:
        """Every key under `prefix` (ListObjectsV2, all pages)."""
        keys: list[str] = []
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            _, raw = await self._call("GET", self.url(bucket, query=_query(params)))
            page = _xml(raw, "ListObjectsV2")
            keys += [k.text or "" for k in _find(page, "Contents", "Key")]
            token = _text(page, "NextContinuationToken")
            if _text(page, "IsTruncated") != "true" or not token:
                return keys

    async def delete(self, path: S3Path) -> None:
        await self._call("DELETE", self.url(path.bucket, path.key), ok=(200, 204))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") \
        .replace('"', "&quot;")


async def read(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """A download's body in chunks; the response is released however the reader stops."""
    try:
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as e:
        raise UpstreamUnavailable(f"S3 download: {type(e).__name__}: {e}") from e
    finally:
        resp.release()
