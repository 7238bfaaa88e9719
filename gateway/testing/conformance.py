"""The contract suite every adapter must pass.

Subclass `ProviderContract` in an adapter's tests (name it `Test...` so pytest collects it) and
provide an async fixture `contract_env` that yields a `ContractEnv`: a provider instance for one
deployment, pointed at a running fake upstream, plus valid OpenAI batch request lines.

    class TestMyContract(ProviderContract):
        @pytest.fixture
        async def contract_env(self):
            with ServerThread(fake.app) as server:
                async with aiohttp.ClientSession() as http:
                    yield ContractEnv(provider=MyProvider(deployment, http), lines=lines)

The suite is provider-neutral: it speaks only the `Provider` methods, native ids and the OpenAI
shapes the contract promises (`ProviderBatch` normalised to the OpenAI Batch object, file
content in OpenAI batch-output format). Fakes are expected to advance a batch by one state per
`retrieve_batch`; set `poll_interval` for fakes that advance on a clock instead.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.errors import UnsupportedOperation, UpstreamNotFound, UpstreamUnavailable
from gateway.provider import Provider, ProviderBatch, ProviderFile

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
NON_TERMINAL = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
# File states that mean "not usable yet" (Azure uploads start `pending`).
FILE_PENDING = frozenset({"pending", "uploaded", "running"})
ENDPOINT = "/v1/chat/completions"


@dataclass
class ContractEnv:
    provider: Provider  # instance for one deployment, pointed at a running fake upstream
    lines: list[dict[str, Any]]  # valid OpenAI batch request lines (custom_id, method, url, body)
    bad_provider: Provider | None = None  # same upstream, wrong credentials (optional)
    max_polls: int = 30
    poll_interval: float = 0.0  # seconds between polls; 0 for fakes that advance per retrieve
    # Native ids that exist nowhere upstream; override when the provider's id syntax differs.
    missing_file_id: str = "file-contractMissing0000000000"
    missing_batch_id: str = "batch_contract_missing_000000"
    metadata: dict[str, str] = field(default_factory=lambda: {"suite": "conformance"})


# -- helpers adapter tests may reuse -------------------------------------------------------------


def prepared_jsonl(provider: Provider, lines: list[dict[str, Any]]) -> bytes:
    """The request file as the core would upload it: every line through `prepare_line`."""
    out = bytearray()
    for line in lines:
        prepared = provider.prepare_line(copy.deepcopy(line))
        out += json.dumps(prepared, separators=(",", ":")).encode() + b"\n"
    return bytes(out)


async def byte_stream(data: bytes, chunk: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def upload_lines(
    env: ContractEnv, lines: list[dict[str, Any]] | None = None, filename: str = "contract.jsonl"
) -> tuple[ProviderFile, bytes]:
    data = prepared_jsonl(env.provider, env.lines if lines is None else lines)
    uploaded = await env.provider.upload_file(byte_stream(data), filename)
    return uploaded, data


async def wait_for_file(env: ContractEnv, file_id: str) -> ProviderFile:
    """Poll `retrieve_file` until the file is usable (Azure starts uploads `pending`)."""
    for _ in range(env.max_polls):
        f = await env.provider.retrieve_file(file_id)
        if f.status not in FILE_PENDING:
            assert f.status != "error", f"uploaded file {file_id} ended in status 'error'"
            return f
        await asyncio.sleep(env.poll_interval)
    raise AssertionError(f"file {file_id} still {f.status!r} after {env.max_polls} polls")


async def wait_for_batch(env: ContractEnv, batch_id: str) -> ProviderBatch:
    """Poll `retrieve_batch` until the batch is terminal."""
    seen: list[str] = []
    for _ in range(env.max_polls):
        batch = await env.provider.retrieve_batch(batch_id)
        check_batch_shape(batch)
        seen.append(batch["status"])
        if batch["status"] in TERMINAL:
            return batch
        await asyncio.sleep(env.poll_interval)
    raise AssertionError(f"batch {batch_id} not terminal after {env.max_polls} polls: {seen}")


async def create_batch(env: ContractEnv, file_id: str) -> ProviderBatch:
    batch = await env.provider.create_batch(
        input_file_id=file_id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata=env.metadata,
    )
    check_batch_shape(batch)
    return batch


def check_batch_shape(batch: ProviderBatch) -> None:
    assert isinstance(batch, dict), f"ProviderBatch must be a dict, got {type(batch).__name__}"
    assert isinstance(batch.get("id"), str) and batch["id"], f"batch without id: {batch}"
    assert batch.get("status") in TERMINAL | NON_TERMINAL, f"not an OpenAI status: {batch}"


def present(file_id: Any) -> str | None:
    """A batch's output/error file id, treating `""` (an OpenAI/Azure quirk) as absent."""
    return file_id if isinstance(file_id, str) and file_id else None


async def read_content(provider: Provider, file_id: str) -> bytes:
    chunks = [chunk async for chunk in await provider.file_content(file_id)]
    return b"".join(chunks)


async def output_lines(provider: Provider, file_id: str) -> list[dict[str, Any]]:
    """Parse a file's content as OpenAI batch OUTPUT lines, checking each line's shape."""
    raw = await read_content(provider, file_id)
    lines = []
    for number, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as e:
            raise AssertionError(f"line {number} of {file_id} is not JSON: {text[:200]!r}") from e
        check_output_line(line, number)
        lines.append(line)
    return lines


def check_output_line(line: Any, number: int = 0) -> None:
    where = f"output line {number}"
    assert isinstance(line, dict), f"{where} is not an object"
    assert isinstance(line.get("custom_id"), str), f"{where} has no custom_id: {line}"
    response, error = line.get("response"), line.get("error")
    assert response is not None or error is not None, f"{where} has neither response nor error"
    if response is not None:
        assert isinstance(response, dict), f"{where}: response must be an object"
        assert isinstance(response.get("status_code"), int), f"{where}: no response.status_code"
        assert isinstance(response.get("body"), dict), f"{where}: response.body must be an object"
    if error is not None and response is None:
        assert isinstance(error, dict), f"{where}: error must be an object"
        assert "message" in error or "code" in error, f"{where}: error without code/message"


def succeeded(line: dict[str, Any]) -> bool:
    response = line.get("response")
    return isinstance(response, dict) and 200 <= response.get("status_code", 0) < 300


# -- the suite -----------------------------------------------------------------------------------


class ProviderContract:
    """Subclass in an adapter's tests and provide an async fixture `contract_env` yielding a
    ContractEnv."""

    async def test_upload_and_retrieve_file(self, contract_env: ContractEnv) -> None:
        env = contract_env
        uploaded, data = await upload_lines(env)
        assert isinstance(uploaded, ProviderFile)
        assert isinstance(uploaded.id, str) and uploaded.id
        if uploaded.bytes is not None:
            assert uploaded.bytes == len(data)
        got = await wait_for_file(env, uploaded.id)
        assert got.id == uploaded.id
        if got.bytes is not None:
            assert got.bytes == len(data)
        again = await env.provider.retrieve_file(uploaded.id)
        assert again.id == uploaded.id

    async def test_batch_round_trip(self, contract_env: ContractEnv) -> None:
        env = contract_env
        assert env.lines, "ContractEnv.lines must hold at least one request line"
        uploaded, _ = await upload_lines(env)
        await wait_for_file(env, uploaded.id)

        created = await create_batch(env, uploaded.id)
        assert created["status"] in NON_TERMINAL | {"completed"}, created
        assert created.get("endpoint") in (None, ENDPOINT), created

        batch = await wait_for_batch(env, created["id"])
        assert batch["id"] == created["id"]
        assert batch["status"] == "completed", f"expected completed, got {batch}"

        counts = batch.get("request_counts") or {}
        total = len(env.lines)
        assert counts.get("total") == total, f"request_counts {counts} for {total} lines"
        assert (counts.get("completed") or 0) + (counts.get("failed") or 0) == total, counts

        output_id, error_id = present(batch.get("output_file_id")), present(
            batch.get("error_file_id")
        )
        assert output_id or error_id, f"completed batch without output or error file: {batch}"
        results: list[dict[str, Any]] = []
        if output_id:
            results += await output_lines(env.provider, output_id)
        if error_id:
            results += await output_lines(env.provider, error_id)

        expected = sorted(line["custom_id"] for line in env.lines)
        got = sorted(line["custom_id"] for line in results)
        assert got == expected, "output + error files must cover every custom_id exactly once"
        assert sum(1 for line in results if succeeded(line)) == (counts.get("completed") or 0)

    async def test_missing_objects_raise_not_found(self, contract_env: ContractEnv) -> None:
        env = contract_env
        with pytest.raises(UpstreamNotFound):
            await env.provider.retrieve_batch(env.missing_batch_id)
        with pytest.raises(UpstreamNotFound):
            await env.provider.retrieve_file(env.missing_file_id)
        # Must raise when opened, before any chunk is produced.
        with pytest.raises(UpstreamNotFound):
            await env.provider.file_content(env.missing_file_id)

    async def test_cancel(self, contract_env: ContractEnv) -> None:
        env = contract_env
        uploaded, _ = await upload_lines(env)
        await wait_for_file(env, uploaded.id)
        created = await create_batch(env, uploaded.id)
        if not env.provider.supports_cancel:
            with pytest.raises(UnsupportedOperation):
                await env.provider.cancel_batch(created["id"])
            return
        cancelled = await env.provider.cancel_batch(created["id"])
        check_batch_shape(cancelled)
        assert cancelled["status"] in ("cancelling", "cancelled"), cancelled
        final = await wait_for_batch(env, created["id"])
        assert final["status"] == "cancelled", final

    async def test_delete_file(self, contract_env: ContractEnv) -> None:
        env = contract_env
        uploaded, _ = await upload_lines(env)
        if not env.provider.supports_delete:
            with pytest.raises(UnsupportedOperation):
                await env.provider.delete_file(uploaded.id)
            return
        await env.provider.delete_file(uploaded.id)
        with pytest.raises(UpstreamNotFound):
            await env.provider.retrieve_file(uploaded.id)

    async def test_bad_credentials(self, contract_env: ContractEnv) -> None:
        env = contract_env
        bad = env.bad_provider
        if bad is None:
            pytest.fail("ContractEnv.bad_provider is required (a refused credential)")
        # A refused credential is the admin's problem: UpstreamUnavailable (502), never a 404.
        with pytest.raises(UpstreamUnavailable):
            await bad.retrieve_file(env.missing_file_id)
        with pytest.raises(UpstreamUnavailable):
            await bad.retrieve_batch(env.missing_batch_id)
        with pytest.raises(UpstreamUnavailable):
            await bad.file_content(env.missing_file_id)
        with pytest.raises(UpstreamUnavailable):
            await bad.upload_file(byte_stream(prepared_jsonl(bad, env.lines)), "bad.jsonl")
