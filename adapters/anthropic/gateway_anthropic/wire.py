"""Anthropic's Message Batches objects (only the fields read) and their OpenAI counterparts:
a MessageBatch as a `gateway.Batch`, a result line as an OpenAI batch-output line."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import msgspec

from gateway import Batch, RequestCounts, ResultFile, Status, Usage

# -- the MessageBatch object -------------------------------------------------------------------


class Counts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class MessageBatch(msgspec.Struct):
    id: str
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: Counts = msgspec.field(default_factory=Counts)
    created_at: str | None = None
    expires_at: str | None = None
    ended_at: str | None = None
    cancel_initiated_at: str | None = None
    archived_at: str | None = None
    results_url: str | None = None


decode_batch = msgspec.json.Decoder(MessageBatch).decode


def epoch(stamp: str | None) -> int | None:
    """RFC 3339 (`2026-11-30T05:51:45.616966Z`) -> epoch seconds."""
    if stamp is None:
        return None
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def status_of(wire: MessageBatch) -> Status:
    """`in_progress` -> in_progress, `canceling` -> cancelling; `ended` by its counts: any
    request canceled -> cancelled, else any expired -> expired (not all ran in the 24 h),
    else completed (every request succeeded or errored, even when a cancel came too late)."""
    if wire.processing_status == "in_progress":
        return "in_progress"
    if wire.processing_status == "canceling":
        return "cancelling"
    counts = wire.request_counts
    if counts.canceled:
        return "cancelled"
    if counts.expired:
        return "expired"
    return "completed"


def to_batch(wire: MessageBatch) -> Batch:
    c = wire.request_counts
    failed = c.errored + c.canceled + c.expired
    ended = wire.processing_status == "ended"
    ended_at = epoch(wire.ended_at)
    status = status_of(wire)
    return Batch(
        id=wire.id,
        status=status,
        # Anthropic counts only `processing` until the whole batch ends, then all at once.
        request_counts=RequestCounts(total=c.processing + c.succeeded + failed,
                                     completed=c.succeeded, failed=failed),
        output=ResultFile(created_at=ended_at) if ended and c.succeeded else None,
        error=ResultFile(created_at=ended_at) if ended and failed else None,
        in_progress_at=epoch(wire.created_at),
        expires_at=epoch(wire.expires_at),
        cancelling_at=epoch(wire.cancel_initiated_at),
        completed_at=ended_at if status == "completed" else None,
        cancelled_at=ended_at if status == "cancelled" else None,
        expired_at=ended_at if status == "expired" else None,
    )


# -- result lines --------------------------------------------------------------------------------


class TokenUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    @property
    def prompt(self) -> int:
        """All input tokens (Anthropic's `input_tokens` leaves out cache reads and writes)."""
        return (self.input_tokens + (self.cache_creation_input_tokens or 0)
                + (self.cache_read_input_tokens or 0))


class Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class Message(msgspec.Struct):
    id: str
    model: str = ""
    content: list[Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    usage: TokenUsage = msgspec.field(default_factory=TokenUsage)


class ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class ErrorEnvelope(msgspec.Struct):
    error: ErrorDetail = msgspec.field(default_factory=ErrorDetail)
    request_id: str | None = None


class Result(msgspec.Struct):
    type: str  # succeeded | errored | canceled | expired
    message: Message | None = None
    error: ErrorEnvelope | None = None


class ResultLine(msgspec.Struct):
    custom_id: str
    result: Result


decode_result = msgspec.json.Decoder(ResultLine).decode


class _UsageOnly(msgspec.Struct):
    usage: TokenUsage = msgspec.field(default_factory=TokenUsage)


class _ResultUsage(msgspec.Struct):
    type: str
    message: _UsageOnly | None = None


class _LineUsage(msgspec.Struct):
    result: _ResultUsage


decode_usage = msgspec.json.Decoder(_LineUsage).decode


def add_usage(total: Usage, raw: bytes) -> None:
    """Add one result line's tokens (successes only: the rest is not billed) to `total`."""
    result = decode_usage(raw).result
    if result.type != "succeeded" or result.message is None:
        return
    usage = result.message.usage
    total.input_tokens = (total.input_tokens or 0) + usage.prompt
    total.output_tokens = (total.output_tokens or 0) + usage.output_tokens
    total.total_tokens = total.input_tokens + total.output_tokens


STATUS_CODES = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "conflict_error": 409,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
_encode_args = msgspec.json.Encoder().encode


def line_id(batch_id: str, custom_id: str) -> str:
    """The output line's `id`: the same on every read."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}/{custom_id}".encode()).hexdigest()[:24]


def openai_line(batch_id: str, custom_id: str, result: Result,
                created: int | None) -> dict[str, Any]:
    """One Anthropic result as an OpenAI batch-output line, under the client's `custom_id`."""
    out: dict[str, Any] = {"id": line_id(batch_id, custom_id), "custom_id": custom_id,
                           "response": None, "error": None}
    if result.type == "succeeded" and result.message is not None:
        out["response"] = {"status_code": 200, "request_id": result.message.id,
                           "body": chat_completion(result.message, created)}
    elif result.type == "errored":
        envelope = result.error or ErrorEnvelope()
        detail = envelope.error
        out["response"] = {
            "status_code": STATUS_CODES.get(detail.type, 500),
            "request_id": envelope.request_id,
            "body": {"error": {"message": detail.message, "type": detail.type, "param": None,
                               "code": None}},
        }
    elif result.type == "canceled":
        out["error"] = {"code": "batch_cancelled",
                        "message": "The request was not run: the batch was cancelled."}
    elif result.type == "expired":
        out["error"] = {"code": "batch_expired", "message": "This request could not be "
                        "executed before the completion window expired."}
    else:
        out["error"] = {"code": "batch_failed",
                        "message": f"The request ended as {result.type!r} upstream."}
    return out


def chat_completion(message: Message, created: int | None) -> dict[str, Any]:
    texts = [b.text for b in message.content if b.type == "text" and b.text is not None]
    calls = [
        {"id": b.id, "type": "function",
         "function": {"name": b.name, "arguments": _encode_args(b.input or {}).decode()}}
        for b in message.content if b.type == "tool_use"
    ]
    reply: dict[str, Any] = {"role": "assistant",
                             "content": "".join(texts) if texts or not calls else None,
                             "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    usage = message.usage
    return {
        "id": message.id,
        "object": "chat.completion",
        "created": created or 0,
        "model": message.model,
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(message.stop_reason or "", "stop")}],
        "usage": {"prompt_tokens": usage.prompt, "completion_tokens": usage.output_tokens,
                  "total_tokens": usage.prompt + usage.output_tokens,
                  "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens or 0}},
        "system_fingerprint": None,
    }
