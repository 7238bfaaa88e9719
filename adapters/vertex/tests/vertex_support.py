"""Shared by the Vertex adapter's tests (conftest.py re-exports the fixtures): a GCS emulator,
a fake Google token endpoint and a fake Vertex AI on loopback, providers pointed at them (built
from raw `litellm_params` as the config loader does), and small drivers of the v2 methods."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from gateway_vertex import VertexProvider

from gateway import TERMINAL, Batch, ProviderContext, ResultKind, Submission
from gateway.testing.conformance import deployment_for
from gateway.testing.fake_vertex import FakeGoogleOAuth, FakeVertex, gcs_emulator
from gateway.testing.memory import MemoryState
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
    """A provider for raw `litellm_params`, converted as the config loader does."""
    deployment = deployment_for(VertexProvider, params, model_name=group)
    return VertexProvider(deployment, ProviderContext(http=http, state=MemoryState()))


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




def native_jsonl(provider: VertexProvider, lines: list[dict[str, Any]]) -> bytes:
    """The copy the core would write to this deployment: every line through `rewrite()`."""
    to_native = provider.rewrite().to_native
    return jsonl([to_native(json.loads(json.dumps(line))) for line in lines])


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def put(provider: VertexProvider, data: bytes, name: str = "file-abc.jsonl") -> str:
    uri: str = await provider.put_input(chunks(data), name)
    return uri


def submission(input_id: str, data: bytes = b"", *, batch_id: str = "batch_test0001",
               endpoint: str = "/v1/chat/completions",
               metadata: dict[str, str] | None = None) -> Submission:
    return Submission(
        batch_id=batch_id, file_id="file-abc", input_id=input_id, endpoint=endpoint,
        completion_window="24h", metadata=metadata, request_count=data.count(b"\n"),
        size=len(data), open_input=lambda: chunks(data),
    )


async def run(provider: VertexProvider, lines: list[dict[str, Any]],
              metadata: dict[str, str] | None = None) -> Batch:
    """Put the input, submit, poll to the end; the final Batch."""
    data = native_jsonl(provider, lines)
    batch: Batch = await provider.submit(submission(await put(provider, data), data,
                                                    metadata=metadata))
    for _ in range(10):
        batch = await provider.poll(batch.id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"job never ended: {batch}")


async def read_lines(provider: VertexProvider, batch_id: str,
                     which: ResultKind) -> list[dict[str, Any]]:
    stream = await provider.results(batch_id, which)
    return [json.loads(x) for x in b"".join([c async for c in stream]).splitlines() if x]
