"""Fixtures for the core's tests: two fake OpenAI upstreams, the gateway in front of them on
SQLite and PostgreSQL, the master key and helpers to mint virtual keys and SDK clients."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import ServerThread, gateway_server

MASTER_KEY = "sk-master-test"
GROUP = "gpt-4o-batch"
OTHER_GROUP = "gpt-4o-batch-eu"


class Upstream:
    def __init__(self, api_key: str, model: str) -> None:
        self.fake = FakeOpenAI(api_key=api_key, models={model})
        self.api_key = api_key
        self.model = model
        self.server = ServerThread(self.fake.app).start()

    @property
    def api_base(self) -> str:
        return self.server.url + "/v1"


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    """Two deployments of GROUP (different models and keys) and one of OTHER_GROUP."""
    ups = [
        Upstream("sk-upstream-one", "gpt-4o-mini"),
        Upstream("sk-upstream-two", "gpt-4o-mini-2024-07-18"),
        Upstream("sk-upstream-eu", "gpt-4o-mini-eu"),
    ]
    yield ups
    for up in ups:
        up.server.stop()
        up.fake.close()


def config_for(upstreams: list[Upstream], database_url: str, **settings: Any) -> dict[str, Any]:
    groups = [GROUP, GROUP, OTHER_GROUP]
    return {
        "model_list": [
            {
                "model_name": group,
                "litellm_params": {
                    "model": f"openai/{up.model}",
                    "api_base": up.api_base,
                    "api_key": up.api_key,
                    "timeout": 2,
                },
                "model_info": {"mode": "batch"},
            }
            for group, up in zip(groups, upstreams, strict=False)
        ],
        # Background polling off unless a test turns it on: tests count upstream calls.
        "general_settings": {"master_key": MASTER_KEY, "database_url": database_url,
                             "batch_poll_interval": 0,
                             "data_dir": tempfile.mkdtemp(prefix="gateway-test-"), **settings},
    }


@pytest.fixture
def gateway(upstreams: list[Upstream], database_url: str) -> Iterator[ServerThread]:
    # Small limits so the bad-input corpus can exceed them cheaply.
    cfg = config_for(upstreams, database_url, max_line_size_mb=1, max_file_size_mb=4,
                     max_requests_per_file=1000)
    with gateway_server(cfg) as server:
        yield server


@pytest.fixture
def admin(gateway: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def make_key(admin: httpx.Client) -> Callable[..., str]:
    def make(models: list[str] | None = None, **extra: Any) -> str:
        resp = admin.post("/key/generate", json={"models": models or [], **extra})
        assert resp.status_code == 200, resp.text
        key: str = resp.json()["key"]
        return key

    return make


@pytest.fixture
def client_for(gateway: ServerThread) -> Callable[[str], openai.OpenAI]:
    def make(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)

    return make


@pytest.fixture
def client(
    make_key: Callable[..., str], client_for: Callable[[str], openai.OpenAI]
) -> openai.OpenAI:
    return client_for(make_key([GROUP]))
