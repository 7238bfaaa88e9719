"""Shared by the Vertex adapter's tests (conftest.py re-exports the fixtures): a GCS emulator,
a fake Google token endpoint and a fake Vertex AI on loopback, providers pointed at them, and
the gateway in front of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from gateway_vertex import VertexProvider

from gateway import Deployment
from gateway.testing.fake_vertex import FakeGoogleOAuth, FakeVertex, gcs_emulator
from gateway.testing.servers import ServerThread

BUCKET = "batch-bucket"
PROJECT = "my-project"
LOCATION = "us-central1"
MODEL = "gemini-2.5-flash"
GROUP = "gemini-batch"


class Google:
    """GCS (the emulator), the token endpoint and Vertex AI, all running."""

    def __init__(self, gcs_url: str, **vertex: Any) -> None:
        self.gcs_url = gcs_url
        self.oauth = FakeGoogleOAuth()
        self.oauth_server = ServerThread(self.oauth.app).start()
        self.token_uri = self.oauth_server.url + "/token"
        self.key = self.oauth.add_account(self.token_uri, project_id=PROJECT)
        self.vertex = FakeVertex(self.oauth, gcs_url, project_id=PROJECT, location=LOCATION,
                                 models={MODEL}, **vertex)
        self.vertex_server = ServerThread(self.vertex.app).start()

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "model": f"vertex_ai/{MODEL}",
            "vertex_project": PROJECT,
            "vertex_location": LOCATION,
            "vertex_credentials": json.dumps(self.key),
            "gcs_bucket_name": BUCKET,
            "gcs_api_base": self.gcs_url,
            "api_base": self.vertex_server.url,
            "timeout": 10,
            **extra,
        }

    def stop(self) -> None:
        self.vertex_server.stop()
        self.oauth_server.stop()


@pytest.fixture
def google() -> Iterator[Google]:
    with gcs_emulator(BUCKET) as gcs_url:
        env = Google(gcs_url)
        yield env
        env.stop()


def provider_for(
    http: aiohttp.ClientSession, params: dict[str, Any], group: str = GROUP
) -> VertexProvider:
    _, _, model = params["model"].partition("/")
    return VertexProvider(Deployment(id=f"dep-{group}", model_name=group, provider="vertex_ai",
                                     model=model, params=params), http)


def request_line(custom_id: str, text: str | None = None, model: str = GROUP,
                 **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model,
                 "messages": [{"role": "user", "content": text or f"hello {custom_id}"}],
                 **body},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


