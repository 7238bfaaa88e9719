"""The provider contract (v2): what an adapter implements for one batch deployment.

Adapters speak *native* ids and their provider's wire protocol. The core owns validation,
access control, unified ids, the inputs it keeps, persistence, placement and failover, and every
answer a client sees; it talks to a provider only through the methods below. One `Provider`
instance serves one deployment from `config.yaml`.

A provider declares what it can do (`Capabilities`), what `litellm_params` it takes (`Params`,
converted when the config loads), how a request line becomes its own (`rewrite()`), and
implements submit / poll / cancel / results; file-input providers also `put_input`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import aiohttp
import msgspec

from gateway.errors import UnsupportedOperation
from gateway.types import Batch, ResultKind

CHAT_COMPLETIONS = "/v1/chat/completions"
ALL_ENDPOINTS: frozenset[str] = frozenset(
    {CHAT_COMPLETIONS, "/v1/embeddings", "/v1/completions", "/v1/responses"}
)


class ProviderParams(msgspec.Struct, kw_only=True):
    """`litellm_params` every adapter understands. Subclass it as `Params` with your own
    fields; the config loader converts each entry with `msgspec.convert`, so a wrong type or
    a missing field stops start-up naming entry and field. Keys no field names are logged."""

    model: str  # "<prefix>/<upstream model>", as written in config
    api_base: str | None = None
    api_key: str | None = None
    timeout: float = 60.0  # seconds for one upstream call (transfers: between bytes)
    max_retries: int = 2  # more tries of a read (GET) that failed on the way or with 429/5xx


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What one deployment can run. The core refuses or skips a deployment up front instead of
    learning it from an upstream error."""

    # "file": the core writes a copy to the provider at upload (`put_input`); "inline": the
    # provider reads the input the gateway kept when the batch is submitted.
    input: Literal["file", "inline"] = "file"
    endpoints: frozenset[str] = ALL_ENDPOINTS
    min_requests: int = 1  # fewer: the batch goes to another deployment (Bedrock: 100)
    max_requests: int = 50_000  # per batch; checked at upload
    max_bytes: int = 200 << 20  # per input file; checked at upload
    cancel: bool = True
    delete: bool = True  # file mode: copies can be deleted upstream


@dataclass(frozen=True)
class Deployment:
    """One `model_list` entry of `config.yaml`, secrets resolved, params converted."""

    id: str  # stable internal id; never shown to clients
    model_name: str  # the public model group
    provider: str  # the `model` prefix: "openai", "azure", "vertex_ai", ...
    model: str  # the rest of `model`: upstream model or Azure deployment name
    params: ProviderParams  # litellm_params as the adapter's `Params`
    model_info: Mapping[str, Any] = field(default_factory=dict)


# -- line rewrites ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RenameModel:
    """Each line goes upstream as written, with `body.model` set to `model`. The core does it
    on the raw bytes where that is provably safe (about 20x faster than parsing), and makes a
    copy once for every deployment with the same rewrite."""

    model: str


@dataclass(frozen=True)
class MapLines:
    """Each line is parsed and passed to `to_native` (the validated OpenAI request line as a
    dict; it may mutate and return it); its result is encoded as the upstream line. Raise
    `InvalidRequestLine` for a line this deployment cannot take: the core answers 400 naming
    the line. No inverse is needed: the gateway keeps the input as uploaded."""

    to_native: Callable[[dict[str, Any]], Any]


LineRewrite = RenameModel | MapLines


class InvalidRequestLine(ValueError):
    """A request line this provider cannot take; `field` is its path (`body.tools[0]`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# -- what the core gives an adapter ------------------------------------------------------------


class DeploymentState(Protocol):
    """Small values an adapter keeps in the gateway's database, per deployment (for example a
    mapping of re-keyed custom ids per batch). Shared by every gateway instance."""

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes) -> None: ...
    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class ProviderContext:
    http: aiohttp.ClientSession  # the process's shared session; do not close it
    state: DeploymentState


@dataclass(frozen=True)
class Submission:
    """Everything the core knows about a batch it asks a deployment to run."""

    batch_id: str  # the gateway's id: name upstream objects after it, never show it back
    file_id: str  # the gateway's input file id
    input_id: str | None  # file mode: the native id `put_input` returned; inline: None
    endpoint: str
    completion_window: str
    metadata: Mapping[str, str] | None
    request_count: int
    size: int  # bytes of the input as uploaded
    # The input as this deployment's lines (after `rewrite()`), newline-terminated, in pieces
    # of ~256 KiB that need not end at a line break. Inline providers stream it into their
    # create call; it can be opened again.
    open_input: Callable[[], AsyncIterator[bytes]]


class Provider(abc.ABC):
    """Base class for adapters. Subclass it, set `name` and `Params`, implement the abstract
    methods; file-input providers also implement `put_input` (and `delete_input`)."""

    name: ClassVar[str]  # the config prefix that selects it: `azure/...` -> "azure"
    Params: ClassVar[type[ProviderParams]] = ProviderParams
    # Params fields (raw config keys) that make two deployments different upstreams: they, not
    # the order of config.yaml, decide a deployment's id, which the gateway's copies refer to.
    identity: ClassVar[tuple[str, ...]] = ("model", "api_base")

    def __init__(self, deployment: Deployment, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self.ctx = ctx
        self.http = ctx.http

    def capabilities(self) -> Capabilities:
        """Per instance: quotas differ per model and account."""
        return Capabilities()

    def rewrite(self) -> LineRewrite:
        return RenameModel(self.deployment.model)

    # -- inputs (file mode) ----------------------------------------------------------------

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        """Store a rewritten request file upstream; return its native id once usable.

        `content` streams this deployment's lines; `name` is `<gateway file id>.jsonl`.
        """
        raise UnsupportedOperation("store input files")

    async def delete_input(self, input_id: str) -> None:
        """Delete a copy `put_input` made. Missing upstream: raise `UpstreamNotFound`."""
        raise UnsupportedOperation("delete files")

    # -- batches ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def submit(self, job: Submission) -> Batch:
        """Create the batch upstream. Raise `Unsuitable` to have the core try another
        deployment without holding it against this one."""

    @abc.abstractmethod
    async def poll(self, batch_id: str) -> Batch: ...

    async def cancel(self, batch_id: str) -> Batch:
        raise UnsupportedOperation("cancel batches")

    @abc.abstractmethod
    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        """Open a finished batch's output (`"output"`) or failed lines (`"errors"`) as OpenAI
        batch-output JSONL. Failures must raise here, before the first chunk, so the core can
        still answer with a proper status code."""

    async def delete_results(self, batch_id: str, which: ResultKind) -> None:
        """The client deleted the gateway's file of this batch's output or failed lines:
        delete what the deployment keeps of it, where it can. The default keeps it: providers
        delete results under their own retention."""
        return None

    # -- crash recovery (optional) -----------------------------------------------------------
    # The core writes an intent before each upstream side effect; when its process dies before
    # recording the outcome, a janitor asks the deployment what was made and removes (or, for a
    # copy of a file the gateway kept, adopts) it. Without these, it can only log the intent.

    async def find_inputs(self, name: str, since: int) -> list[str]:
        """Native ids of input copies named `name` (`<gateway file id>.jsonl`) created at or
        after `since` (Unix seconds)."""
        raise UnsupportedOperation("search input files")

    async def find_batches(self, batch_id: str, input_id: str | None, since: int) -> list[str]:
        """Native ids of batches created at or after `since` for the gateway batch `batch_id`
        (file mode: from the copy `input_id`)."""
        raise UnsupportedOperation("search batches")

    async def aclose(self) -> None:  # noqa: B027 - optional: most adapters hold nothing
        """Release anything the provider holds beyond the shared HTTP session."""


# What `plugins` checks a registered class implements.
REQUIRED_METHODS = tuple(sorted(Provider.__abstractmethods__))
