"""Shared by the Anthropic adapter's tests: request lines, providers built from raw
`litellm_params` as the config loader does, pointed at a running FakeAnthropic.

The gateway's fixtures (`http`, `database_url`, ...) come from its pytest plugin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from gateway_anthropic import AnthropicProvider
from gateway_anthropic.testing import FakeAnthropic

from gateway import ProviderContext
from gateway.testing.conformance import deployment_for
from gateway.testing.memory import MemoryState
from gateway.testing.servers import ServerThread

KEY = "sk-ant-test-key"
MODEL = "claude-sonnet-4-5"
GROUP = "claude-batch"


def request_line(custom_id: str, text: str | None = None, **body: Any) -> dict[str, Any]:
    """An OpenAI chat batch line for GROUP; `body` overrides (`messages` included)."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": GROUP,
            "messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": text or f"Say hello to {custom_id}"}],
            "max_tokens": 100,
            **body,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def raw_params(url: str, **extra: Any) -> dict[str, Any]:
    return {"model": f"anthropic/{MODEL}", "api_base": url, "api_key": KEY, "timeout": 10,
            **extra}


def provider_for(url: str, http: aiohttp.ClientSession, state: MemoryState | None = None,
                 **extra: Any) -> AnthropicProvider:
    deployment = deployment_for(AnthropicProvider, raw_params(url, **extra), model_name=GROUP)
    return AnthropicProvider(deployment, ProviderContext(http=http, state=state or MemoryState()))


class Upstream:
    """A FakeAnthropic running on loopback."""

    def __init__(self, **options: Any) -> None:
        self.fake = FakeAnthropic(api_key=KEY, **options)
        self.server = ServerThread(self.fake.app).start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.stop()


@pytest.fixture
def fake(upstream: Upstream) -> FakeAnthropic:
    return upstream.fake


@pytest.fixture
def provider(upstream: Upstream, http: aiohttp.ClientSession) -> AnthropicProvider:
    return provider_for(upstream.url, http)
