"""The conformance suite itself: it exercises every public `Provider` method, and it passes
against the in-memory providers (file and inline input)."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from gateway import (
    Batch,
    InvalidRequestLine,
    Provider,
    ProviderContext,
    RequestCounts,
    ResultKind,
    Submission,
    Unsuitable,
    UpstreamNotFound,
    UpstreamUnavailable,
)
from gateway.testing import conformance, memory
from gateway.testing.conformance import (
    ContractEnv,
    FileProviderContract,
    InlineProviderContract,
    deployment_for,
)
from gateway.testing.memory import (
    REFUSED_KEY,
    InlineMemoryProvider,
    MemoryProvider,
    MemoryState,
)

# A provider object in the suite's source: `provider`, `env.provider`, `bad_provider`, ...
_PROVIDER_EXPR = re.compile(r"(^|[._])provider$")


def public_methods() -> set[str]:
    return {
        name
        for name, value in vars(Provider).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


def methods_used_by_suite() -> set[str]:
    tree = ast.parse(inspect.getsource(conformance))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _PROVIDER_EXPR.search(ast.unparse(node.value)):
            used.add(node.attr)
    return used


def test_public_methods_are_known() -> None:
    # If this fails, Provider changed: make sure the suite covers the new method.
    assert public_methods() == {
        "capabilities", "rewrite", "put_input", "delete_input", "submit", "poll", "cancel",
        "results", "delete_results", "find_inputs", "find_batches", "aclose",
    }


def test_suite_calls_every_public_provider_method() -> None:
    missing = public_methods() - methods_used_by_suite()
    assert not missing, f"the conformance suite never calls Provider.{sorted(missing)}"


def test_suites_have_no_skips() -> None:
    source = inspect.getsource(conformance)
    assert "pytest.skip" not in source and "skipif" not in source


def request_lines(n: int = 4) -> list[dict[str, Any]]:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "group", "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i in range(n)
    ]
    lines[-1]["custom_id"] = "fail-last"  # the memory upstream fails it: error results too
    return lines


@pytest.fixture(autouse=True)
def fresh_upstreams() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def memory_env(cls: type[Provider], http: aiohttp.ClientSession) -> ContractEnv:
    ctx = ProviderContext(http=http, state=MemoryState())
    model = f"{cls.name}/mem-model"
    return ContractEnv(
        provider=cls(deployment_for(cls, {"model": model, "api_key": "sk-mem"}), ctx),
        lines=request_lines(),
        bad_provider=cls(deployment_for(cls, {"model": model, "api_key": REFUSED_KEY}), ctx),
    )


class TestMemoryFileContract(FileProviderContract):
    @pytest.fixture
    async def contract_env(self, http: aiohttp.ClientSession) -> AsyncIterator[ContractEnv]:
        yield memory_env(MemoryProvider, http)


class TestMemoryInlineContract(InlineProviderContract):
    @pytest.fixture
    async def contract_env(self, http: aiohttp.ClientSession) -> AsyncIterator[ContractEnv]:
        yield memory_env(InlineMemoryProvider, http)


class TestMemoryWithoutCancelOrDelete(FileProviderContract):
    """The suite's other branch: a deployment that can neither cancel nor delete."""

    @pytest.fixture
    async def contract_env(self, http: aiohttp.ClientSession) -> AsyncIterator[ContractEnv]:
        ctx = ProviderContext(http=http, state=MemoryState())
        raw = {"model": "memory/m", "api_key": "k", "cancel": False, "delete": False}
        yield ContractEnv(
            provider=MemoryProvider(deployment_for(MemoryProvider, raw), ctx),
            lines=request_lines(2),
            bad_provider=MemoryProvider(
                deployment_for(MemoryProvider, {**raw, "api_key": REFUSED_KEY}), ctx
            ),
        )


# -- the memory upstream's own knobs -------------------------------------------------------------


async def test_memory_faults_and_inspection(http: aiohttp.ClientSession) -> None:
    env = memory_env(MemoryProvider, http)
    up = memory.upstream("contract")
    up.fail("put_input", UpstreamUnavailable("down"), times=2)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await conformance.put_copy(env.provider, env.lines, "file-x")
    input_id = await conformance.put_copy(env.provider, env.lines, "file-x")
    assert up.input_names[input_id] == "file-x.jsonl"
    assert up.count("put_input") == 3
    batch = await env.provider.submit(conformance.submission(env, input_id))
    assert [line["body"]["model"] for line in up.batches[batch.id].lines] == ["mem-model"] * 4
    assert up.batches[batch.id].metadata == {"suite": "conformance"}
    done = up.complete(batch.id)
    assert done.status == "completed"
    polled = await env.provider.poll(batch.id)
    assert polled.request_counts == RequestCounts(total=4, completed=3, failed=1)
    assert polled.usage is not None and polled.usage.total_tokens


async def test_inline_memory_refuses_n(http: aiohttp.ClientSession) -> None:
    env = memory_env(InlineMemoryProvider, http)
    line = request_lines(1)[0]
    line["body"]["n"] = 2
    with pytest.raises(InvalidRequestLine) as info:
        conformance.native_lines(env.provider, [line])
    assert info.value.field == "body.n"


async def test_memory_unsuitable_below_min_requests(http: aiohttp.ClientSession) -> None:
    ctx = ProviderContext(http=http, state=MemoryState())
    p = InlineMemoryProvider(
        deployment_for(InlineMemoryProvider, {"model": "memory_inline/m", "min_requests": 5}),
        ctx,
    )
    env = ContractEnv(provider=p, lines=request_lines(2))
    with pytest.raises(Unsuitable):
        await p.submit(conformance.submission(env))


async def test_memory_state() -> None:
    state = MemoryState()
    assert await state.get("k") is None
    await state.put("k", b"v")
    assert await state.get("k") == b"v"
    await state.delete("k")
    await state.delete("k")
    assert await state.get("k") is None


# -- the suite catches broken adapters -----------------------------------------------------------


class DropsALine(MemoryProvider):
    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        data = b"".join([c async for c in await super().results(batch_id, which)])
        return conformance.byte_stream(data.split(b"\n", 1)[1])


class GeneratorResults(MemoryProvider):
    async def results(  # type: ignore[override,misc]
        self, batch_id: str, which: ResultKind
    ) -> AsyncIterator[bytes]:
        async for chunk in await super().results(batch_id, which):
            yield chunk


class RefusedIsNotFound(MemoryProvider):
    async def poll(self, batch_id: str) -> Batch:
        try:
            return await super().poll(batch_id)
        except UpstreamUnavailable as e:
            raise UpstreamNotFound("hidden") from e


class IgnoresOpenInput(InlineMemoryProvider):
    async def submit(self, job: Submission) -> Batch:
        up = self.upstream
        return up.snapshot(up.create(job, b'{"custom_id":"x"}\n').id)


@pytest.mark.parametrize(
    ("cls", "suite", "test"),
    [
        (DropsALine, FileProviderContract, "test_completed_batch_results"),
        (GeneratorResults, FileProviderContract, "test_results_is_a_coroutine"),
        (RefusedIsNotFound, FileProviderContract, "test_bad_credentials"),
        (IgnoresOpenInput, InlineProviderContract, "test_submit_reads_open_input"),
        (InlineMemoryProvider, FileProviderContract, "test_capabilities_say_file"),
    ],
)
async def test_suite_fails_a_broken_adapter(
    http: aiohttp.ClientSession, cls: type[Provider], suite: type[Any], test: str
) -> None:
    env = memory_env(cls, http)
    with pytest.raises((AssertionError, UpstreamNotFound)):
        await getattr(suite(), test)(env)
