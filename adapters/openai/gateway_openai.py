"""OpenAI adapter: `model: openai/<model>` deployments on api.openai.com or any server that
speaks OpenAI's Files + Batches protocol (`api_base` ending in /v1)."""

from __future__ import annotations

from typing import ClassVar

from gateway import OpenAIWireProvider, hookimpl


class OpenAIProvider(OpenAIWireProvider):
    name = "openai"
    max_requests_per_file: ClassVar[int] = 50_000

    async def headers(self) -> dict[str, str]:
        headers = await super().headers()
        for param, header in (("organization", "OpenAI-Organization"),
                              ("project", "OpenAI-Project")):
            value = self.deployment.param(param)
            if value:
                headers[header] = str(value)
        return headers


@hookimpl
def register_providers() -> list[type[OpenAIWireProvider]]:
    return [OpenAIProvider]
