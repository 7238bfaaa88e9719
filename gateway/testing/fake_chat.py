"""A fake OpenAI-compatible inference server (what vLLM, SGLang or Ollama serve: chat
completions, completions, embeddings, responses; no Files or Batches API), for gateway-run
batches. A real aiohttp server on 127.0.0.1, in a thread of its own.

    fake = FakeChat(max_concurrency=4, rpm=600)
    with fake:
        ...  # fake.url + "/v1" is an api_base

- **Answers** are derived from the request, so runs can be compared: the *marker* of a request
  (the last message's content, the prompt, the input) comes back as `"echo:" + marker`, an
  embedding is a hash of it; `usage` is real (a prompt token per 4 bytes of the request,
  at most 8 completion tokens); every answer has an `x-request-id`.
- **Its own limits**, counted, never enforced (a real server queues): `violations` counts
  arrivals beyond `max_concurrency` requests in flight, `rpm` requests or `tpm` tokens in any
  `window` seconds (`slack` seconds of the window are forgiven: network jitter between the
  gateway's clock and this one).
- **Faults**, per marker: `fail(marker, 429, 500, "hang", "reset")` scripts the next tries of
  that request in order (429 comes with `Retry-After: retry_after`; "hang" answers nothing for
  `hang_seconds`, and is not counted in flight: the client gave up on it; "reset" drops the
  connection); `fail_always(marker, status)` answers every try with `status`.
- **Records**: `received` lists every request (marker, path, time) in arrival order;
  `count(marker)` says how many times a request came.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Fault = int | str


@dataclass(frozen=True)
class Received:
    marker: str
    path: str
    at: float  # time.monotonic() on arrival


def marker_of(path: str, body: dict[str, Any]) -> str:
    """What identifies a request: the last message's content, the prompt or the input."""
    if path.endswith("/chat/completions"):
        messages = body.get("messages") or [{}]
        return str(messages[-1].get("content", ""))
    value = body.get("prompt") if path.endswith("/completions") else body.get("input")
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value)


def _completion_tokens(body: dict[str, Any]) -> int:
    bound = body.get("max_completion_tokens") or body.get("max_tokens") \
        or body.get("max_output_tokens") or 8
    return max(1, min(int(bound), 8))


class FakeChat:
    def __init__(self, *, api_key: str | None = None, max_concurrency: int | None = None,
                 rpm: int | None = None, tpm: int | None = None, window: float = 60.0,
                 slack: float = 0.0, delay: float = 0.0, hang_seconds: float = 30.0,
                 retry_after: str = "1", pretty: bool = False) -> None:
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self.slack = slack
        self.delay = delay
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.pretty = pretty  # answers spread over several lines, as some servers send them
        self.received: list[Received] = []
        self.violations = {"concurrency": 0, "rpm": 0, "tpm": 0}
        self.max_in_flight = 0
        self.in_flight = 0
        self._arrivals: collections.deque[float] = collections.deque()
        self._tokens: collections.deque[tuple[float, int]] = collections.deque()
        self._faults: dict[str, list[Fault]] = {}
        self._always: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- for tests -----------------------------------------------------------------------------

    def fail(self, marker: str, *faults: Fault) -> None:
        with self._lock:
            self._faults.setdefault(marker, []).extend(faults)

    def fail_always(self, marker: str, status: int) -> None:
        with self._lock:
            self._always[marker] = status

    def count(self, marker: str) -> int:
        with self._lock:
            return sum(1 for r in self.received if r.marker == marker)

    def counts(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(r.marker for r in self.received)

    # -- the server ----------------------------------------------------------------------------

    def _arrive(self, marker: str, path: str, tokens: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.received.append(Received(marker, path, now))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.max_concurrency is not None and self.in_flight > self.max_concurrency:
                self.violations["concurrency"] += 1
            counted = self.window - self.slack
            while self._arrivals and self._arrivals[0] <= now - counted:
                self._arrivals.popleft()
            if self.rpm is not None and len(self._arrivals) >= self.rpm:
                self.violations["rpm"] += 1
            self._arrivals.append(now)
            while self._tokens and self._tokens[0][0] <= now - counted:
                self._tokens.popleft()
            if self.tpm is not None and sum(t for _, t in self._tokens) + tokens > self.tpm:
                self.violations["tpm"] += 1
            self._tokens.append((now, tokens))

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _fault(self, marker: str) -> Fault | None:
        with self._lock:
            if marker in self._always:
                return self._always[marker]
            queue = self._faults.get(marker)
            return queue.pop(0) if queue else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rid = {"x-request-id": "req_" + secrets.token_hex(12)}
        if self.api_key is not None and \
                request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Invalid API key.", "type":
                                      "invalid_request_error", "code": "invalid_api_key"}},
                                     status=401, headers=rid)
        raw = await request.read()
        body = json.loads(raw)
        path = request.path
        marker = marker_of(path, body)
        prompt = len(raw) // 4 + 1  # as a client would estimate it: tpm tests are tight
        completion = 0 if path.endswith("/embeddings") else _completion_tokens(body)
        self._arrive(marker, path, prompt + completion)
        fault = self._fault(marker)
        try:
            if fault == "hang":
                self._leave()  # the client gives up on it: no longer its request in flight
                await asyncio.sleep(self.hang_seconds)
                return web.json_response({"error": {"message": "too late"}}, status=504)
            if fault == "reset":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            if isinstance(fault, int):
                headers = dict(rid)
                if fault == 429:
                    headers["Retry-After"] = self.retry_after
                return web.json_response(
                    {"error": {"message": f"Fake failure {fault} for {marker}.",
                               "type": "server_error" if fault >= 500 else
                               "invalid_request_error", "param": None, "code": None}},
                    status=fault, headers=headers)
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self._answer(path, body, marker, prompt, completion)
            text = json.dumps(answer, indent=1 if self.pretty else None)
            return web.Response(text=text, content_type="application/json", headers=rid)
        finally:
            if fault != "hang":
                self._leave()

    @staticmethod
    def _answer(path: str, body: dict[str, Any], marker: str, prompt: int,
                completion: int) -> dict[str, Any]:
        model = body.get("model")
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        text = "echo:" + marker
        now = int(time.time())
        if path.endswith("/chat/completions"):
            return {"id": "chatcmpl-" + secrets.token_hex(8), "object": "chat.completion",
                    "created": now, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}], "usage": usage}
        if path.endswith("/embeddings"):
            digest = hashlib.sha256(marker.encode()).digest()
            return {"object": "list", "model": model,
                    "data": [{"object": "embedding", "index": 0,
                              "embedding": [b / 255 for b in digest[:8]]}],
                    "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        if path.endswith("/completions"):
            return {"id": "cmpl-" + secrets.token_hex(8), "object": "text_completion",
                    "created": now, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": usage}
        return {"id": "resp_" + secrets.token_hex(8), "object": "response", "model": model,
                "status": "completed",
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": text}]}],
                "usage": {"input_tokens": prompt, "output_tokens": completion,
                          "total_tokens": prompt + completion}}

    def start(self) -> FakeChat:
        started = threading.Event()
        app = web.Application()
        for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                      "/v1/responses"):
            app.router.add_post(route, self._handle)

        async def serve() -> None:
            self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            started.set()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(serve())
            loop.run_forever()
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        if not started.wait(20):
            raise RuntimeError("the fake chat server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=20)
            self._loop = None

    def __enter__(self) -> FakeChat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
