"""Shared by the Azure adapter's tests (conftest.py re-exports the fixtures): fake Azure
resources (and a fake Entra ID) on loopback, providers pointed at them, and the gateway in
front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from gateway_azure import AzureProvider

from gateway import Deployment
from gateway.testing.fake_azure import FakeAzure, FakeEntra
from gateway.testing.servers import RunningGateway as Gateway
from gateway.testing.servers import ServerThread, gateway_config

GROUP = "gpt-4o-batch"
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
    _, _, model = params["model"].partition("/")
    return AzureProvider(Deployment(id=f"dep-{model}", model_name=group, provider="azure",
                                    model=model, params=params), http)


def request_line(custom_id: str, model: str = GROUP, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"hi {custom_id}"}],
                 **body},
    }


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
