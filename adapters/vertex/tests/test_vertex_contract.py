"""The adapter passes the same contract suite as every adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.vertex.tests.vertex_support import (
    BUCKET,
    LOCATION,
    PROJECT,
    Google,
    provider_for,
    request_line,
)
from gateway.testing.conformance import ContractEnv, ProviderContract


class TestVertexContract(ProviderContract):
    @pytest.fixture
    async def contract_env(
        self, google: Google, http: aiohttp.ClientSession
    ) -> AsyncIterator[ContractEnv]:
        provider = provider_for(http, google.params())
        other = google.oauth.add_account(google.token_uri, name="stranger")
        google.oauth.keys.pop(other["client_email"])  # a key the token endpoint never saw
        bad = provider_for(http, google.params(vertex_credentials=other))
        lines = [request_line(f"req-{i}") for i in range(3)]
        lines[1]["body"]["messages"][0]["content"] = "please FAIL"  # lands in the error file
        yield ContractEnv(
            provider=provider,
            lines=lines,
            bad_provider=bad,
            missing_file_id=f"gs://{BUCKET}/batch-gateway/in/missing.jsonl",
            missing_batch_id=f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/1",
        )
