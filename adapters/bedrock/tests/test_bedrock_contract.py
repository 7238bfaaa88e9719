"""The adapter passes the same contract suite as every file-input adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from gateway_bedrock.testing import ACCOUNT, REGION

from adapters.bedrock.tests.bedrock_support import Aws, provider_for, request_line
from gateway.testing.conformance import ContractEnv, FileProviderContract


class TestBedrockContract(FileProviderContract):
    @pytest.fixture
    async def contract_env(
        self, aws: Aws, http: aiohttp.ClientSession
    ) -> AsyncIterator[ContractEnv]:
        lines = [request_line(f"req-{i}") for i in range(4)]
        lines[1]["body"]["messages"][0]["content"] = "please FAIL"  # lands in the errors
        yield ContractEnv(
            provider=provider_for(http, aws.params()),
            lines=lines,
            bad_provider=provider_for(http, aws.params(aws_secret_access_key="wrong-secret")),
            missing_batch_id=f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-invocation-job/"
                             "zzzzzzzzzzzz",
        )
