"""Gemini batch prediction lines → OpenAI batch output lines (`chat.completion` bodies)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from gateway_vertex import labels
from gateway_vertex.gemini_request import CUSTOM_ID_LABEL
from gateway_vertex.transport import scrub

_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                       "IMAGE_SAFETY"})


def unix_seconds(value: Any) -> int | None:
    """RFC 3339 (Vertex writes up to nanoseconds, `Z` or an offset) → Unix seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        return None


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:24]


def convert(prediction: dict[str, Any], source: str) -> tuple[bool, dict[str, Any]]:
    """(succeeded, OpenAI output line) for one prediction line.

    `source` names the output directory so that line ids are stable across reads and differ
    between batches.
    """
    request = prediction.get("request")
    tags = request.get("labels") if isinstance(request, dict) else None
    custom_id = labels.decode(CUSTOM_ID_LABEL, tags) if isinstance(tags, dict) else None
    line_id = f"batch_req_{_digest(source, custom_id)}"
    status = prediction.get("status")
    response = prediction.get("response")
    if status or not isinstance(response, dict) or not response:
        if isinstance(status, dict):
            status = status.get("message") or json.dumps(status)
        message = scrub(str(status or "Vertex AI returned no response for this request."))
        return False, {"id": line_id, "custom_id": custom_id, "response": None,
                       "error": {"code": "vertex_error", "message": message}}
    body = chat_completion(response, line_id, prediction.get("processed_time"))
    return True, {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": response.get("responseId") or line_id,
                     "body": body},
        "error": None,
    }


def chat_completion(
    response: dict[str, Any], seed: str, processed_time: Any = None
) -> dict[str, Any]:
    choices = [_choice(i, c, seed) for i, c in enumerate(response.get("candidates") or [])]
    if not choices:
        blocked = (response.get("promptFeedback") or {}).get("blockReason")
        choices = [{"index": 0, "message": {"role": "assistant", "content": None,
                                            "refusal": None},
                    "finish_reason": "content_filter" if blocked else "stop", "logprobs": None}]
    created = unix_seconds(response.get("createTime")) or unix_seconds(processed_time) or 0
    return {
        "id": response.get("responseId") or f"chatcmpl-{seed}",
        "object": "chat.completion",
        "created": created,
        "model": str(response.get("modelVersion") or "").split("@")[0],
        "choices": choices,
        "usage": _usage(response.get("usageMetadata") or {}),
    }


def _choice(i: int, candidate: dict[str, Any], seed: str) -> dict[str, Any]:
    parts = (candidate.get("content") or {}).get("parts") or []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    index = candidate.get("index", i)
    calls = [
        {
            "id": p["functionCall"].get("id") or f"call_{_digest(seed, index, j)}",
            "type": "function",
            "function": {"name": p["functionCall"].get("name"),
                         "arguments": json.dumps(p["functionCall"].get("args") or {})},
        }
        for j, p in enumerate(parts)
        if isinstance(p.get("functionCall"), dict)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message,
            "finish_reason": _finish_reason(candidate.get("finishReason"), bool(calls)),
            "logprobs": _logprobs(candidate.get("logprobsResult"))}


def _finish_reason(reason: Any, has_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    # STOP, missing, and the odd ones (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, ...).
    return "tool_calls" if has_calls else "stop"


def _usage(meta: dict[str, Any]) -> dict[str, Any]:
    prompt = int(meta.get("promptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": int(meta.get("cachedContentTokenCount") or 0)},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    token = str(entry.get("token") or "")
    return {"token": token, "logprob": entry.get("logProbability", 0.0),
            "bytes": list(token.encode())}


def _logprobs(result: Any) -> dict[str, Any] | None:
    if not isinstance(result, dict) or not result.get("chosenCandidates"):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result["chosenCandidates"]):
        top = tops[i].get("candidates") or [] if i < len(tops) else []
        content.append({**_token(chosen), "top_logprobs": [_token(t) for t in top]})
    return {"content": content, "refusal": None}
