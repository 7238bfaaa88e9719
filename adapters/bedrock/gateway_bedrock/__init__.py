"""AWS Bedrock adapter: `model: bedrock/<Claude model id>` deployments, batches run as Bedrock
batch inference (model invocation) jobs over S3, spoken to clients as OpenAI Files + Batches."""

from __future__ import annotations

from gateway import Provider, hookimpl
from gateway_bedrock.params import BedrockParams
from gateway_bedrock.provider import BedrockProvider

__all__ = ["BedrockParams", "BedrockProvider", "register_providers"]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [BedrockProvider]
