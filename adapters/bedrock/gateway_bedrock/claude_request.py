"""OpenAI chat.completions batch lines → Bedrock batch records with Claude's Messages body.

A record is `{"recordId": <id>, "modelInput": <InvokeModel body>}`. The body is Anthropic's
Messages request as Bedrock takes it: `anthropic_version: "bedrock-2023-05-31"`, no `model` (the
job's modelId decides), no `stream`, images as base64 only. A field without a faithful Claude
equivalent is refused with `InvalidRequestLine` naming it, rather than dropped. No inverse is
needed: the gateway keeps every input as uploaded.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gateway import InvalidRequestLine

CHAT_URL = "/v1/chat/completions"
ANTHROPIC_VERSION = "bedrock-2023-05-31"

# recordIds are "alphanumeric strings". A custom_id that is one (and does not start with the
# escape) is used as it is; any other is sent as the escape plus its UTF-8 in hex, which maps
# back exactly with no state to keep.
_PLAIN_ID = re.compile(r"[A-Za-z0-9]+")
ESCAPE = "GWX"
_HEX = re.compile(r"(?:[0-9a-f]{2})+")

# Accepted and without effect on a Claude request (or only meaningful to OpenAI's own store).
_IGNORED = frozenset({"model", "store", "metadata", "service_tier", "stream_options"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[^;,]*)*;base64,(.*)", re.S)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any"}


def _bad(field: str, message: str) -> InvalidRequestLine:
    return InvalidRequestLine(field, message)


def record_id(custom_id: str) -> str:
    """The recordId a custom_id travels as (see `custom_id_of`)."""
    if _PLAIN_ID.fullmatch(custom_id) and not custom_id.startswith(ESCAPE):
        return custom_id
    return ESCAPE + custom_id.encode().hex()


def custom_id_of(record: str) -> str:
    """The custom_id a recordId stands for: the inverse of `record_id`."""
    if record.startswith(ESCAPE):
        digits = record[len(ESCAPE):]
        if _HEX.fullmatch(digits):
            try:
                return bytes.fromhex(digits).decode()
            except UnicodeDecodeError:
                pass
    return record


def to_record(line: dict[str, Any], max_tokens: int | None = None) -> dict[str, Any]:
    """One validated OpenAI batch request line as a Bedrock batch record."""
    if line.get("url") != CHAT_URL:
        raise _bad("url", f"Bedrock batches run only {CHAT_URL} requests here, "
                          f"not {line.get('url')!r}.")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _bad("body", "must be an object.")
    return {"recordId": record_id(str(line["custom_id"])),
            "modelInput": claude_body(body, max_tokens)}


def claude_body(body: dict[str, Any], default_max_tokens: int | None = None) -> dict[str, Any]:
    handled = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
               "tools", "tool_choice", "parallel_tool_calls", "user", "stream", "n", "logprobs",
               "top_logprobs", "presence_penalty", "frequency_penalty", "response_format"}
    for key in body:
        if key not in handled and key not in _IGNORED:
            raise _bad(f"body.{key}", "is not supported by Claude on Bedrock.")
    if body.get("stream"):
        raise _bad("body.stream", "batch requests cannot stream.")
    if body.get("n") not in (None, 1):
        raise _bad("body.n", "Claude gives one choice per request.")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        field = "body.logprobs" if body.get("logprobs") else "body.top_logprobs"
        raise _bad(field, "Claude does not return log probabilities.")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise _bad(f"body.{key}", "Claude has no equivalent.")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict)
                                        or response_format.get("type") != "text"):
        raise _bad("body.response_format", "only {\"type\": \"text\"} is mapped for Claude on "
                                           "Bedrock batches.")

    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"anthropic_version": ANTHROPIC_VERSION,
                           "max_tokens": _max_tokens(body, default_max_tokens)}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = messages
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not 0 <= value <= 1:
            raise _bad(f"body.{key}", "Claude takes a number from 0 to 1.")
        out[key] = value
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = _stop(stop)
    tools = body.get("tools")
    if tools:  # an empty list means no tools
        out["tools"] = _tools(tools)
    names = {t["name"] for t in out.get("tools", [])}
    choice = _tool_choice(body.get("tool_choice"), names, body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise _bad("body.user", "must be a string.")
        if user:
            out["metadata"] = {"user_id": user}
    return out


def _max_tokens(body: dict[str, Any], default: int | None) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"body.{key}", "must be an integer of at least 1.")
        return value
    if default is None:
        raise _bad("body.max_tokens", "is required by Claude on Bedrock: set max_tokens (or "
                                      "max_completion_tokens) on the line, or ask the admin for "
                                      "a max_tokens default on the deployment.")
    return default


def _stop(stop: Any) -> list[str]:
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, list) or not values:
        raise _bad("body.stop", "must be a string or a non-empty list of strings.")
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise _bad(f"body.stop[{i}]" if isinstance(stop, list) else "body.stop",
                       "Claude needs stop sequences with a non-whitespace character.")
    return list(values)


# -- messages -----------------------------------------------------------------------------------


def _messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, Claude messages) with same-role turns merged and tool results in
    the user turn that follows the calls."""
    if not isinstance(messages, list) or not messages:
        raise _bad("body.messages", "must be a non-empty list.")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    calls: set[str] = set()  # tool_use ids of earlier assistant turns

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        where = f"body.messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object.")
        for key in message:
            if key not in _MESSAGE_KEYS:
                raise _bad(f"{where}.{key}", "is not supported by Claude on Bedrock.")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend({"type": "text", "text": t}
                          for t in _texts(content, f"{where}.content") if t)
        elif role == "user":
            add("user", _user_blocks(content, f"{where}.content"))
        elif role == "assistant":
            add("assistant", _assistant_blocks(message, where, calls))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in calls:
                raise _bad(f"{where}.tool_call_id", "must name a tool_calls[].id of an earlier "
                                                    "assistant message.")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
            texts = [t for t in _texts(content, f"{where}.content") if t]
            if texts:
                result["content"] = [{"type": "text", "text": t} for t in texts]
            add("user", [result])
        else:
            raise _bad(f"{where}.role", f"role {role!r} is not supported "
                                        "(system, developer, user, assistant, tool).")
    if not out:
        raise _bad("body.messages", "needs a user message: Claude cannot run on a system "
                                    "prompt alone.")
    for message in out:  # tool results go first in their turn, as Claude requires
        if message["role"] == "user":
            message["content"].sort(key=lambda b: b["type"] != "tool_result")
    return system, out


def _texts(content: Any, where: str) -> list[str]:
    """Content that may only carry text (system, developer and tool messages)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{j}]", "only text parts are allowed here.")
            texts.append(part["text"])
        return texts
    raise _bad(where, "must be a string or a list of text parts.")


def _text_block(text: str, where: str) -> dict[str, Any]:
    if not text.strip():
        raise _bad(where, "Claude refuses empty or whitespace-only text.")
    return {"type": "text", "text": text}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text_block(content, where)]
    if not isinstance(content, list) or not content:
        raise _bad(where, "must be a string or a non-empty list of content parts.")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append(_text_block(part["text"], f"{at}.text"))
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), at))
        else:
            raise _bad(at, f"content part type {kind!r} is not supported by Claude on Bedrock "
                           "batches (text and base64 image_url parts).")
    return blocks


def _image(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise _bad(f"{where}.image_url.url", "must be a string.")
    match = _DATA_URI.fullmatch(url)
    if match is None:
        raise _bad(f"{where}.image_url.url", "Bedrock batch records take images as base64 only: "
                                             "send a data: URL (data:image/png;base64,...), not "
                                             "a link.")
    media_type, data = match.group(1).lower(), match.group(2)
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if media_type not in _IMAGE_TYPES:
        raise _bad(f"{where}.image_url.url", f"image type {media_type!r} is not supported by "
                                             "Claude (jpeg, png, gif, webp).")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                        "data": data}}


def _assistant_blocks(message: dict[str, Any], where: str,
                      calls: set[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if content is not None:
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind != "refusal":
                    raise _bad(f"{where}.content[{j}]", "only text parts are allowed here.")
            content = "".join(texts)
        if not isinstance(content, str):
            raise _bad(f"{where}.content", "must be a string or a list of text parts.")
        if content.strip():
            blocks.append({"type": "text", "text": content})
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise _bad(f"{where}.tool_calls", "must be a list.")
        for j, call in enumerate(tool_calls):
            at = f"{where}.tool_calls[{j}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or call.get("type", "function") != "function":
                raise _bad(at, "must be a function call.")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not _TOOL_USE_ID.fullmatch(call_id):
                raise _bad(f"{at}.id", "Claude needs tool call ids of letters, digits, _ and -.")
            name = function.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                raise _bad(f"{at}.function.name", "must match ^[a-zA-Z0-9_-]{1,64}$.")
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except (TypeError, ValueError):
                arguments = None
            if not isinstance(arguments, dict):
                raise _bad(f"{at}.function.arguments", "must be a JSON object in a string.")
            calls.add(call_id)
            blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    if not blocks:
        raise _bad(f"{where}.content", "an assistant message needs text or tool_calls.")
    return blocks


# -- tools ----------------------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("body.tools", "must be a list.")
    out = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"body.tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise _bad(where, "only function tools are supported by Claude on Bedrock.")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name) or name in names:
            raise _bad(f"{where}.function.name", "must be unique and match "
                                                 "^[a-zA-Z0-9_-]{1,64}$.")
        names.add(name)
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _bad(f"{where}.function.parameters", "Claude needs a JSON schema of type "
                                                       "\"object\".")
        entry: dict[str, Any] = {"name": name, "input_schema": schema}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _bad(f"{where}.function.description", "must be a string.")
            entry["description"] = description
        out.append(entry)
    return out


def _tool_choice(choice: Any, names: set[str], parallel: Any) -> dict[str, Any] | None:
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("body.parallel_tool_calls", "must be a boolean.")
    if choice is None:
        return {"type": "auto", "disable_parallel_tool_use": True} \
            if parallel is False and names else None
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        out: dict[str, Any] = {"type": _TOOL_CHOICE[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _bad("body.tool_choice", "must be auto, none, required or a named function.")
    if not names:
        if out["type"] in ("any", "tool"):
            raise _bad("body.tool_choice", f"{choice!r} needs tools.")
        return None
    if out["type"] == "tool" and out["name"] not in names:
        raise _bad("body.tool_choice.function.name", "names no tool in body.tools.")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out
