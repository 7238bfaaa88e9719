"""The adapter passes the same contract suite as every file-input adapter, on both Azure API
surfaces and with both kinds of credential."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from adapters.azure.tests.azure_support import (
    AzureResource,
    entra_params,
    provider_for,
    request_line,
)
from gateway.testing.conformance import ContractEnv, FileProviderContract
from gateway.testing.fake_azure import FakeEntra

DEPLOYMENT = "gpt-4o-mini-contract"


class TestAzureContract(FileProviderContract):
    @pytest.fixture(params=["2024-10-21", "v1", "entra"])
    async def contract_env(
        self,
        request: pytest.FixtureRequest,
        resources: Callable[..., AzureResource],
        entra: tuple[FakeEntra, str],
        http: aiohttp.ClientSession,
    ) -> AsyncIterator[ContractEnv]:
        mode = request.param
        resource = resources(DEPLOYMENT, processing_polls=2, entra=entra[0])
        extra: dict[str, Any] = {"api_version": "v1"} if mode == "v1" else {}
        if mode == "entra":
            params = {**resource.params(), **entra_params(entra)}
            del params["api_key"]
        else:
            params = resource.params(**extra)
        provider = provider_for(http, params)
        bad = provider_for(http, {**resource.params(**extra), "api_key": "wrong-key"})
        lines = [request_line(f"req-{i}") for i in range(3)]
        lines[1]["body"]["metadata"] = {"fake_fail": "true"}  # one line lands in the error file
        yield ContractEnv(provider=provider, lines=lines, bad_provider=bad)
