"""An OpenAI-compatible Files and Batches gateway with unified file ids.

This module is the public API adapters build on: the provider contract, the vocabulary types,
the plugin hook and the typed errors. Adapters import from here only.
"""

from importlib import metadata as _metadata

from gateway.errors import (
    ConfigError,
    DeploymentFull,
    Unsuitable,
    UnsupportedOperation,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.hookspecs import hookimpl
from gateway.jsonl import lines
from gateway.openai_wire import OpenAIWireProvider, retry_after, retrying, safe_decode
from gateway.provider import (
    ALL_ENDPOINTS,
    CHAT_COMPLETIONS,
    Capabilities,
    Deployment,
    DeploymentState,
    InvalidRequestLine,
    LineRewrite,
    MapLines,
    Provider,
    ProviderContext,
    ProviderParams,
    RenameModel,
    Submission,
)
from gateway.types import (
    TERMINAL,
    Batch,
    BatchError,
    RequestCounts,
    ResultFile,
    ResultKind,
    Status,
    Usage,
)

try:
    # The one place the version is written is pyproject.toml; this reads the installed copy.
    __version__ = _metadata.version("batch-gateway")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ALL_ENDPOINTS",
    "CHAT_COMPLETIONS",
    "TERMINAL",
    "Batch",
    "BatchError",
    "Capabilities",
    "ConfigError",
    "Deployment",
    "DeploymentFull",
    "DeploymentState",
    "InvalidRequestLine",
    "LineRewrite",
    "MapLines",
    "OpenAIWireProvider",
    "Provider",
    "ProviderContext",
    "ProviderParams",
    "RenameModel",
    "RequestCounts",
    "ResultFile",
    "ResultKind",
    "Status",
    "Submission",
    "Unsuitable",
    "UnsupportedOperation",
    "UpstreamBadRequest",
    "UpstreamConflict",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "Usage",
    "hookimpl",
    "lines",
    "retry_after",
    "retrying",
    "safe_decode",
]
