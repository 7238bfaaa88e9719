"""Shared by the Azure adapter's tests (conftest.py re-exports the fixtures): fake Azure
resources (and a fake Entra ID) on loopback, providers pointed at them, and the gateway in
front of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from gateway_azure import AzureProvider

from gateway import TERMINAL, Batch, ProviderContext, Submission
from gateway.testing.conformance import deployment_for, native_lines
from gateway.testing.fake_azure import FakeAzure, FakeEntra
from gateway.testing.memory import MemoryState
from gateway.testing.servers import RunningGateway as Gateway
from gateway.testing.servers import ServerThread, gateway_config

GROUP = "gpt-4o-batch"
ENDPOINT = "/v1/chat/completions"
# Short waits: the fake finishes processing a file after a few polls.
FAST = {"timeout": 5, "file_poll_interval": 0.01, "file_poll_max_interval": 0.05,
        "file_ready_timeout": 5}


class AzureResource:
    """One fake Azure OpenAI resource holding one Global-Batch deployment."""

    def __init__(self, deployment: str, api_key: str | None = "azure-key", **fake: Any) -> None:
        self.deployment = deployment
        self.api_key = api_key
        self.fake = FakeAzure(api_key=api_key, deployments={deployment}, **fake)
        self.server = ServerThread(self.fake.app).start()

    @property
    def url(self) -> str:
        return self.server.url

    def params(self, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"model": f"azure/{self.deployment}", "api_base": self.url,
                                  **FAST}
        if self.api_key:
            params["api_key"] = self.api_key
        return {**params, **extra}

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def resources() -> Iterator[Callable[..., AzureResource]]:
    made: list[AzureResource] = []

    def make(deployment: str = "gpt-4o-mini-batch", **kwargs: Any) -> AzureResource:
        made.append(AzureResource(deployment, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def entra() -> Iterator[tuple[FakeEntra, str]]:
    fake = FakeEntra()
    with ServerThread(fake.app) as server:
        yield fake, server.url


def entra_params(entra: tuple[FakeEntra, str]) -> dict[str, Any]:
    fake, url = entra
    return {"tenant_id": fake.tenant_id, "client_id": fake.client_id,
            "client_secret": fake.client_secret, "azure_authority_host": url}


def provider_for(
    http: aiohttp.ClientSession, params: dict[str, Any], group: str = GROUP
) -> AzureProvider:
    """A provider for raw `litellm_params`, converted as the config loader does."""
    deployment = deployment_for(AzureProvider, params, model_name=group)
    return AzureProvider(deployment, ProviderContext(http=http, state=MemoryState()))


def request_line(custom_id: str, model: str = GROUP, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": model, "messages": [{"role": "user", "content": f"hi {custom_id}"}],
                 **body},
    }


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def put_lines(provider: AzureProvider, n: int = 2, **body: Any) -> str:
    """`put_input` of `n` request lines as the core would write them to this deployment."""
    data = native_lines(provider, [request_line(f"r{i}", **body) for i in range(n)])
    return await provider.put_input(chunks(data), "file-gateway.jsonl")


def job(input_id: str, request_count: int = 2, endpoint: str = ENDPOINT,
        metadata: dict[str, str] | None = None) -> Submission:
    """A Submission for a file-mode provider (the input is already upstream)."""

    async def no_input() -> AsyncIterator[bytes]:
        raise AssertionError("a file-mode provider must not read the kept input")
        yield b""

    return Submission(batch_id="batch_gateway", file_id="file-gateway", input_id=input_id,
                      endpoint=endpoint, completion_window="24h", metadata=metadata,
                      request_count=request_count, size=0, open_input=no_input)


async def finish(provider: AzureProvider, batch_id: str, polls: int = 10) -> Batch:
    """Poll until terminal (the fake moves a batch one state per GET)."""
    for _ in range(polls):
        batch = await provider.poll(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


@pytest.fixture
def start_gateway(database_url: str) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def start(entries: list[tuple[str, dict[str, Any]]], models: list[str] | None = None
              ) -> Gateway:
        made.append(Gateway(gateway_config(entries, database_url), models or [GROUP]))
        return made[-1]

    yield start
    for g in made:
        g.stop()
