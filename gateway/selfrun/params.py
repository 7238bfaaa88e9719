"""Which deployments the gateway runs batches for, and what their `litellm_params` say.

Kept apart from the provider so that the config loader can tell such a deployment and check
its params without importing the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.provider import ProviderParams

# LiteLLM's prefixes for OpenAI-compatible servers that have no Files/Batches API.
GATEWAY_RUN_PREFIXES = frozenset({"hosted_vllm", "openai_like", "ollama_chat", "lm_studio"})


def runs_in_gateway(prefix: str, model_info: Mapping[str, Any]) -> bool:
    """True when the gateway itself sends this deployment's batch lines: a prefix without a
    batch API, or `model_info.batch_execution: gateway` whatever the prefix."""
    return prefix in GATEWAY_RUN_PREFIXES or model_info.get("batch_execution") == "gateway"


class GatewayRunParams(ProviderParams, kw_only=True):
    """LiteLLM's names: `max_parallel_requests`, `rpm` and `tpm` bound what is sent to the
    endpoint (None: no bound on rpm / tpm). `timeout` is per request (LLM answers can take
    minutes); `max_retries` more tries of a line after a 429, 5xx, timeout or reset."""

    api_base: str  # required here: where the lines go
    timeout: float = 600.0
    max_retries: int = 5
    max_parallel_requests: int = 16
    rpm: int | None = None
    tpm: int | None = None
    # The window rpm and tpm count over. LiteLLM's limits are per minute; a shorter window
    # makes the limits testable in seconds.
    limit_window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.api_base.startswith(("http://", "https://")):
            raise ValueError("api_base must be an http:// or https:// URL")
        for name in ("max_parallel_requests", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_retries < 0 or self.timeout <= 0 or self.limit_window_seconds <= 0:
            raise ValueError("max_retries must be >= 0; timeout and limit_window_seconds > 0")
