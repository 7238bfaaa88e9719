"""The benchmark's upstream: `FakeOpenAI` in its own uvicorn process, plus a few admin routes.

    python -m bench.upstream --port 4201 --api-key sk-bench-up [--no-advance]

Admin routes (no auth, loopback only, never counted as API traffic):

- `POST /_bench/advance/{batch_id}?status=in_progress` moves a batch (the fake's `advance`).
- `POST /_bench/complete/{batch_id}?output_bytes=N` completes a batch; with `output_bytes`, its
  output file is replaced by ~N bytes of realistic chat.completion result lines, so a 100 MB
  output does not need a 200,000-line input.
- `GET /_bench/last_batch` → the newest batch (its native id, for a batch made via the gateway).
- `GET /_bench/stats` → `{"requests": n}`: API requests received so far (to prove that a
  workload made no upstream call).
- `POST /_bench/seed?n=N` → `{"ids": [...]}`: N batches made `in_progress` at once (no input
  file: for workloads that only retrieve them).
- `GET /_bench/polls?reset=1` → `{native id: [unix time of each GET /v1/batches/{id}]}` since
  start or the last reset (the refresh workload's per-batch calls).
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from typing import Any

import msgspec
import uvicorn

from gateway.testing.fake_openai import FakeOpenAI

_encode = msgspec.json.encode


def output_line(i: int, model: str = "gpt-4o-mini") -> bytes:
    custom_id = f"req-{i:08d}"
    content = f"echo:{custom_id} " + "The quick brown fox jumps over the lazy dog. " * 6
    return _encode({
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": "req_" + secrets.token_hex(16),
            "body": {
                "id": "chatcmpl-" + secrets.token_hex(12),
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 120, "completion_tokens": 70, "total_tokens": 190},
                "system_fingerprint": None,
            },
        },
        "error": None,
    }) + b"\n"


def write_output(path: str, size: int) -> int:
    written = 0
    i = 0
    with open(path, "wb", buffering=1 << 20) as f:
        while written < size:
            line = output_line(i)
            f.write(line)
            written += len(line)
            i += 1
    return written


class BenchUpstream:
    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.polls: dict[str, list[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" \
                and scope["path"].startswith("/v1/batches/"):
            self.polls.setdefault(scope["path"][12:], []).append(time.time())
        if scope["type"] == "http" and scope["path"].startswith("/_bench/"):
            status, body = self.admin(scope)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.fake.app(scope, receive, send)

    def admin(self, scope: Any) -> tuple[int, bytes]:
        from urllib.parse import parse_qs

        fake = self.fake
        parts = scope["path"].strip("/").split("/")
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        try:
            if parts[1] == "stats":
                return 200, _encode({"requests": len(fake.requests)})
            if parts[1] == "polls":
                polls = self.polls
                if query.get("reset"):
                    self.polls = {}
                return 200, _encode(polls)
            if parts[1] == "seed":
                return 200, _encode({"ids": [self.seed() for _ in range(int(query["n"]))]})
            if parts[1] == "last_batch":
                return 200, _encode(next(reversed(fake.batches.values())))
            batch_id = parts[2]
            if parts[1] == "advance":
                return 200, _encode(fake.advance(batch_id, query.get("status")))
            if parts[1] == "complete":
                batch = fake.complete(batch_id)
                size = int(query.get("output_bytes") or 0)
                out = batch.get("output_file_id")
                if size and out:
                    path = fake.uploads[out]
                    fake.files[out]["bytes"] = write_output(str(path), size)
                return 200, _encode(batch)
        except (KeyError, IndexError, ValueError) as e:
            return 404, _encode({"error": repr(e)})
        return 404, b'{"error": "unknown admin route"}'


    def seed(self) -> str:
        now = int(time.time())
        batch_id = "batch_" + secrets.token_hex(16)
        self.fake.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions",
            "model": None, "errors": None, "input_file_id": "file-seeded",
            "completion_window": "24h", "status": "in_progress", "output_file_id": None,
            "error_file_id": None, "created_at": now, "in_progress_at": now,
            "expires_at": now + 86_400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 10, "completed": 3, "failed": 0}, "usage": None,
            "metadata": None,
        }
        return batch_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default="sk-bench-upstream")
    parser.add_argument("--no-advance", action="store_true",
                        help="GET /v1/batches/{id} does not move the batch on")
    args = parser.parse_args()
    fake = FakeOpenAI(api_key=args.api_key, auto_advance=not args.no_advance)
    try:
        uvicorn.run(BenchUpstream(fake), host=args.host, port=args.port, log_level="warning",
                    access_log=False, lifespan="off")
    finally:
        fake.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
