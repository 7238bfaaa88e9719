"""What an `anthropic/<model>` entry of config.yaml takes (`litellm_params`), checked when the
config loads."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from gateway import ProviderParams

DEFAULT_API_BASE = "https://api.anthropic.com"
# Anthropic's documented limits for one Message Batch.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 << 20

# The API versions whose Messages request rules the mapping knows. `2026-10-21` removes
# `temperature`, `top_p` and `top_k` (any value is a 400); `2023-06-01` takes them in 0..1.
ApiVersion = Literal["2023-06-01", "2026-10-21"]


class AnthropicParams(ProviderParams, kw_only=True):
    """`litellm_params` of an `anthropic/<model>` deployment.

    `api_key` is required; `api_base` defaults to Anthropic's API (a proxy speaking the same
    protocol may be named instead); `timeout` (s) bounds each call, and the silence allowed
    while a create body or a results file streams.
    """

    api_base: str | None = DEFAULT_API_BASE
    anthropic_version: ApiVersion = "2023-06-01"
    # Sent as `anthropic-beta` (a comma-separated list) on every call, when set.
    anthropic_beta: str | list[str] | None = None
    # Used for a request line that sets neither `max_tokens` nor `max_completion_tokens`.
    # Without it such a line is refused at upload (Anthropic requires `max_tokens`).
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_requests_per_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_REQUESTS)] = MAX_REQUESTS
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_BYTES)] = MAX_BYTES
    # `response_format: json_schema` and `strict` tools become Anthropic structured outputs
    # (`output_config.format`, `strict`). Turn off for a model without them: such lines are then
    # refused at upload instead of failing one by one in the batch.
    structured_outputs: bool = True
    # When a batch ends, read its results once to report the tokens it used (`Batch.usage`,
    # the gateway's usage records); Anthropic's batch object carries no token counts.
    usage_from_results: bool = True

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key is required")
        base = self.api_base or DEFAULT_API_BASE
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_base must be an http(s) URL, got {base!r}")
        base = base.rstrip("/")
        for suffix in ("/v1/messages", "/v1"):  # LiteLLM-style bases name the API root
            base = base.removesuffix(suffix)
        self.api_base = base
        if isinstance(self.anthropic_beta, list):
            self.anthropic_beta = ",".join(b.strip() for b in self.anthropic_beta if b.strip())
        if self.anthropic_beta is not None and not self.anthropic_beta.strip():
            self.anthropic_beta = None
