"""An OpenAI-compatible Files and Batches gateway with unified file ids.

This module is the public API adapters build on: the provider contract, the plugin hook and
the typed errors. Adapters import from here only.
"""

from gateway.errors import (
    ConfigError,
    DeploymentFull,
    UnsupportedOperation,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.hookspecs import hookimpl
from gateway.openai_wire import OpenAIWireProvider, retry_after, safe_decode
from gateway.provider import Deployment, InvalidRequestLine, Provider, ProviderBatch, ProviderFile

__all__ = [
    "ConfigError",
    "Deployment",
    "DeploymentFull",
    "InvalidRequestLine",
    "OpenAIWireProvider",
    "Provider",
    "ProviderBatch",
    "ProviderFile",
    "UnsupportedOperation",
    "UpstreamBadRequest",
    "UpstreamConflict",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "hookimpl",
    "retry_after",
    "safe_decode",
]
