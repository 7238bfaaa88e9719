"""`python -m bench.relay`: uploads relayed with no gateway logic, the floor under the gateway.

What any Python service on uvicorn + aiohttp pays on this machine before it looks at one line,
measured in the same run as the gateway (`make bench`, the largest upload):

- `POST /bytes/v1/files`: the request body streamed to the upstream as it arrives;
- `POST /multipart/v1/files`: the body parsed with python-multipart (as the gateway parses
  it) and the file part streamed to the upstream in a new multipart body (as the gateway
  writes a copy).

The upstream's answer comes back as is (its file id, for the benchmark to delete the file).
Same server settings as `gateway serve`: one worker, uvloop, httptools.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import uvicorn
from python_multipart.multipart import MultipartParser, parse_options_header

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_QUEUE = 8  # chunks in flight to the upstream, as the gateway's copies


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body"):
            return


async def _file_part(content_type: bytes, receive: Receive,
                     queue: asyncio.Queue[bytes | None]) -> None:
    """Parse the multipart body; the file part's bytes go to `queue`, then None."""
    _, options = parse_options_header(content_type)
    pending: list[bytes] = []
    in_file = False
    disposition = bytearray()
    header = bytearray()

    def on_part_begin() -> None:
        nonlocal in_file
        in_file = False
        disposition.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[:] = data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        if header.lower() == b"content-disposition":
            disposition.extend(data[start:end])

    def on_headers_finished() -> None:
        nonlocal in_file
        in_file = b"filename=" in disposition

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if in_file:
            pending.append(data[start:end])

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
    })
    async for chunk in _body(receive):
        parser.write(chunk)
        if pending:
            await queue.put(b"".join(pending))
            pending.clear()
    parser.finalize()
    await queue.put(None)


async def _drain(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (chunk := await queue.get()) is not None:
        yield chunk


class Relay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.http: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900))
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await self.http.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.http is not None
        if scope["method"] == "GET":  # the readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        headers = dict(scope["headers"])
        mode, _, path = scope["path"].lstrip("/").partition("/")
        auth = {"Authorization": headers[b"authorization"].decode()}
        url = f"{self.upstream}/{path}"
        if mode == "bytes":
            resp = await self.http.post(url, data=_body(receive), headers={
                **auth, "Content-Type": headers[b"content-type"].decode()})
        else:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE)
            parsing = asyncio.create_task(_file_part(headers[b"content-type"], receive, queue))
            with aiohttp.MultipartWriter("form-data") as form:
                form.append("batch").set_content_disposition("form-data", name="purpose")
                part = form.append(_drain(queue), {"Content-Type": "application/jsonl"})
                part.set_content_disposition("form-data", name="file", filename="relay.jsonl")
                resp = await self.http.post(url, data=form, headers=auth)
            await parsing
        body = await resp.read()
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL")
    args = parser.parse_args()
    uvicorn.run(Relay(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
