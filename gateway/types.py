"""The vocabulary shared by the core and adapters: msgspec Structs.

Adapters return these, and the core builds every client answer from them: a field an adapter
does not set cannot reach a client, and an upstream's extra fields are dropped by construction.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
ResultKind = Literal["output", "errors"]


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    """Tokens a batch used. None means "not reported", which is not zero."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class BatchError(msgspec.Struct):
    """One batch-level error (OpenAI's `errors.data[]`). The core scrubs `message`."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class ResultFile(msgspec.Struct):
    """A batch's output or error file exists upstream; the core gives it a gateway id."""

    bytes: int | None = None  # None when the provider does not know without reading it
    created_at: int | None = None


class BatchTimes(msgspec.Struct, kw_only=True):
    """When a batch reached each stage (unix seconds), as OpenAI's Batch names them."""

    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None


TIMES = tuple(f.name for f in msgspec.structs.fields(BatchTimes))


class Batch(BatchTimes, kw_only=True):
    """A provider batch as an adapter reports it: native id, OpenAI status and facts."""

    id: str  # native id; never shown to clients
    status: Status
    request_counts: RequestCounts | None = None  # None: unknown yet
    usage: Usage | None = None
    errors: list[BatchError] | None = None
    output: ResultFile | None = None  # successes, read with `Provider.results(id, "output")`
    error: ResultFile | None = None  # failed lines, read with `results(id, "errors")`


class BatchErrors(msgspec.Struct):
    object: str = "list"
    data: list[BatchError] = msgspec.field(default_factory=list)


class PublicBatch(msgspec.Struct, kw_only=True):
    """OpenAI's Batch object as the gateway answers it: gateway ids only. Its fields are listed
    in OpenAI's order (not inherited from BatchTimes) so answers read like OpenAI's."""

    id: str
    object: str = "batch"
    endpoint: str
    model: str | None = None  # the model group
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    usage: Usage | None = None


class PlacementInfo(msgspec.Struct):
    """One deployment's copy of an input file, as the master key sees it."""

    model_group: str
    deployment_id: str
    state: Literal["ready", "pending", "failed"]
    attempts: int = 0


class FileInfo(msgspec.Struct, kw_only=True, omit_defaults=False):
    """OpenAI's File object as the gateway answers it."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class AdminFileInfo(FileInfo, kw_only=True):
    """`FileInfo` plus each deployment's copy, for the master key only."""

    placements: list[PlacementInfo] = msgspec.field(default_factory=list)


class RequestLine(msgspec.Struct):
    """The fields of an OpenAI batch request line the core checks; `body` is passed on."""

    custom_id: str
    method: str
    url: str
    body: RequestBody


class RequestBody(msgspec.Struct):
    model: str
