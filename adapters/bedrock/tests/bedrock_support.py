"""Shared by the Bedrock adapter's tests (conftest.py re-exports the fixture): the S3 emulator
(moto, one per session), the fake Bedrock control plane and its SigV4-checking S3 front on
loopback, providers pointed at them (built from raw `litellm_params` as the config loader
does), and small drivers of the v2 methods."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from gateway_bedrock import BedrockProvider
from gateway_bedrock.testing import ACCESS_KEY, REGION, ROLE_ARN, SECRET_KEY, FakeBedrock

from gateway import TERMINAL, Batch, ProviderContext, ResultKind, Submission
from gateway.testing.conformance import deployment_for
from gateway.testing.memory import MemoryState
from gateway.testing.s3 import S3Emulator
from gateway.testing.servers import ServerThread

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
GROUP = "claude-batch"
MIN_RECORDS = 3  # the fake's (and the deployments') minimum records per job in these tests


class _Switch:
    """An ASGI app that forwards to whichever app is plugged in: one server for the session,
    a fresh fake per test."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


class Servers:
    """The fake Bedrock and its S3 front, served on loopback for the whole session."""

    def __init__(self) -> None:
        self.control = _Switch()
        self.front = _Switch()
        self.bedrock = ServerThread(self.control, lifespan="off").start()
        self.s3_front = ServerThread(self.front, lifespan="off").start()

    def stop(self) -> None:
        for server in (self.s3_front, self.bedrock):  # both wind down at once
            server.server.should_exit = True
        self.s3_front.stop()
        self.bedrock.stop()


@pytest.fixture(scope="session")
def bedrock_servers() -> Iterator[Servers]:
    servers = Servers()
    yield servers
    servers.stop()


class Aws:
    """A fresh bucket on the S3 emulator and a fresh fake Bedrock (with its S3 front) on the
    session's servers."""

    def __init__(self, s3: S3Emulator, servers: Servers, **fake: Any) -> None:
        self.emulator = s3
        self.bucket = f"bedrock-{secrets.token_hex(6)}"
        s3.create_bucket(self.bucket)
        fake.setdefault("min_records", MIN_RECORDS)
        self.fake = FakeBedrock(s3.url, **fake)
        self.bedrock = servers.bedrock
        self.s3_front = servers.s3_front
        servers.control.target = self.fake.app
        servers.front.target = self.fake.s3_app

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "model": f"bedrock/{MODEL}",
            "aws_region_name": REGION,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "s3_bucket_name": self.bucket,
            "aws_batch_role_arn": ROLE_ARN,
            "api_base": self.bedrock.url,
            "s3_endpoint_url": self.s3_front.url,
            "min_requests_per_job": MIN_RECORDS,
            "timeout": 10,
            **extra,
        }

    def client(self) -> Any:
        return self.emulator.client()

    def objects(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]

    def read(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def stop(self) -> None:
        self.fake.close()


@pytest.fixture
def aws(s3_emulator: S3Emulator, bedrock_servers: Servers) -> Iterator[Aws]:
    env = Aws(s3_emulator, bedrock_servers)
    yield env
    env.stop()


def provider_for(http: aiohttp.ClientSession, params: dict[str, Any],
                 group: str = GROUP) -> BedrockProvider:
    """A provider for raw `litellm_params`, converted as the config loader does."""
    deployment = deployment_for(BedrockProvider, params, model_name=group)
    return BedrockProvider(deployment, ProviderContext(http=http, state=MemoryState()))


def request_line(custom_id: str, text: str | None = None, model: str = GROUP,
                 **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model,
                 "messages": [{"role": "user", "content": text or f"hello {custom_id}"}],
                 "max_tokens": 64, **body},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def native_jsonl(provider: BedrockProvider, lines: list[dict[str, Any]]) -> bytes:
    """The copy the core would write to this deployment: every line through `rewrite()`."""
    to_native = provider.rewrite().to_native
    return jsonl([to_native(json.loads(json.dumps(line))) for line in lines])


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start: start + size]


async def put(provider: BedrockProvider, data: bytes, name: str = "file-abc.jsonl") -> str:
    uri: str = await provider.put_input(chunks(data), name)
    return uri


def submission(input_id: str, data: bytes = b"", *, batch_id: str = "batch_test0001",
               endpoint: str = "/v1/chat/completions",
               metadata: dict[str, str] | None = None, count: int | None = None) -> Submission:
    return Submission(
        batch_id=batch_id, file_id="file-abc", input_id=input_id, endpoint=endpoint,
        completion_window="24h", metadata=metadata,
        request_count=data.count(b"\n") if count is None else count,
        size=len(data), open_input=lambda: chunks(data),
    )


async def start(provider: BedrockProvider, lines: list[dict[str, Any]],
                batch_id: str = "batch_test0001",
                metadata: dict[str, str] | None = None) -> Batch:
    data = native_jsonl(provider, lines)
    return await provider.submit(submission(await put(provider, data), data, batch_id=batch_id,
                                            metadata=metadata))


async def finish(provider: BedrockProvider, batch: Batch) -> Batch:
    for _ in range(10):
        batch = await provider.poll(batch.id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"job never ended: {batch}")


async def run(provider: BedrockProvider, lines: list[dict[str, Any]],
              metadata: dict[str, str] | None = None) -> Batch:
    """Put the input, submit, poll to the end; the final Batch."""
    return await finish(provider, await start(provider, lines, metadata=metadata))


async def read_lines(provider: BedrockProvider, batch_id: str,
                     which: ResultKind) -> list[dict[str, Any]]:
    stream = await provider.results(batch_id, which)
    return [json.loads(x) for x in b"".join([c async for c in stream]).splitlines() if x]
