"""The adapter passes the inline-input contract suite against FakeAnthropic: with a batch
that moves on per retrieve, and with one that moves on a clock, each with a custom_id Anthropic
does not take (re-keyed and given back) and a line that fails upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from adapters.anthropic.tests.anthropic_support import Upstream, provider_for, request_line
from gateway.testing.conformance import ContractEnv, InlineProviderContract


def contract_lines() -> list[dict[str, object]]:
    lines = [request_line(f"req-{i}") for i in range(3)]
    lines.append(request_line("order #4 / client:ä"))  # re-keyed upstream
    lines.append(request_line("req-fail", user="fail"))  # the fake's failure marker
    return lines


@pytest.fixture(scope="module", params=["per-retrieve", "clock"])
def contract_upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    options = {"processing_seconds": 0.2} if request.param == "clock" else {}
    up = Upstream(**options)
    yield up
    up.stop()


class TestAnthropicContract(InlineProviderContract):
    @pytest.fixture
    async def contract_env(
        self, contract_upstream: Upstream, http: aiohttp.ClientSession
    ) -> AsyncIterator[ContractEnv]:
        clock = contract_upstream.fake.processing_seconds is not None
        yield ContractEnv(
            provider=provider_for(contract_upstream.url, http),
            lines=contract_lines(),
            bad_provider=provider_for(contract_upstream.url, http, api_key="sk-ant-wrong"),
            missing_batch_id="msgbatch_contract_missing",
            poll_interval=0.1 if clock else 0.0,
        )
