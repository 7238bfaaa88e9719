"""The conformance suite (contract v2) every adapter must pass.

Subclass the suite for the adapter's input mode in its tests (name it `Test...` so pytest
collects it) and provide an async fixture `contract_env` yielding a `ContractEnv`: a provider
for one deployment pointed at a running fake upstream, a provider with a refused credential on
the same upstream, and valid OpenAI batch request lines.

    class TestMyContract(InlineProviderContract):   # or FileProviderContract
        @pytest.fixture
        async def contract_env(self, http):
            with ServerThread(fake.app) as server:
                ctx = ProviderContext(http=http, state=MemoryState())
                good = deployment_for(MyProvider, {"model": "my/model", "api_base": server.url,
                                                   "api_key": "k"})
                bad = deployment_for(MyProvider, {..., "api_key": "wrong"})
                yield ContractEnv(provider=MyProvider(good, ctx), lines=lines,
                                  bad_provider=MyProvider(bad, ctx))

The suites are provider-neutral: they call only `Provider` methods, with native ids, and check
the shapes the contract promises (a typed `Batch`, results as OpenAI batch-output JSONL). Fakes
are expected to advance a batch by one state per `poll` (set `poll_interval` for fakes that
advance on a clock instead). Nothing here skips: a suite that does not apply to an adapter is
the wrong suite for it. Put a line that fails upstream into `lines` to exercise error results.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from gateway import (
    ALL_ENDPOINTS,
    CHAT_COMPLETIONS,
    TERMINAL,
    Batch,
    BatchError,
    Capabilities,
    Deployment,
    MapLines,
    Provider,
    ProviderParams,
    RenameModel,
    RequestCounts,
    ResultFile,
    ResultKind,
    Submission,
    UnsupportedOperation,
    UpstreamNotFound,
    UpstreamUnavailable,
    Usage,
)

NON_TERMINAL = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
STATUSES = TERMINAL | NON_TERMINAL
# `Submission.open_input` hands the input over in pieces of this size: small and odd, so that
# pieces cut lines anywhere. An adapter must not assume a piece ends at a line break (use
# `gateway.lines` to split).
INPUT_CHUNK = 97
_TIMES = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
          "expired_at", "cancelling_at", "cancelled_at")


@dataclass
class ContractEnv:
    provider: Provider  # one deployment, pointed at a running fake upstream
    lines: list[dict[str, Any]]  # valid OpenAI batch request lines (custom_id, method, url, body)
    bad_provider: Provider | None = None  # same upstream, a refused credential (required)
    max_polls: int = 30
    poll_interval: float = 0.0  # seconds between polls; 0 for fakes that advance per poll
    # A native batch id that exists nowhere upstream; override when the id syntax differs.
    missing_batch_id: str = "batch_contract_missing_000000"
    metadata: dict[str, str] = field(default_factory=lambda: {"suite": "conformance"})


# -- helpers adapter tests may reuse -------------------------------------------------------------


def deployment_for(
    cls: type[Provider], raw_params: Mapping[str, Any], model_name: str = "group"
) -> Deployment:
    """A Deployment as the config loader builds it: `raw_params` (an entry's `litellm_params`,
    with `model: "<prefix>/<model>"`) converted to `cls.Params`."""
    params = msgspec.convert(dict(raw_params), type=cls.Params, strict=False)
    prefix, _, model = params.model.partition("/")
    return Deployment(
        id="contract",
        model_name=model_name,
        provider=prefix,
        model=model,
        params=params,
        model_info={"mode": "batch"},
    )


def native_lines(provider: Provider, lines: list[dict[str, Any]]) -> bytes:
    """The deployment's copy of `lines` as the core makes it: each line through `rewrite()`,
    compact JSON, newline-terminated."""
    rewrite = provider.rewrite()
    out = bytearray()
    for line in lines:
        native: Any = copy.deepcopy(line)
        if isinstance(rewrite, RenameModel):
            native["body"]["model"] = rewrite.model
        else:
            native = rewrite.to_native(native)
        out += json.dumps(native, separators=(",", ":")).encode() + b"\n"
    return bytes(out)


def encoded(lines: list[dict[str, Any]]) -> bytes:
    """`lines` as a client uploads them."""
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def byte_stream(data: bytes, chunk: int = INPUT_CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


def submission(
    env: ContractEnv,
    input_id: str | None = None,
    request_lines: list[dict[str, Any]] | None = None,
    *,
    file_id: str | None = None,
) -> Submission:
    """What the core passes to `submit` for `request_lines` (default `env.lines`)."""
    lines = env.lines if request_lines is None else request_lines
    data = native_lines(env.provider, lines)
    url = lines[0].get("url") if lines else None
    return Submission(
        batch_id="batch_contract" + secrets.token_hex(8),
        file_id=file_id or "file-contract" + secrets.token_hex(8),
        input_id=input_id,
        endpoint=url if isinstance(url, str) else CHAT_COMPLETIONS,
        completion_window="24h",
        metadata=dict(env.metadata),
        request_count=len(lines),
        size=len(encoded(lines)),
        open_input=lambda: byte_stream(data),
    )


async def put_copy(
    provider: Provider, lines: list[dict[str, Any]], file_id: str
) -> str:
    """`put_input` of the deployment's copy of `lines`, as the core does at upload."""
    input_id = await provider.put_input(
        byte_stream(native_lines(provider, lines)), f"{file_id}.jsonl"
    )
    assert isinstance(input_id, str) and input_id, f"put_input returned {input_id!r}, not an id"
    return input_id


async def start_batch(
    env: ContractEnv, request_lines: list[dict[str, Any]] | None = None
) -> Batch:
    """Submit a batch the way the core does for this deployment's input mode: file mode puts
    the copy first and submits with its id; inline mode submits with `input_id=None`."""
    lines = env.lines if request_lines is None else request_lines
    file_id = "file-contract" + secrets.token_hex(8)
    input_id = None
    if env.provider.capabilities().input == "file":
        input_id = await put_copy(env.provider, lines, file_id)
    created = await env.provider.submit(submission(env, input_id, lines, file_id=file_id))
    check_batch(created)
    return created


async def wait_for_batch(env: ContractEnv, batch_id: str) -> Batch:
    """`poll` until the batch is terminal; checks every answer, and that a terminal status
    is final."""
    seen: list[str] = []
    for _ in range(env.max_polls):
        batch = await env.provider.poll(batch_id)
        check_batch(batch)
        assert batch.id == batch_id, f"poll({batch_id!r}) answered batch {batch.id!r}"
        seen.append(batch.status)
        if batch.status in TERMINAL:
            again = await env.provider.poll(batch_id)
            assert again.status == batch.status, f"terminal status changed: {seen}, {again}"
            return batch
        await asyncio.sleep(env.poll_interval)
    raise AssertionError(f"batch {batch_id} not terminal after {env.max_polls} polls: {seen}")


async def run_batch(
    env: ContractEnv, request_lines: list[dict[str, Any]] | None = None
) -> Batch:
    """Submit a batch (see `start_batch`) and poll it to a terminal status."""
    created = await start_batch(env, request_lines)
    return await wait_for_batch(env, created.id)


async def read_result_bytes(provider: Provider, batch_id: str, which: ResultKind) -> bytes:
    chunks = await provider.results(batch_id, which)
    return b"".join([chunk async for chunk in chunks])


def parse_results(raw: bytes, which: str = "results") -> list[dict[str, Any]]:
    """Parse OpenAI batch-output JSONL, checking every line's shape."""
    out = []
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as e:
            raise AssertionError(f"{which} line {number} is not JSON: {text[:200]!r}") from e
        check_output_line(line, number)
        out.append(line)
    return out


async def read_results(
    provider: Provider, batch_id: str, which: ResultKind
) -> list[dict[str, Any]]:
    """A batch's `output` or `errors` as parsed, checked OpenAI batch-output lines."""
    return parse_results(await read_result_bytes(provider, batch_id, which), which)


def check_batch(batch: Any) -> None:
    """A `Batch` as the contract promises it."""
    assert isinstance(batch, Batch), f"expected a gateway.Batch, got {type(batch).__name__}"
    assert isinstance(batch.id, str) and batch.id, f"batch without a native id: {batch}"
    assert batch.status in STATUSES, f"not an OpenAI batch status: {batch.status!r}"
    counts = batch.request_counts
    if counts is not None:
        assert isinstance(counts, RequestCounts), f"request_counts: {counts!r}"
        values = (counts.total, counts.completed, counts.failed)
        assert all(isinstance(v, int) and v >= 0 for v in values), f"request_counts {counts}"
        if counts.total:
            assert counts.completed + counts.failed <= counts.total, f"request_counts {counts}"
    if batch.usage is not None:
        assert isinstance(batch.usage, Usage), f"usage: {batch.usage!r}"
        for v in (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens):
            assert v is None or (isinstance(v, int) and v >= 0), f"usage {batch.usage}"
    if batch.errors is not None:
        assert isinstance(batch.errors, list), f"errors: {batch.errors!r}"
        assert all(isinstance(e, BatchError) for e in batch.errors), f"errors {batch.errors}"
    for kind, result in (("output", batch.output), ("error", batch.error)):
        if result is None:
            continue
        assert isinstance(result, ResultFile), f"{kind}: {result!r} is not a ResultFile"
        assert batch.status in TERMINAL, f"a {batch.status} batch reports an {kind} file"
        assert result.bytes is None or (isinstance(result.bytes, int) and result.bytes >= 0)
    for name in _TIMES:
        value = getattr(batch, name)
        assert value is None or isinstance(value, int), f"{name}: {value!r} is not epoch seconds"


def check_output_line(line: Any, number: int = 0) -> None:
    """One OpenAI batch-output line: `custom_id` and exactly one of `response` / `error`."""
    where = f"output line {number}"
    assert isinstance(line, dict), f"{where} is not an object"
    assert isinstance(line.get("custom_id"), str), f"{where} has no custom_id: {line}"
    assert line.get("id") is None or isinstance(line["id"], str), f"{where}: id {line['id']!r}"
    response, error = line.get("response"), line.get("error")
    assert (response is None) != (error is None), f"{where}: needs a response or an error: {line}"
    if response is not None:
        assert isinstance(response, dict), f"{where}: response must be an object"
        assert isinstance(response.get("status_code"), int), f"{where}: no response.status_code"
        assert isinstance(response.get("body"), dict), f"{where}: response.body must be an object"
    else:
        assert isinstance(error, dict), f"{where}: error must be an object"
        assert "message" in error or "code" in error, f"{where}: error without code/message"


def succeeded(line: dict[str, Any]) -> bool:
    response = line.get("response")
    return isinstance(response, dict) and 200 <= response.get("status_code", 0) < 300


def bad(env: ContractEnv) -> Provider:
    if env.bad_provider is None:
        pytest.fail("ContractEnv.bad_provider is required (a refused credential)")
    return env.bad_provider


class InputFailed(Exception):
    """Raised by a test's `open_input`."""


class _Opened:
    """Wraps `Submission.open_input`, counting openings and whether one was read to the end."""

    def __init__(self, open_input: Callable[[], AsyncIterator[bytes]]) -> None:
        self.open_input = open_input
        self.opened = 0
        self.read_to_end = 0

    def __call__(self) -> AsyncIterator[bytes]:
        self.opened += 1
        return self._read()

    async def _read(self) -> AsyncIterator[bytes]:
        async for chunk in self.open_input():
            yield chunk
        self.read_to_end += 1


class _Counted:
    """A byte stream that remembers whether it was read to the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = False

    async def stream(self) -> AsyncIterator[bytes]:
        async for chunk in byte_stream(self.data):
            yield chunk
        self.done = True


# -- the suites ----------------------------------------------------------------------------------


class FileInputContract:
    """Input mode "file": the core writes a copy at upload (`put_input`) and submits with its
    native id; copies can be deleted."""

    async def test_capabilities_say_file(self, contract_env: ContractEnv) -> None:
        caps = contract_env.provider.capabilities()
        assert caps.input == "file", f"this suite is for file input; capabilities say {caps.input}"

    async def test_put_input_reads_all_and_returns_id(self, contract_env: ContractEnv) -> None:
        env = contract_env
        content = _Counted(native_lines(env.provider, env.lines))
        input_id = await env.provider.put_input(content.stream(), "file-contract0.jsonl")
        assert isinstance(input_id, str) and input_id, f"put_input returned {input_id!r}"
        assert content.done, "put_input returned before reading its content to the end"

    async def test_submit_with_input_id_runs(self, contract_env: ContractEnv) -> None:
        env = contract_env
        file_id = "file-contract" + secrets.token_hex(8)
        input_id = await put_copy(env.provider, env.lines, file_id)
        created = await env.provider.submit(submission(env, input_id, file_id=file_id))
        check_batch(created)
        assert created.status in NON_TERMINAL | {"completed"}, f"submit answered {created}"
        final = await wait_for_batch(env, created.id)
        assert final.status == "completed", f"expected completed, got {final}"

    async def test_delete_input(self, contract_env: ContractEnv) -> None:
        env = contract_env
        input_id = await put_copy(env.provider, env.lines, "file-contract1")
        if not env.provider.capabilities().delete:
            with pytest.raises(UnsupportedOperation):
                await env.provider.delete_input(input_id)
            return
        await env.provider.delete_input(input_id)
        with pytest.raises(UpstreamNotFound):
            await env.provider.delete_input(input_id)

    async def test_put_input_bad_credentials(self, contract_env: ContractEnv) -> None:
        bad_provider = bad(contract_env)
        with pytest.raises(UpstreamUnavailable):
            await bad_provider.put_input(
                byte_stream(native_lines(bad_provider, contract_env.lines)), "bad.jsonl"
            )


class InlineInputContract:
    """Input mode "inline": `submit` gets `input_id=None` and reads the input the gateway kept
    through `Submission.open_input`."""

    async def test_capabilities_say_inline(self, contract_env: ContractEnv) -> None:
        caps = contract_env.provider.capabilities()
        assert caps.input == "inline", f"this suite is for inline input; capabilities say {caps}"

    async def test_submit_reads_open_input(self, contract_env: ContractEnv) -> None:
        env = contract_env
        job = submission(env)
        opened = _Opened(job.open_input)
        job = dataclasses.replace(job, open_input=opened)
        created = await env.provider.submit(job)
        check_batch(created)
        assert opened.opened >= 1, "submit never called Submission.open_input"
        assert opened.read_to_end >= 1, "submit never read Submission.open_input to the end"
        assert created.status in NON_TERMINAL | {"completed"}, f"submit answered {created}"
        final = await wait_for_batch(env, created.id)
        assert final.status == "completed", f"expected completed, got {final}"

    async def test_input_errors_reach_the_core(self, contract_env: ContractEnv) -> None:
        """An exception raised by `open_input` (the core's: a line this deployment cannot take,
        an unreadable kept file) must leave `submit` unchanged, not as an upstream error. Note
        that aiohttp reports an exception raised by a streamed request body as a
        `ClientConnectionError`: remember it and re-raise the original."""
        env = contract_env
        job = submission(env)
        data = native_lines(env.provider, env.lines)

        async def broken() -> AsyncIterator[bytes]:
            yield data[: max(1, len(data) // 2)]
            raise InputFailed("the input broke off")

        with pytest.raises(InputFailed):
            await env.provider.submit(dataclasses.replace(job, open_input=broken))

    async def test_submit_bad_credentials(self, contract_env: ContractEnv) -> None:
        bad_provider = bad(contract_env)
        with pytest.raises(UpstreamUnavailable):
            await bad_provider.submit(submission(contract_env))


class LifecycleContract:
    """poll / cancel, missing batches, refused credentials, construction and `aclose`."""

    async def test_poll_until_terminal(self, contract_env: ContractEnv) -> None:
        env = contract_env
        created = await start_batch(env)
        final = await wait_for_batch(env, created.id)
        assert final.id == created.id
        assert final.status == "completed", f"expected completed, got {final}"

    async def test_poll_missing_batch(self, contract_env: ContractEnv) -> None:
        with pytest.raises(UpstreamNotFound):
            await contract_env.provider.poll(contract_env.missing_batch_id)

    async def test_cancel(self, contract_env: ContractEnv) -> None:
        env = contract_env
        created = await start_batch(env)
        assert created.status not in TERMINAL, f"cancel needs a batch still running: {created}"
        if not env.provider.capabilities().cancel:
            with pytest.raises(UnsupportedOperation):
                await env.provider.cancel(created.id)
            return
        cancelled = await env.provider.cancel(created.id)
        check_batch(cancelled)
        assert cancelled.id == created.id
        assert cancelled.status in ("cancelling", "cancelled"), f"cancel answered {cancelled}"
        final = await wait_for_batch(env, created.id)
        assert final.status == "cancelled", f"expected cancelled, got {final}"

    async def test_cancel_missing_batch(self, contract_env: ContractEnv) -> None:
        env = contract_env
        expected = UpstreamNotFound if env.provider.capabilities().cancel else UnsupportedOperation
        with pytest.raises(expected):
            await env.provider.cancel(env.missing_batch_id)

    async def test_bad_credentials(self, contract_env: ContractEnv) -> None:
        # A refused credential is the admin's problem: UpstreamUnavailable (502), never a 404.
        env = contract_env
        bad_provider = bad(env)
        with pytest.raises(UpstreamUnavailable):
            await bad_provider.poll(env.missing_batch_id)
        with pytest.raises(UpstreamUnavailable):
            await bad_provider.results(env.missing_batch_id, "output")
        if bad_provider.capabilities().cancel:
            with pytest.raises(UpstreamUnavailable):
                await bad_provider.cancel(env.missing_batch_id)

    async def test_new_instance_and_aclose(self, contract_env: ContractEnv) -> None:
        """The core builds providers at start-up (no I/O in `__init__`) and closes them at
        shutdown; `aclose` must work on a provider that was used and on one that was not."""
        env = contract_env
        cls = type(env.provider)
        unused_provider = cls(env.provider.deployment, env.provider.ctx)
        await unused_provider.aclose()
        used_provider = cls(env.provider.deployment, env.provider.ctx)
        with pytest.raises(UpstreamNotFound):
            await used_provider.poll(env.missing_batch_id)
        await used_provider.aclose()


class ResultsContract:
    """`results(batch_id, "output" | "errors")`: OpenAI batch-output JSONL that accounts for
    every request exactly once, raising before the first chunk."""

    async def test_results_is_a_coroutine(self, contract_env: ContractEnv) -> None:
        results = type(contract_env.provider).results
        assert inspect.iscoroutinefunction(results) and not inspect.isasyncgenfunction(results), (
            "results must be `async def` returning an async iterator (not an async generator), "
            "so that failures raise when it is awaited, before the first chunk"
        )

    async def test_completed_batch_results(self, contract_env: ContractEnv) -> None:
        env = contract_env
        batch = await run_batch(env)
        assert batch.status == "completed", f"expected completed, got {batch}"
        n = len(env.lines)
        counts = batch.request_counts
        assert counts is not None, f"a completed batch must report request_counts: {batch}"
        assert counts.total in (0, n), f"request_counts {counts} for {n} lines"
        assert counts.completed + counts.failed == n, f"request_counts {counts} for {n} lines"
        assert batch.output is not None or batch.error is not None, f"no results: {batch}"

        found: dict[str, list[dict[str, Any]]] = {}
        kinds: tuple[ResultKind, ...] = ("output", "errors")
        for kind in kinds:
            result = batch.output if kind == "output" else batch.error
            if result is None:
                # No such result: opening it raises UpstreamNotFound or gives no line.
                try:
                    absent = await read_results(env.provider, batch.id, kind)
                except UpstreamNotFound:
                    absent = []
                assert not absent, f"the batch reports no {kind} file but it has lines"
                found[kind] = []
                continue
            raw = await read_result_bytes(env.provider, batch.id, kind)
            found[kind] = parse_results(raw, kind)
            assert found[kind], f"the batch reports an {kind} file without lines"
            assert result.bytes in (None, len(raw)), (
                f"{kind}: ResultFile.bytes is {result.bytes} but {len(raw)} bytes were read"
            )
            again = await read_results(env.provider, batch.id, kind)
            assert sorted(x["custom_id"] for x in again) == sorted(
                x["custom_id"] for x in found[kind]
            ), f"reading {kind} twice gave different lines"

        output, errors = found["output"], found["errors"]
        expected = sorted(line["custom_id"] for line in env.lines)
        got = sorted(line["custom_id"] for line in output + errors)
        assert got == expected, "output + errors must hold every custom_id exactly once"
        assert all(succeeded(line) for line in output), "output holds a failed request"
        assert not any(succeeded(line) for line in errors), "errors holds a successful request"
        assert len(output) == counts.completed, f"{len(output)} successes, counts say {counts}"
        assert len(errors) == counts.failed, f"{len(errors)} failures, counts say {counts}"

    async def test_results_of_missing_batch(self, contract_env: ContractEnv) -> None:
        env = contract_env
        kinds: tuple[ResultKind, ...] = ("output", "errors")
        for kind in kinds:
            with pytest.raises(UpstreamNotFound):
                await env.provider.results(env.missing_batch_id, kind)

    async def test_delete_results(self, contract_env: ContractEnv) -> None:
        """After `delete_results(batch, kind)` that kind is either kept (read as before) or
        gone (`UpstreamNotFound`); the other kind is untouched; a second delete is fine."""
        env = contract_env
        batch = await run_batch(env)

        async def custom_ids(kind: ResultKind) -> list[str] | None:
            try:
                return sorted(x["custom_id"] for x in await read_results(env.provider,
                                                                         batch.id, kind))
            except UpstreamNotFound:
                return None

        kinds: tuple[ResultKind, ...] = ("output", "errors")
        before = {kind: await custom_ids(kind) for kind in kinds}
        for _ in range(2):
            await env.provider.delete_results(batch.id, "output")
        assert await custom_ids("output") in (before["output"], None), (
            "after delete_results the output must read as before or be gone")
        assert await custom_ids("errors") == before["errors"], (
            "delete_results of the output changed the errors")


class RewriteContract:
    """What a provider declares: Params, identity, capabilities, line rewrite."""

    async def test_contract_env(self, contract_env: ContractEnv) -> None:
        env = contract_env
        assert env.lines, "ContractEnv.lines must hold at least one request line"
        ids = [line["custom_id"] for line in env.lines]
        assert len(set(ids)) == len(ids), "ContractEnv.lines: custom_ids must be unique"
        bad_provider = bad(env)
        assert type(bad_provider) is type(env.provider), "bad_provider must be the same class"

    async def test_declarations(self, contract_env: ContractEnv) -> None:
        provider = contract_env.provider
        cls = type(provider)
        assert isinstance(cls.name, str) and cls.name, "Provider.name must be a non-empty str"
        assert issubclass(cls.Params, ProviderParams), "Params must subclass ProviderParams"
        assert isinstance(provider.deployment.params, cls.Params), (
            "deployment.params must be the provider's Params (use deployment_for)"
        )
        fields = set(cls.Params.__struct_fields__)
        assert cls.identity and all(key in fields for key in cls.identity), (
            f"identity {cls.identity} must name fields of {cls.Params.__name__}"
        )

    async def test_rewrite(self, contract_env: ContractEnv) -> None:
        env = contract_env
        rewrite = env.provider.rewrite()
        assert isinstance(rewrite, RenameModel | MapLines), f"rewrite() returned {rewrite!r}"
        if isinstance(rewrite, RenameModel):
            assert isinstance(rewrite.model, str) and rewrite.model
        data = native_lines(env.provider, env.lines)
        assert data.endswith(b"\n")
        native = [json.loads(text) for text in data.splitlines()]
        assert len(native) == len(env.lines), "rewrite must give one line per request line"
        if isinstance(rewrite, RenameModel):
            for line in native:
                assert line["body"]["model"] == rewrite.model

    async def test_capabilities_consistent(self, contract_env: ContractEnv) -> None:
        env = contract_env
        caps = env.provider.capabilities()
        assert isinstance(caps, Capabilities), f"capabilities() returned {caps!r}"
        assert caps.input in ("file", "inline")
        assert 1 <= caps.min_requests <= caps.max_requests, f"min/max requests: {caps}"
        assert caps.max_bytes > 0, f"max_bytes: {caps}"
        assert caps.endpoints, "capabilities().endpoints is empty"
        assert caps.endpoints <= ALL_ENDPOINTS, f"unknown endpoints: {caps.endpoints}"
        assert caps.min_requests <= len(env.lines) <= caps.max_requests, (
            f"ContractEnv.lines ({len(env.lines)}) must fit min/max requests of {caps}"
        )
        for line in env.lines:
            assert line["url"] in caps.endpoints, f"{line['url']} not in {caps.endpoints}"
        assert len(native_lines(env.provider, env.lines)) <= caps.max_bytes


class RecoveryContract:
    """`find_inputs` / `find_batches`, what the crash janitor asks a deployment: optional (an
    adapter without them raises `UnsupportedOperation`), but exact when present: they find
    what was made, and nothing else."""

    async def test_find_inputs(self, contract_env: ContractEnv) -> None:
        env = contract_env
        since = int(time.time()) - 60
        file_id = "file-contract" + secrets.token_hex(8)
        try:
            found = await env.provider.find_inputs(f"{file_id}.jsonl", since)
        except UnsupportedOperation:
            return
        assert found == [], f"find_inputs found {found} for a name nothing was stored under"
        if env.provider.capabilities().input != "file":
            return
        input_id = await put_copy(env.provider, env.lines, file_id)
        await put_copy(env.provider, env.lines, file_id + "other")
        found = await env.provider.find_inputs(f"{file_id}.jsonl", since)
        assert found == [input_id], f"find_inputs found {found}, not the copy {input_id}"

    async def test_find_batches(self, contract_env: ContractEnv) -> None:
        env = contract_env
        since = int(time.time()) - 60
        file_id = "file-contract" + secrets.token_hex(8)
        input_id = None
        if env.provider.capabilities().input == "file":
            input_id = await put_copy(env.provider, env.lines, file_id)
        job = submission(env, input_id, file_id=file_id)
        try:
            assert await env.provider.find_batches(job.batch_id, input_id, since) == []
        except UnsupportedOperation:
            return
        created = await env.provider.submit(job)
        await start_batch(env)  # another batch, of another file: not to be found
        found = await env.provider.find_batches(job.batch_id, input_id, since)
        assert found == [created.id], f"find_batches found {found}, not {created.id}"


class FileProviderContract(
    FileInputContract, LifecycleContract, ResultsContract, RewriteContract, RecoveryContract
):
    """Everything a file-input adapter must pass."""


class InlineProviderContract(
    InlineInputContract, LifecycleContract, ResultsContract, RewriteContract, RecoveryContract
):
    """Everything an inline-input adapter must pass."""
