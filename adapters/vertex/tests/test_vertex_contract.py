"""The adapter passes the same contract suite as every file-input adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.vertex.tests.vertex_support import (
    LOCATION,
    PROJECT,
    Google,
    provider_for,
    request_line,
)
from gateway.testing.conformance import ContractEnv, FileProviderContract


class TestVertexContract(FileProviderContract):
    @pytest.fixture
    async def contract_env(
        self, google: Google, http: aiohttp.ClientSession
    ) -> AsyncIterator[ContractEnv]:
        provider = provider_for(http, google.params())
        other = google.oauth.add_account(google.token_uri, name="stranger")
        google.oauth.keys.pop(other["client_email"])  # a key the token endpoint never saw
        bad = provider_for(http, google.params(vertex_credentials=other))
        lines = [request_line(f"req-{i}") for i in range(3)]
        lines[1]["body"]["messages"][0]["content"] = "please FAIL"  # lands in the errors
        yield ContractEnv(
            provider=provider,
            lines=lines,
            bad_provider=bad,
            missing_batch_id=f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/1",
        )
