"""OpenAI adapter: `model: openai/<model>` deployments on api.openai.com or any server that
speaks OpenAI's Files + Batches protocol (`api_base` ending in /v1)."""

from __future__ import annotations

from typing import ClassVar

from gateway import Capabilities, OpenAIWireProvider, ProviderParams, hookimpl


class OpenAIParams(ProviderParams, kw_only=True):
    organization: str | None = None
    project: str | None = None
    max_requests_per_file: int = 50_000  # OpenAI's cap per batch input file


class OpenAIProvider(OpenAIWireProvider):
    name = "openai"
    Params: ClassVar[type[ProviderParams]] = OpenAIParams

    def capabilities(self) -> Capabilities:
        params = self.deployment.params
        assert isinstance(params, OpenAIParams)
        return Capabilities(input="file", max_requests=params.max_requests_per_file)

    async def headers(self) -> dict[str, str]:
        headers = await super().headers()
        params = self.deployment.params
        assert isinstance(params, OpenAIParams)
        for value, header in ((params.organization, "OpenAI-Organization"),
                              (params.project, "OpenAI-Project")):
            if value:
                headers[header] = value
        return headers


@hookimpl
def register_providers() -> list[type[OpenAIWireProvider]]:
    return [OpenAIProvider]
