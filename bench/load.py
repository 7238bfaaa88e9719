"""The load client: a separate process, driven by a JSON spec, answering with a JSON result.

    python -m bench.load '{"kind": "get", ...}'   → one JSON object on stdout

Small requests (`get`) go through a minimal HTTP/1.1 keep-alive client on asyncio streams: one
connection per simulated client, opened before the clock starts, exact call counts and every
latency kept. It costs ~65 µs of CPU per call (aiohttp's client: ~105 µs), so on a 2-core
machine it takes little CPU from the gateway it measures (see BENCHMARKS.md). Large
transfers (`upload`, `download`, `flow`) use aiohttp, which streams files from disk in chunks.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

# -- small GETs ------------------------------------------------------------------------------


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        close = b"\r\nconnection: close" in lower
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            j = lower.index(b"\r\n", i + 2)
            body = await self.reader.readexactly(int(lower[i + 17 : j]))
        elif b"chunked" in lower:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def run_get(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path + (f"?{url.query}" if url.query else "")
    headers = "".join(f"{k}: {v}\r\n" for k, v in spec.get("headers", {}).items())
    raw = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n").encode()
    n, concurrency, warmup = spec["n"], spec["concurrency"], spec.get("warmup", 0)
    conns = [Conn(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sample: list[str] = []
    remaining = [0]

    async def worker(conn: Conn, record: bool) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                status, body = 0, repr(e).encode()
                conn.close()
            dt = time.perf_counter() - t0
            if record:
                latencies.append(dt)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    if len(sample) < 3:
                        sample.append(body[:300].decode("utf-8", "replace"))

    if warmup:
        remaining[0] = warmup
        await asyncio.gather(*(worker(c, False) for c in conns))
    remaining[0] = n
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c, True) for c in conns))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for c in conns:
        c.close()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "calls": len(latencies),
        "concurrency": concurrency,
        "seconds": wall,
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "errors": sum(errors.values()),
        "error_statuses": errors,
        "error_sample": sample,
        "client_cpu_us_per_call": cpu / max(1, len(latencies)) * 1e6,
    }


# -- big transfers and the whole flow --------------------------------------------------------


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _upload(
    session: aiohttp.ClientSession, base: str, key: str, path: str, fields: dict[str, str]
) -> dict[str, Any]:
    with open(path, "rb") as f:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        for k, v in fields.items():
            form.add_field(k, v)
        form.add_field("file", f, filename=os.path.basename(path),
                       content_type="application/jsonl")
        async with session.post(f"{base}/files", data=form, headers=_headers(key)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"upload: {resp.status} {body[:500]!r}")
            return json.loads(body)


async def _download(session: aiohttp.ClientSession, base: str, key: str, file_id: str) -> int:
    total = 0
    async with session.get(f"{base}/files/{file_id}/content", headers=_headers(key)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"content: {resp.status} {(await resp.read())[:500]!r}")
        async for chunk in resp.content.iter_chunked(1 << 20):
            total += len(chunk)
    return total


async def _json_call(
    session: aiohttp.ClientSession, method: str, url: str, key: str | None,
    body: Any = None,
) -> Any:
    async with session.request(method, url, json=body,
                               headers=_headers(key) if key else None) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {raw[:500]!r}")
        return json.loads(raw)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))


async def run_upload(spec: dict[str, Any]) -> dict[str, Any]:
    async with _session() as s:
        t0 = time.perf_counter()
        obj = await _upload(s, spec["base"], spec["key"], spec["file"], spec.get("fields", {}))
        return {"seconds": time.perf_counter() - t0, "id": obj["id"],
                "bytes": os.path.getsize(spec["file"])}


async def run_download(spec: dict[str, Any]) -> dict[str, Any]:
    async with _session() as s:
        t0 = time.perf_counter()
        size = await _download(s, spec["base"], spec["key"], spec["file_id"])
        return {"seconds": time.perf_counter() - t0, "bytes": size}


async def run_flow(spec: dict[str, Any]) -> dict[str, Any]:
    """upload → create → poll → (provider works: not timed) → poll → download output."""
    base, key, admin = spec["base"], spec["key"], spec["admin"]
    steps: dict[str, float] = {}
    async with _session() as s:

        async def timed(name: str, coro: Any) -> Any:
            t0 = time.perf_counter()
            result = await coro
            steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
            return result

        f = await timed("upload", _upload(s, base, key, spec["file"], spec.get("fields", {})))
        batch = await timed("create", _json_call(s, "POST", f"{base}/batches", key, {
            "input_file_id": f["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}))
        batch = await timed("poll", _json_call(s, "GET", f"{base}/batches/{batch['id']}", key))
        # The provider's wait: complete the batch on the upstream (by its native id).
        native = (await _json_call(s, "GET", f"{admin}/_bench/last_batch", None))["id"]
        await _json_call(s, "POST", f"{admin}/_bench/complete/{native}", None)
        batch = await timed("poll", _json_call(s, "GET", f"{base}/batches/{batch['id']}", key))
        if batch["status"] != "completed":
            raise RuntimeError(f"batch is {batch['status']}: {batch}")
        size = await timed("download", _download(s, base, key, batch["output_file_id"]))
    return {"seconds": sum(steps.values()), "steps": steps, "output_bytes": size}


KINDS = {"get": run_get, "upload": run_upload, "download": run_download, "flow": run_flow}


def main() -> None:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    try:
        result = asyncio.run(KINDS[spec["kind"]](spec))
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
