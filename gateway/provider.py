"""The provider contract: what an adapter implements for one batch deployment.

Adapters speak *native* ids and their provider's wire protocol. The core owns validation,
access control, unified ids, persistence and routing, and only ever talks to a provider through
the methods below. One `Provider` instance serves one deployment from `config.yaml`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from gateway.errors import UnsupportedOperation

# A batch as the provider reports it, normalised to the OpenAI Batch shape but still carrying
# native ids (`id`, `input_file_id`, `output_file_id`, `error_file_id`). The core rewrites ids.
ProviderBatch = dict[str, Any]


@dataclass(frozen=True)
class Deployment:
    """One `model_list` entry of `config.yaml`, secrets resolved."""

    id: str  # stable internal id; never shown to clients
    model_name: str  # the public model group
    provider: str  # the `model` prefix: "openai", "azure", "vertex_ai", ...
    model: str  # the rest of `model`: upstream model or Azure deployment name
    params: Mapping[str, Any] = field(default_factory=dict)  # litellm_params
    model_info: Mapping[str, Any] = field(default_factory=dict)

    def param(self, name: str, default: Any = None) -> Any:
        value = self.params.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class ProviderFile:
    id: str
    bytes: int | None = None
    status: str = "processed"
    created_at: int | None = None
    filename: str | None = None
    purpose: str | None = None


class InvalidRequestLine(ValueError):
    """Raised by `Provider.prepare_line` when a request line cannot be sent to this provider."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Provider:
    """Base class for adapters. Subclass it, set `name`, implement the async methods.

    `name` is the `model` prefix in config that selects this provider (`azure/...` → "azure").
    Set `supports_delete = False` (etc.) when the provider cannot do something: the core then
    answers 400, never 500.
    """

    name: ClassVar[str]
    supports_delete: ClassVar[bool] = True
    supports_cancel: ClassVar[bool] = True
    # The provider's cap on requests in one input file; the core checks it at upload.
    max_requests_per_file: ClassVar[int] = 100_000

    def __init__(self, deployment: Deployment, http: aiohttp.ClientSession) -> None:
        self.deployment = deployment
        self.http = http

    # -- request lines -------------------------------------------------------------------------

    def prepare_line(self, line: dict[str, Any]) -> dict[str, Any]:
        """Return the request line as this deployment must receive it.

        `line` is a validated OpenAI batch request line (`custom_id`, `method`, `url`, `body`).
        The default rewrites `body.model` to the deployment's model. Raise `InvalidRequestLine`
        for a line this provider cannot take; the core reports it as a 400 with the line number.
        The method may mutate and return `line`.
        """
        line["body"]["model"] = self.deployment.model
        return line

    # -- files ---------------------------------------------------------------------------------

    async def upload_file(self, content: AsyncIterator[bytes], filename: str) -> ProviderFile:
        """Store a prepared JSONL request file (already rewritten by `prepare_line`)."""
        raise NotImplementedError

    async def retrieve_file(self, file_id: str) -> ProviderFile:
        raise NotImplementedError

    async def delete_file(self, file_id: str) -> None:
        raise UnsupportedOperation("delete files")

    async def file_content(self, file_id: str) -> AsyncIterator[bytes]:
        """Open a file's content; return an iterator of chunks **in OpenAI batch format**.

        Failures (missing file, upstream down) must raise here, before the first chunk, so the
        core can still answer with a proper status code.
        """
        raise NotImplementedError

    # -- batches -------------------------------------------------------------------------------

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None,
    ) -> ProviderBatch:
        raise NotImplementedError

    async def retrieve_batch(self, batch_id: str) -> ProviderBatch:
        raise NotImplementedError

    async def cancel_batch(self, batch_id: str) -> ProviderBatch:
        raise UnsupportedOperation("cancel batches")

    async def aclose(self) -> None:
        """Release anything the provider holds beyond the shared HTTP session."""
