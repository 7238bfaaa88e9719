"""In-memory providers and deployment state, for core tests that open no sockets.

    from gateway.testing import memory

    gateway_server(cfg, extra_plugins=(memory.memory_plugin,))   # `model: memory/<name>`
    up = memory.upstream(deployment_id)       # what that deployment received
    up.fail("put_input", UpstreamUnavailable("down"), times=2)  # the next two uploads fail

Two providers share one in-process "upstream", a registry of `MemoryUpstream`s keyed by
deployment id (`UPSTREAMS`; `reset()` empties it):

- `MemoryProvider` (`memory/<model>`, input "file"): `put_input` stores the copy,
  `delete_input` removes it; `rewrite()` is `RenameModel`.
- `InlineMemoryProvider` (`memory_inline/<model>`, input "inline"): `submit` reads
  `Submission.open_input`; `rewrite()` is `MapLines` (sets `body.model`; a line with
  `body.n` other than 1 is refused with `InvalidRequestLine`, as a provider without `n` would).

Batches start `validating` and move one state per `poll`: validating -> in_progress ->
finalizing -> completed (cancelling -> cancelled). Leaving `validating` the lines are checked:
an unparseable line or no line at all fails the batch with `errors`. A completed batch has one
synthetic chat.completion output line per request (content `"echo:" + custom_id`, model = the
line's `body.model`); a request whose `body` has `"fail": true` or whose `custom_id` starts with
`fail` gives a `status_code: 400` error line instead and counts as failed. Usage sums fake token
counts of the successes. A cancelled batch has every request in its error file as
`batch_cancelled`, as OpenAI does.

Credentials: a deployment whose `api_key` is `REFUSED_KEY` is refused on every call with
`UpstreamUnavailable` (status 401). Params `min_requests`, `max_requests`, `max_bytes`,
`endpoints`, `cancel` and `delete` set the deployment's `Capabilities`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from gateway import (
    ALL_ENDPOINTS,
    TERMINAL,
    Batch,
    BatchError,
    Capabilities,
    InvalidRequestLine,
    LineRewrite,
    MapLines,
    Provider,
    ProviderParams,
    RenameModel,
    RequestCounts,
    ResultFile,
    ResultKind,
    Status,
    Submission,
    Unsuitable,
    UnsupportedOperation,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
    Usage,
    hookimpl,
    lines,
)

REFUSED_KEY = "sk-refused"
NEXT: dict[str, Status] = {
    "validating": "in_progress",
    "in_progress": "finalizing",
    "finalizing": "completed",
    "cancelling": "cancelled",
}
OPERATIONS = frozenset({"put_input", "delete_input", "submit", "poll", "cancel", "results"})
_CHUNK = 64 << 10
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class MemoryState:
    """`DeploymentState` in a dict (`values`), for one deployment or a test."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self.values[key] = bytes(value)

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)


# -- the in-process upstream ---------------------------------------------------------------------


@dataclass
class MemoryBatch:
    """One batch as the upstream holds it."""

    id: str
    status: Status
    endpoint: str
    input: bytes  # the native lines as received
    input_id: str | None  # file mode: the copy it was created from
    gateway_batch_id: str
    metadata: dict[str, str] | None
    request_count: int  # what the core said
    created_at: int
    requests: list[dict[str, Any]] = field(default_factory=list)  # parsed when validated
    counts: RequestCounts | None = None
    usage: Usage | None = None
    errors: list[BatchError] | None = None
    output: bytes = b""
    error: bytes = b""
    times: dict[str, int] = field(default_factory=dict)  # "in_progress_at" -> epoch seconds

    @property
    def lines(self) -> list[dict[str, Any]]:
        """The request lines it received, parsed (whether validated yet or not)."""
        return [_decode(raw) for raw in self.input.splitlines() if raw.strip()]


class MemoryUpstream:
    """What one deployment's upstream holds and received, with fault injection."""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        self.inputs: dict[str, bytes] = {}  # native input id -> content
        self.input_names: dict[str, str] = {}  # native input id -> name given to put_input
        self.deleted: list[str] = []  # input ids deleted, in order
        self.batches: dict[str, MemoryBatch] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, argument) for every call
        self._faults: dict[str, list[UpstreamError]] = {}
        self._lock = threading.RLock()

    # -- for tests -------------------------------------------------------------------------------

    def fail(self, operation: str, error: UpstreamError, times: int = 1) -> None:
        """Raise `error` from the next `times` calls of `operation` (a Provider method name:
        put_input, delete_input, submit, poll, cancel, results)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {sorted(OPERATIONS)}")
        with self._lock:
            self._faults.setdefault(operation, []).extend([error] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, operation: str) -> int:
        """How many times `operation` was called (faulted calls included)."""
        return sum(1 for op, _ in self.calls if op == operation)

    def advance(self, batch_id: str, status: Status | None = None) -> MemoryBatch:
        """Move a batch one state on (as a poll does), or straight to `status` ("failed",
        "expired", "completed", ...) with that state's side effects."""
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status in TERMINAL:
                if status in (None, batch.status):
                    return batch
                raise ValueError(f"batch {batch_id} is already {batch.status}")
            self._move(batch, status or NEXT[batch.status])
            return batch

    def complete(self, batch_id: str) -> MemoryBatch:
        """Advance a batch until it is terminal."""
        with self._lock:
            batch = self._batch(batch_id)
            while batch.status not in TERMINAL:
                self._move(batch, NEXT[batch.status])
            return batch

    # -- what the providers call -----------------------------------------------------------------

    def enter(self, operation: str, argument: str, api_key: str | None) -> None:
        """Record a call, then raise an injected fault or a refused credential."""
        with self._lock:
            self.calls.append((operation, argument))
            queued = self._faults.get(operation)
            if queued:
                raise queued.pop(0)
        if api_key == REFUSED_KEY:
            raise UpstreamUnavailable("invalid api key", status=401)

    def store_input(self, content: bytes, name: str) -> str:
        native = "minput-" + secrets.token_hex(12)
        with self._lock:
            self.inputs[native] = content
            self.input_names[native] = name
        return native

    def delete_input(self, input_id: str) -> None:
        with self._lock:
            if self.inputs.pop(input_id, None) is None:
                raise UpstreamNotFound(f"no input {input_id}", status=404)
            self.input_names.pop(input_id, None)
            self.deleted.append(input_id)

    def create(self, job: Submission, content: bytes) -> MemoryBatch:
        batch = MemoryBatch(
            id="mbatch-" + secrets.token_hex(12),
            status="validating",
            endpoint=job.endpoint,
            input=content,
            input_id=job.input_id,
            gateway_batch_id=job.batch_id,
            metadata=dict(job.metadata) if job.metadata else None,
            request_count=job.request_count,
            created_at=int(time.time()),
        )
        with self._lock:
            self.batches[batch.id] = batch
        return batch

    def poll(self, batch_id: str) -> MemoryBatch:
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status not in TERMINAL:
                self._move(batch, NEXT[batch.status])
            return batch

    def cancel(self, batch_id: str) -> MemoryBatch:
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status in TERMINAL:
                raise UpstreamConflict(
                    f"Cannot cancel a batch with status '{batch.status}'.", status=409
                )
            if batch.status != "cancelling":
                self._move(batch, "cancelling")
            return batch

    def result(self, batch_id: str, which: ResultKind) -> bytes:
        with self._lock:
            batch = self._batch(batch_id)
            data = batch.output if which == "output" else batch.error
        if batch.status not in TERMINAL or not data:
            raise UpstreamNotFound(f"batch {batch_id} has no {which}", status=404)
        return data

    def snapshot(self, batch_id: str) -> Batch:
        with self._lock:
            batch = self._batch(batch_id)
            return _report(batch)

    # -- the state machine (lock held) -----------------------------------------------------------

    def _batch(self, batch_id: str) -> MemoryBatch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise UpstreamNotFound(f"No such batch: {batch_id}", status=404)
        return batch

    def _move(self, batch: MemoryBatch, target: Status) -> None:
        now = int(time.time())
        if target in ("in_progress", "finalizing", "completed", "expired"):
            if not self._validate(batch, now):
                return
            batch.times.setdefault("in_progress_at", now)
        if target == "finalizing":
            batch.times.setdefault("finalizing_at", now)
        elif target == "completed":
            batch.times.setdefault("finalizing_at", now)
            self._run(batch, abort=None)
            batch.times["completed_at"] = now
        elif target == "expired":
            self._run(batch, abort="batch_expired")
            batch.times["expired_at"] = now
        elif target == "failed":
            if self._validate(batch, now):
                batch.errors = [BatchError(code="fake_failure", message="Failed by the test.")]
                batch.times["failed_at"] = now
        elif target == "cancelling":
            batch.times["cancelling_at"] = now
        elif target == "cancelled":
            batch.times.setdefault("cancelling_at", now)
            if not self._validate(batch, now):
                return
            self._run(batch, abort="batch_cancelled")
            batch.times["cancelled_at"] = now
        if batch.status != "failed":
            batch.status = target

    def _validate(self, batch: MemoryBatch, now: int) -> bool:
        if batch.requests or batch.status == "failed":
            return batch.status != "failed"
        parsed: list[dict[str, Any]] = []
        errors: list[BatchError] = []
        for number, raw in enumerate(batch.input.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                line = _decode(raw)
            except msgspec.DecodeError:
                line = None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                errors.append(BatchError(code="invalid_json_line", line=number,
                                         message="This line is not a valid request line."))
                continue
            parsed.append(line)
        if not parsed and not errors:
            errors.append(BatchError(code="empty_file", message="The batch input is empty."))
        if errors:
            batch.status = "failed"
            batch.errors = errors
            batch.times["failed_at"] = now
            return False
        batch.requests = parsed
        batch.counts = RequestCounts(total=len(parsed))
        return True

    def _run(self, batch: MemoryBatch, abort: str | None) -> None:
        out, err = bytearray(), bytearray()
        ok = failed = prompt_tokens = completion_tokens = 0
        for line in batch.requests:
            custom_id: str = line["custom_id"]
            body = line.get("body") if isinstance(line.get("body"), dict) else {}
            assert isinstance(body, dict)
            if abort is not None:
                err += _encode(_abort_line(custom_id, abort)) + b"\n"
                failed += 1
            elif body.get("fail") is True or custom_id.startswith("fail"):
                err += _encode(_failed_line(custom_id)) + b"\n"
                failed += 1
            else:
                result, pt, ct = _success_line(custom_id, body)
                out += _encode(result) + b"\n"
                ok += 1
                prompt_tokens += pt
                completion_tokens += ct
        batch.output, batch.error = bytes(out), bytes(err)
        batch.counts = RequestCounts(total=len(batch.requests), completed=ok, failed=failed)
        batch.usage = Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens,
                            total_tokens=prompt_tokens + completion_tokens)


UPSTREAMS: dict[str, MemoryUpstream] = {}
_registry_lock = threading.Lock()


def upstream(deployment_id: str) -> MemoryUpstream:
    """The upstream of one deployment (created on first use)."""
    with _registry_lock:
        found = UPSTREAMS.get(deployment_id)
        if found is None:
            found = UPSTREAMS[deployment_id] = MemoryUpstream(deployment_id)
        return found


def reset() -> None:
    """Forget every upstream (between tests)."""
    with _registry_lock:
        UPSTREAMS.clear()


# -- the providers -------------------------------------------------------------------------------


class MemoryParams(ProviderParams, kw_only=True):
    min_requests: int = 1
    max_requests: int = 50_000
    max_bytes: int = 200 << 20
    endpoints: list[str] | None = None  # None: every endpoint
    cancel: bool = True
    delete: bool = True

    def __post_init__(self) -> None:
        if self.min_requests < 1 or self.max_requests < self.min_requests:
            raise ValueError("need 1 <= min_requests <= max_requests")


class MemoryProvider(Provider):
    """File input: the core copies each upload here with `put_input`."""

    name = "memory"
    Params: ClassVar[type[ProviderParams]] = MemoryParams
    identity: ClassVar[tuple[str, ...]] = ("model", "api_base")
    input_mode: ClassVar[str] = "file"

    @property
    def params(self) -> MemoryParams:
        params = self.deployment.params
        assert isinstance(params, MemoryParams)
        return params

    @property
    def upstream(self) -> MemoryUpstream:
        return upstream(self.deployment.id)

    def enter(self, operation: str, argument: str) -> MemoryUpstream:
        up = self.upstream
        up.enter(operation, argument, self.params.api_key)
        return up

    def capabilities(self) -> Capabilities:
        p = self.params
        return Capabilities(
            input="inline" if self.input_mode == "inline" else "file",
            endpoints=frozenset(p.endpoints) if p.endpoints is not None else ALL_ENDPOINTS,
            min_requests=p.min_requests,
            max_requests=p.max_requests,
            max_bytes=p.max_bytes,
            cancel=p.cancel,
            delete=p.delete and self.input_mode == "file",
        )

    def rewrite(self) -> LineRewrite:
        return RenameModel(self.deployment.model)

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        up = self.enter("put_input", name)
        data = b"".join([chunk async for chunk in content])
        return up.store_input(data, name)

    async def delete_input(self, input_id: str) -> None:
        if not self.params.delete:
            raise UnsupportedOperation("delete files")
        self.enter("delete_input", input_id).delete_input(input_id)

    def check_suitable(self, job: Submission) -> None:
        caps = self.capabilities()
        if job.endpoint not in caps.endpoints:
            raise Unsuitable(f"endpoint {job.endpoint} is not served here")
        if job.request_count < caps.min_requests:
            raise Unsuitable(f"{job.request_count} requests; at least {caps.min_requests}")

    async def submit(self, job: Submission) -> Batch:
        up = self.enter("submit", job.input_id or job.batch_id)
        self.check_suitable(job)
        if job.input_id is None:
            raise UpstreamNotFound("no input id given to a file-input deployment")
        content = up.inputs.get(job.input_id)
        if content is None:
            raise UpstreamNotFound(f"no input {job.input_id}", status=404)
        return _report(up.create(job, content))

    async def poll(self, batch_id: str) -> Batch:
        return _report(self.enter("poll", batch_id).poll(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        if not self.params.cancel:
            raise UnsupportedOperation("cancel batches")
        return _report(self.enter("cancel", batch_id).cancel(batch_id))

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        data = self.enter("results", f"{batch_id}:{which}").result(batch_id, which)
        return _chunks(data)


class InlineMemoryProvider(MemoryProvider):
    """Inline input: `submit` reads the input the gateway kept (`Submission.open_input`)."""

    name = "memory_inline"
    input_mode: ClassVar[str] = "inline"

    def rewrite(self) -> LineRewrite:
        model = self.deployment.model

        def to_native(line: dict[str, Any]) -> dict[str, Any]:
            body = line["body"]
            if body.get("n", 1) != 1:
                raise InvalidRequestLine("body.n", "this deployment returns one choice only")
            body["model"] = model
            return line

        return MapLines(to_native)

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        raise UnsupportedOperation("store input files")

    async def delete_input(self, input_id: str) -> None:
        raise UnsupportedOperation("delete files")

    async def submit(self, job: Submission) -> Batch:
        up = self.enter("submit", job.batch_id)
        self.check_suitable(job)
        received = bytearray()
        async for line in lines(job.open_input()):
            received += line + b"\n"
        return _report(up.create(job, bytes(received)))


class _MemoryPlugin:
    """Pass `memory_plugin` in `extra_plugins` to register both providers."""

    @hookimpl
    def register_providers(self) -> list[type[Provider]]:
        return [MemoryProvider, InlineMemoryProvider]


memory_plugin = _MemoryPlugin()


# -- building answers ----------------------------------------------------------------------------


def _report(batch: MemoryBatch) -> Batch:
    ended = batch.times.get("completed_at") or batch.times.get("cancelled_at") or \
        batch.times.get("expired_at")
    return Batch(
        id=batch.id,
        status=batch.status,
        request_counts=msgspec.structs.replace(batch.counts) if batch.counts else None,
        usage=msgspec.structs.replace(batch.usage) if batch.usage else None,
        errors=list(batch.errors) if batch.errors else None,
        output=ResultFile(bytes=len(batch.output), created_at=ended) if batch.output else None,
        error=ResultFile(bytes=len(batch.error), created_at=ended) if batch.error else None,
        expires_at=batch.created_at + 86_400,
        **batch.times,
    )


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _CHUNK):
        yield data[start : start + _CHUNK]


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
    return 8 + chars // 4


def _success_line(custom_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    content = "echo:" + custom_id
    prompt, completion = _prompt_tokens(body), 1 + len(content) // 4
    response = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }
    line = {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "req_" + secrets.token_hex(12),
                     "body": response},
        "error": None,
    }
    return line, prompt, completion


def _failed_line(custom_id: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": {
            "status_code": 400,
            "request_id": "req_" + secrets.token_hex(12),
            "body": {"error": {"message": "Failure requested by the test.",
                               "type": "invalid_request_error", "param": None, "code": None}},
        },
        "error": None,
    }


_ABORTS = {
    "batch_cancelled": "This request could not be executed because the batch was cancelled.",
    "batch_expired": "This request could not be executed before the completion window expired.",
}


def _abort_line(custom_id: str, code: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": _ABORTS[code]},
    }
