"""An OpenAI chat-completions request line -> an Anthropic Message Batch request item
`{"custom_id", "params"}` (`params` a Messages API create body).

Everything a line asks for is either mapped or refused with `InvalidRequestLine(field, ...)`,
which the gateway answers at upload as a 400 naming the line and the field. Nothing that changes
what the model is asked is dropped silently; the few fields that are dropped are hints with no
effect on the answer (listed in `_DROPPED`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway import CHAT_COMPLETIONS, InvalidRequestLine

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# What a re-keyed custom_id looks like. An original id of this shape is re-keyed too, so a
# re-keyed id can never equal another line's original one.
REKEYED = re.compile(r"^gw-[0-9a-f]{40}$")
# The key under which a native line carries the client's custom_id when it was re-keyed. It is
# not Anthropic's: the create body is built without it (see `provider.CreateBody`).
ORIGINAL_ID = "_gateway_custom_id"
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DATA_URL = re.compile(r"^data:([\w.+/-]+);base64,(.*)$", re.DOTALL)
USER_ID_MAX = 256

_decode_args = msgspec.json.Decoder().decode

# Fields that have no effect on the answer: accepted and not sent.
_DROPPED = frozenset({
    "model",  # the deployment's model is sent
    "metadata",  # OpenAI's stored-completion tags (only meaningful with `store`)
    "prompt_cache_key",  # OpenAI's cache routing hint; Anthropic caches by cache_control
})


def _is_default(value: Any, *defaults: Any) -> bool:
    return value is None or any(value == d and type(value) is type(d) for d in defaults)


# Fields Anthropic has no equivalent for: accepted only at their "off" value.
_DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "Anthropic returns one choice per request"),
    "logprobs": ((False,), "Anthropic returns no log probabilities"),
    "top_logprobs": ((0,), "Anthropic returns no log probabilities"),
    "presence_penalty": ((0, 0.0), "Anthropic has no presence penalty"),
    "frequency_penalty": ((0, 0.0), "Anthropic has no frequency penalty"),
    "logit_bias": (({},), "Anthropic has no logit bias"),
    "seed": ((), "Anthropic has no seeded sampling"),
    "stream": ((False,), "a batch request cannot stream"),
    "stream_options": ((), "a batch request cannot stream"),
    "store": ((False,), "Anthropic does not store completions for OpenAI"),
    "service_tier": (("auto", "default"), "batches run at Anthropic's batch tier only"),
    "modalities": ((["text"],), "only text output can be mapped"),
    "audio": ((), "audio output cannot be mapped"),
    "prediction": ((), "predicted outputs cannot be mapped"),
    "web_search_options": ((), "web search cannot be mapped"),
    "reasoning_effort": ((), "reasoning effort cannot be mapped to every Claude model"),
    "verbosity": ((), "verbosity cannot be mapped"),
    "functions": ((), "deprecated `functions` are not mapped; use `tools`"),
    "function_call": ((), "deprecated `function_call` is not mapped; use `tool_choice`"),
}

_MAPPED = frozenset({
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools",
    "tool_choice", "parallel_tool_calls", "response_format", "user", "safety_identifier",
})

_MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "refusal", "audio",
                            "function_call"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}


def native_custom_id(custom_id: str) -> str:
    """The id a request goes upstream under: the client's when Anthropic takes it, else
    `gw-` + 40 hex digits of its SHA-256 (deterministic: the same on every rewrite)."""
    if CUSTOM_ID.match(custom_id) and not REKEYED.match(custom_id):
        return custom_id
    return "gw-" + hashlib.sha256(custom_id.encode()).hexdigest()[:40]


def native_tool_id(tool_id: str) -> str:
    """A tool call id as a `tool_use` id (`^[a-zA-Z0-9_-]+$`); others are hashed, the same way
    for the assistant's call and the tool's answer."""
    if TOOL_ID.match(tool_id):
        return tool_id
    return "toolu_gw" + hashlib.sha256(tool_id.encode()).hexdigest()[:24]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _nonblank(text: str) -> bool:
    return bool(text.strip())


@dataclass(frozen=True)
class ChatMapper:
    """One deployment's mapping (`MapLines(ChatMapper(...))`)."""

    model: str
    max_tokens: int | None = None  # the deployment's default
    version: str = "2023-06-01"
    structured_outputs: bool = True

    def __call__(self, line: dict[str, Any]) -> dict[str, Any]:
        if line.get("url") != CHAT_COMPLETIONS:
            # Not run here: capabilities() lists chat completions only, so the gateway never
            # submits such a file to this deployment (another of the group may run it).
            return line
        custom_id = line["custom_id"]
        body = line.get("body")
        if not isinstance(body, dict):
            raise InvalidRequestLine("body", "must be an object")
        item: dict[str, Any] = {"custom_id": native_custom_id(custom_id),
                                "params": self.params(body)}
        if item["custom_id"] != custom_id:
            item[ORIGINAL_ID] = custom_id
        return item

    # -- the body -----------------------------------------------------------------------------

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        for key in body:
            if key in _MAPPED or key in _DROPPED:
                continue
            if key not in _DEFAULT_ONLY:
                raise InvalidRequestLine(
                    f"body.{key}", "not a chat completions field this adapter can map to "
                    "Anthropic's Messages API")
            defaults, why = _DEFAULT_ONLY[key]
            if not _is_default(body[key], *defaults):
                raise InvalidRequestLine(f"body.{key}", f"cannot be mapped: {why}")
        system, messages = _Messages().convert(body.get("messages"))
        params: dict[str, Any] = {"model": self.model, "max_tokens": self._max_tokens(body)}
        if system:
            params["system"] = system
        params["messages"] = messages
        self._sampling(body, params)
        stop = _stop(body.get("stop"))
        if stop:
            params["stop_sequences"] = stop
        self._tools(body, params)
        self._response_format(body.get("response_format"), params)
        user = body.get("safety_identifier")
        where = "body.safety_identifier"
        if user is None:
            user, where = body.get("user"), "body.user"
        if user is not None:
            if not isinstance(user, str) or len(user) > USER_ID_MAX:
                raise InvalidRequestLine(where, f"must be a string of at most {USER_ID_MAX} "
                                                "characters (Anthropic's metadata.user_id)")
            if user:
                params["metadata"] = {"user_id": user}
        return params

    def _max_tokens(self, body: dict[str, Any]) -> int:
        for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequestLine(f"body.{name}", "must be an integer of at least 1")
            return value
        if self.max_tokens is None:
            raise InvalidRequestLine(
                "body.max_tokens", "Anthropic requires max_tokens: set max_tokens or "
                "max_completion_tokens on the line (this model group has no default)")
        return self.max_tokens

    def _sampling(self, body: dict[str, Any], params: dict[str, Any]) -> None:
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is None:
                continue
            if self.version == "2026-10-21":
                raise InvalidRequestLine(
                    f"body.{name}", "not accepted by this deployment (anthropic-version "
                    "2026-10-21 removed sampling parameters)")
            if not _number(value) or not 0 <= value <= 1:
                raise InvalidRequestLine(
                    f"body.{name}", "must be a number from 0 to 1 here (Anthropic's range; "
                    "OpenAI's temperature goes to 2)")
            params[name] = value

    def _tools(self, body: dict[str, Any], params: dict[str, Any]) -> None:
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise InvalidRequestLine("body.tools", "must be a list")
        native: list[dict[str, Any]] = []
        for i, tool in enumerate(tools or ()):
            native.append(self._tool(tool, f"body.tools[{i}]"))
            if native[-1]["name"] in {t["name"] for t in native[:-1]}:
                raise InvalidRequestLine(f"body.tools[{i}].function.name",
                                         "tool names must be unique")
        names = {t["name"] for t in native}
        choice = _tool_choice(body.get("tool_choice"), names)
        if not native:
            if choice is not None and choice["type"] in ("any", "tool"):
                raise InvalidRequestLine("body.tool_choice", "requires tools")
            choice = None  # "auto" / "none" without tools ask for nothing
        parallel = body.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            raise InvalidRequestLine("body.parallel_tool_calls", "must be a boolean")
        if parallel is False and native and (choice is None or choice["type"] != "none"):
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if native:
            params["tools"] = native
        if choice is not None:
            params["tool_choice"] = choice

    def _tool(self, tool: Any, where: str) -> dict[str, Any]:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequestLine(f"{where}.type", "only function tools can be mapped")
        extra = set(tool) - {"type", "function"}
        if extra:
            raise InvalidRequestLine(f"{where}.{min(extra)}", "not a function tool field")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequestLine(f"{where}.function", "must be an object")
        extra = set(fn) - {"name", "description", "parameters", "strict"}
        if extra:
            raise InvalidRequestLine(f"{where}.function.{min(extra)}", "not a function field")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidRequestLine(f"{where}.function.name",
                                     "must match ^[a-zA-Z0-9_-]{1,64}$")
        schema = fn.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise InvalidRequestLine(f"{where}.function.parameters",
                                     "must be a JSON schema of type object (Anthropic's "
                                     "input_schema)")
        out: dict[str, Any] = {"name": name}
        description = fn.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise InvalidRequestLine(f"{where}.function.description", "must be a string")
            if description:
                out["description"] = description
        out["input_schema"] = schema
        strict = fn.get("strict")
        if strict is True:
            if not self.structured_outputs:
                raise InvalidRequestLine(f"{where}.function.strict",
                                         "this deployment's model has no strict tool use")
            out["strict"] = True
        elif strict not in (None, False):
            raise InvalidRequestLine(f"{where}.function.strict", "must be a boolean")
        return out

    def _response_format(self, fmt: Any, params: dict[str, Any]) -> None:
        if fmt is None:
            return
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return
        if kind == "json_object":
            raise InvalidRequestLine("body.response_format.type",
                                     "Anthropic has no JSON mode without a schema; use "
                                     "json_schema")
        if kind != "json_schema":
            raise InvalidRequestLine("body.response_format.type",
                                     "must be text or json_schema")
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestLine("body.response_format.json_schema.schema",
                                     "a JSON schema object is required")
        if not self.structured_outputs:
            raise InvalidRequestLine("body.response_format",
                                     "this deployment's model has no structured outputs")
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequestLine("body.stop", "must be a string or a list of strings")
    if not all(_nonblank(s) for s in items):
        raise InvalidRequestLine("body.stop", "Anthropic refuses stop sequences that are "
                                              "empty or only whitespace")
    return list(items)


def _tool_choice(choice: Any, names: set[str]) -> dict[str, Any] | None:
    if choice is None:
        return None
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or name not in names:
            raise InvalidRequestLine("body.tool_choice.function.name",
                                     "must name one of the request's tools")
        return {"type": "tool", "name": name}
    raise InvalidRequestLine("body.tool_choice",
                             "must be auto, none, required or a named function")


# -- messages ---------------------------------------------------------------------------------


class _Messages:
    """OpenAI messages -> (system, messages). System and developer messages become `system`
    (in order, wherever they stand); tool messages become `tool_result` blocks at the start of
    a user turn (consecutive ones merged, a following user message joins that turn after them);
    each assistant `tool_calls` must be answered by tool messages before the next message."""

    def __init__(self) -> None:
        self.system: list[str] = []
        self.turns: list[dict[str, Any]] = []
        self.awaiting: dict[str, str] = {}  # native tool id -> where it was asked (field)
        self.asked_at = ""

    def convert(self, messages: Any) -> tuple[str | list[dict[str, Any]] | None,
                                              list[dict[str, Any]]]:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestLine("body.messages", "at least one message is required")
        last = 0
        for i, message in enumerate(messages):
            where = f"body.messages[{i}]"
            if not isinstance(message, dict):
                raise InvalidRequestLine(where, "must be an object")
            role = message.get("role")
            if role == "function":
                raise InvalidRequestLine(f"{where}.role",
                                         "the deprecated function role is not mapped; use tools")
            if not isinstance(role, str) or role not in _MESSAGE_KEYS:
                raise InvalidRequestLine(f"{where}.role", f"role {role!r} cannot be mapped")
            extra = set(message) - _MESSAGE_KEYS[role]
            if extra:
                raise InvalidRequestLine(f"{where}.{min(extra)}",
                                         f"not a field of a {role} message that can be mapped")
            if role in ("system", "developer"):
                self.system += [t for t in _texts(message.get("content"), f"{where}.content")
                                if _nonblank(t)]
                continue
            if role == "tool":
                self._tool_result(message, where)
            else:
                self._unanswered()
                if role == "user":
                    self._add("user", _user_content(message.get("content"), where))
                else:
                    self._add("assistant", self._assistant(message, where))
            last = i
        self._unanswered()
        for turn in self.turns:
            turn.pop("tool_results", None)
        if not self.turns:
            raise InvalidRequestLine("body.messages",
                                     "at least one user or assistant message is required")
        final = self.turns[-1]
        if final["role"] == "assistant":
            content = final["content"]
            text = content if isinstance(content, str) else content[-1].get("text", "x")
            if text != text.rstrip():
                raise InvalidRequestLine(f"body.messages[{last}].content",
                                         "a final assistant message (prefill) cannot end with "
                                         "whitespace")
        system: str | list[dict[str, Any]] | None = None
        if len(self.system) == 1:
            system = self.system[0]
        elif self.system:
            system = [{"type": "text", "text": t} for t in self.system]
        return system, self.turns

    def _add(self, role: str, content: str | list[dict[str, Any]]) -> None:
        """A turn; consecutive turns of one role are merged (as Anthropic itself does)."""
        if self.turns and self.turns[-1]["role"] == role:
            previous = self.turns[-1]
            previous["content"] = _blocks(previous["content"]) + _blocks(content)
        else:
            self.turns.append({"role": role, "content": content})

    def _unanswered(self) -> None:
        if self.awaiting:
            raise InvalidRequestLine(
                self.asked_at, f"tool call {next(iter(self.awaiting.values()))!r} has no tool "
                "message answering it before the next message")

    def _assistant(self, message: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
        for name in ("audio", "function_call"):
            if message.get(name) is not None:
                raise InvalidRequestLine(f"{where}.{name}", "cannot be mapped")
        content = message.get("content")
        blocks: list[dict[str, Any]] = []
        if isinstance(content, list):
            for j, part in enumerate(content):
                at = f"{where}.content[{j}]"
                if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                    raise InvalidRequestLine(at, "assistant content parts must be text or "
                                                 "refusal")
                text = part.get(part["type"])
                if not isinstance(text, str):
                    raise InvalidRequestLine(f"{at}.{part['type']}", "must be a string")
                if _nonblank(text):
                    blocks.append({"type": "text", "text": text})
        elif isinstance(content, str):
            if _nonblank(content):
                blocks.append({"type": "text", "text": content})
        elif content is not None:
            raise InvalidRequestLine(f"{where}.content", "must be a string, a list or null")
        refusal = message.get("refusal")
        if isinstance(refusal, str) and _nonblank(refusal):
            blocks.append({"type": "text", "text": refusal})
        elif refusal is not None and not isinstance(refusal, str):
            raise InvalidRequestLine(f"{where}.refusal", "must be a string")
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise InvalidRequestLine(f"{where}.tool_calls", "must be a list")
        for j, call in enumerate(calls or ()):
            blocks.append(self._tool_use(call, f"{where}.tool_calls[{j}]"))
        if calls:
            self.asked_at = f"{where}.tool_calls"
        if not blocks:
            raise InvalidRequestLine(f"{where}.content", "an assistant message needs text or "
                                                         "tool calls (Anthropic refuses empty "
                                                         "content)")
        if len(blocks) == 1 and blocks[0]["type"] == "text" and isinstance(content, str):
            return content
        return blocks

    def _tool_use(self, call: Any, where: str) -> dict[str, Any]:
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise InvalidRequestLine(f"{where}.type", "only function tool calls can be mapped")
        call_id, fn = call.get("id"), call.get("function")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequestLine(f"{where}.id", "must be a non-empty string")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestLine(f"{where}.function.name", "must be a string")
        arguments = fn.get("arguments") or "{}"
        try:
            parsed = _decode_args(arguments) if isinstance(arguments, str) else None
        except msgspec.DecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequestLine(f"{where}.function.arguments",
                                     "must be a JSON object (Anthropic's tool_use input)")
        native = native_tool_id(call_id)
        if native in self.awaiting:
            raise InvalidRequestLine(f"{where}.id", "tool call ids must be unique")
        self.awaiting[native] = call_id
        return {"type": "tool_use", "id": native, "name": fn["name"], "input": parsed}

    def _tool_result(self, message: dict[str, Any], where: str) -> None:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or native_tool_id(call_id) not in self.awaiting:
            raise InvalidRequestLine(f"{where}.tool_call_id", "must answer a tool call of the "
                                                              "assistant message before it")
        native = native_tool_id(call_id)
        del self.awaiting[native]
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": native}
        texts = [t for t in _texts(message.get("content"), f"{where}.content") if t]
        if len(texts) == 1:
            block["content"] = texts[0]
        elif texts:
            block["content"] = [{"type": "text", "text": t} for t in texts]
        previous = self.turns[-1] if self.turns else None
        if previous is not None and previous["role"] == "user" and previous.get("tool_results"):
            previous["content"].append(block)
        else:
            self.turns.append({"role": "user", "content": [block]})
        self.turns[-1]["tool_results"] = True  # a turn of tool results; dropped at the end


def _texts(content: Any, where: str) -> list[str]:
    """Text-only content (system, developer, tool): a string or a list of text parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequestLine(f"{where}[{j}]", "only text parts can be mapped here")
            if not isinstance(part.get("text"), str):
                raise InvalidRequestLine(f"{where}[{j}].text", "must be a string")
            out.append(part["text"])
        return out
    raise InvalidRequestLine(where, "must be a string or a list of text parts")


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        if not _nonblank(content):
            raise InvalidRequestLine(f"{where}.content", "Anthropic refuses empty user content")
        return content
    if not isinstance(content, list) or not content:
        raise InvalidRequestLine(f"{where}.content", "must be a string or a non-empty list "
                                                     "of parts")
    return [_user_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]


def _user_part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str) or not _nonblank(text):
            raise InvalidRequestLine(f"{where}.text", "must be text that is not only whitespace")
        return {"type": "text", "text": text}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InvalidRequestLine(f"{where}.image_url.url", "must be a string")
        found = DATA_URL.match(url)
        if found:
            media_type, data = found.groups()
            if media_type not in IMAGE_TYPES:
                raise InvalidRequestLine(f"{where}.image_url.url",
                                         f"image type {media_type!r} not taken (jpeg, png, "
                                         "gif, webp)")
            return {"type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": data}}
        if url.startswith(("https://", "http://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise InvalidRequestLine(f"{where}.image_url.url",
                                 "must be an http(s) URL or a base64 data URL")
    if kind == "file":
        file = part.get("file")
        data_url = file.get("file_data") if isinstance(file, dict) else None
        found = DATA_URL.match(data_url) if isinstance(data_url, str) else None
        if not found or found.group(1) != "application/pdf":
            raise InvalidRequestLine(f"{where}.file", "only PDF file_data (a base64 data URL) "
                                                      "can be mapped; file ids cannot")
        return {"type": "document", "source": {"type": "base64",
                                               "media_type": "application/pdf",
                                               "data": found.group(2)}}
    raise InvalidRequestLine(f"{where}.type", f"content part type {kind!r} cannot be mapped")


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content
