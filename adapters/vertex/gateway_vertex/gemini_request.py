"""OpenAI chat.completions batch lines → Gemini batch lines (`{"request": ...}`).

The mapping is the table in the design's provider reference (Vertex, OpenAI → Gemini). A field
that has no faithful Gemini equivalent is refused with `InvalidRequestLine` naming it, rather
than dropped: a batch silently run without `logit_bias` or with a wrong role costs money and
gives wrong answers. No inverse is needed: the gateway keeps every input as uploaded.
"""

from __future__ import annotations

import json
import mimetypes
import re
from typing import Any
from urllib.parse import urlparse

from gateway import InvalidRequestLine
from gateway_vertex import labels

CHAT_URL = "/v1/chat/completions"
CUSTOM_ID_LABEL = "gw_cid"
USER_LABEL = "user"

# Accepted and without effect on a Gemini batch request.
_IGNORED = frozenset({"model", "parallel_tool_calls", "store", "service_tier", "stream_options"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
_NUMBERS: dict[str, tuple[str, bool]] = {  # OpenAI field -> (generationConfig field, integer)
    "temperature": ("temperature", False),
    "top_p": ("topP", False),
    "n": ("candidateCount", True),
    "presence_penalty": ("presencePenalty", False),
    "frequency_penalty": ("frequencyPenalty", False),
    "seed": ("seed", True),
    "top_logprobs": ("logprobs", True),
}
_TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_THINKING_BUDGET = {"none": 0, "minimal": 128, "low": 1024, "medium": 8192, "high": 24576}
_THINKING_LEVEL = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}
_DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[^;,]*)*;base64,(.*)", re.S)
_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3"}


def _bad(field: str, message: str) -> InvalidRequestLine:
    return InvalidRequestLine(field, message)


# -- OpenAI → Gemini ------------------------------------------------------------------------------


def to_gemini(line: dict[str, Any], model: str) -> dict[str, Any]:
    """One validated OpenAI batch request line as a Gemini batch input line."""
    if line.get("url") != CHAT_URL:
        raise _bad("url", f"Vertex AI Gemini batches run only {CHAT_URL} requests, "
                          f"not {line.get('url')!r}.")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _bad("body", "must be an object.")
    request = _request(body, model)
    tags = request.pop("labels", {})
    cid = labels.encode(CUSTOM_ID_LABEL, str(line["custom_id"]))
    if len(tags) + len(cid) > labels.MAX_LABELS:
        field = "custom_id" if len(cid) > labels.MAX_LABELS // 2 else "body.metadata"
        raise _bad(field, "custom_id plus metadata do not fit in Vertex AI's 64 request labels; "
                          "shorten the custom_id or send fewer metadata keys.")
    request["labels"] = {**tags, **cid}
    return {"request": request}


def _request(body: dict[str, Any], model: str) -> dict[str, Any]:
    handled = {"messages", "max_tokens", "max_completion_tokens", "stop", "logprobs",
               "response_format", "tools", "tool_choice", "reasoning_effort", "user",
               "metadata", "stream", *_NUMBERS}
    for key in body:
        if key not in handled and key not in _IGNORED:
            raise _bad(f"body.{key}", "is not supported by Vertex AI Gemini batch prediction.")
    if body.get("stream"):
        raise _bad("body.stream", "batch requests cannot stream.")

    contents, system = _contents(body.get("messages"))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(body, model)
    if config:
        request["generationConfig"] = config
    tools = body.get("tools")
    if tools is not None:
        request["tools"] = [{"functionDeclarations": _functions(tools)}]
    if body.get("tool_choice") is not None:
        request["toolConfig"] = {"functionCallingConfig": _tool_choice(body["tool_choice"])}
    tags = _labels(body)
    if tags:
        request["labels"] = tags
    return request


def _contents(messages: Any) -> tuple[list[dict[str, Any]], list[str]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("body.messages", "must be a non-empty list.")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, for tool messages
    last_was_tool = False
    for i, message in enumerate(messages):
        where = f"body.messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object.")
        for key in message:
            if key not in _MESSAGE_KEYS:
                raise _bad(f"{where}.{key}", "is not supported by Vertex AI Gemini.")
        role = message.get("role")
        content = message.get("content")
        is_tool = role == "tool"
        if role in ("system", "developer"):
            system.append(_text(content, f"{where}.content"))
        elif role == "user":
            contents.append({"role": "user", "parts": _user_parts(content, f"{where}.content")})
        elif role == "assistant":
            contents.append({"role": "model", "parts": _assistant_parts(message, where,
                                                                        call_names)})
        elif is_tool:
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in call_names:
                raise _bad(f"{where}.tool_call_id", "must name a tool_calls[].id of an earlier "
                                                    "assistant message.")
            part = {"functionResponse": {
                "name": call_names[call_id],
                "response": {"content": _text(content, f"{where}.content")},
            }}
            # Gemini wants all responses to one turn's calls in one content.
            if last_was_tool:
                contents[-1]["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        else:
            raise _bad(f"{where}.role", f"role {role!r} is not supported "
                                        "(system, developer, user, assistant, tool).")
        last_was_tool = is_tool
    if not contents:
        raise _bad("body.messages", "needs a user message: Gemini cannot run on a system "
                                    "instruction alone.")
    return contents, system


def _text(content: Any, where: str) -> str:
    """Content that may only carry text (system, developer and tool messages)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{j}]", "only text parts are allowed here.")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(where, "must be a string or a list of text parts.")


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list) or not content:
        raise _bad(where, "must be a string or a non-empty list of content parts.")
    parts = []
    for j, part in enumerate(content):
        w = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media(url, f"{w}.image_url.url", "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime = _AUDIO_MIME.get(str(audio.get("format")))
            if mime is None or not isinstance(audio.get("data"), str):
                raise _bad(f"{w}.input_audio", "needs base64 data and format wav or mp3.")
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") or {}
            data = file.get("file_data")
            if not isinstance(data, str):
                raise _bad(f"{w}.file", "only inline file_data is supported (file_id refers to "
                                        "an OpenAI file that Vertex AI cannot read).")
            if not data.startswith("data:"):
                guessed = mimetypes.guess_type(str(file.get("filename") or ""))[0]
                data = f"data:{guessed or 'application/pdf'};base64,{data}"
            parts.append(_media(data, f"{w}.file.file_data", "application/pdf"))
        else:
            raise _bad(f"{w}.type", f"content part {kind!r} is not supported by Vertex AI "
                                    "Gemini (text, image_url, input_audio, file).")
    return parts


def _media(url: Any, where: str, default_mime: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise _bad(where, "must be a URL or a data: URI.")
    if url.startswith("data:"):
        match = _DATA_URI.fullmatch(url)
        if not match:
            raise _bad(where, "a data: URI must look like data:<mime type>;base64,<data>.")
        return {"inlineData": {"mimeType": match[1], "data": match[2]}}
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https", "gs"):
        raise _bad(where, f"URL scheme {scheme!r} is not supported (http, https, gs, data).")
    mime = mimetypes.guess_type(urlparse(url).path)[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _assistant_parts(
    message: dict[str, Any], where: str, call_names: dict[str, str]
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            text = part.get("text", part.get("refusal")) if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise _bad(f"{where}.content[{j}]", "only text or refusal parts are allowed.")
            parts.append({"text": text})
    elif isinstance(content, str):
        if content:
            parts.append({"text": content})
    elif content is not None:
        raise _bad(f"{where}.content", "must be a string, a list of parts or null.")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _bad(f"{where}.tool_calls", "must be a list.")
    for j, call in enumerate(calls):
        w = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"{w}.function", "needs a name and arguments.")
        try:
            args = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = None
        if not isinstance(args, dict):
            raise _bad(f"{w}.function.arguments", "must be a JSON object encoded as a string.")
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = function["name"]
        parts.append({"functionCall": {"name": function["name"], "args": args}})
    return parts or [{"text": ""}]


def _generation_config(body: dict[str, Any], model: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for field in ("max_completion_tokens", "max_tokens"):  # the newer name wins
        if body.get(field) is not None:
            config["maxOutputTokens"] = _number(body[field], f"body.{field}", integer=True, low=1)
            break
    for key, (target, integer) in _NUMBERS.items():
        if body.get(key) is not None:
            config[target] = _number(body[key], f"body.{key}", integer=integer)
    if "candidateCount" in config and config["candidateCount"] < 1:
        raise _bad("body.n", "must be at least 1.")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("body.stop", "must be a string or a list of strings.")
        config["stopSequences"] = stops
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, bool):
            raise _bad("body.logprobs", "must be a boolean.")
        if logprobs:
            config["responseLogprobs"] = True
    config.update(_response_format(body.get("response_format")))
    effort = body.get("reasoning_effort")
    if effort is not None:
        config["thinkingConfig"] = _thinking(effort, model)
    return config


def _number(value: Any, where: str, *, integer: bool, low: float | None = None) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise _bad(where, "must be an integer." if integer else "must be a number.")
    if low is not None and value < low:
        raise _bad(where, f"must be at least {low}.")
    return value


def _response_format(fmt: Any) -> dict[str, Any]:
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise _bad("body.response_format.json_schema", "must be an object with a schema.")
        schema = spec.get("schema")
        if schema is None:
            return {"responseMimeType": "application/json"}
        if not isinstance(schema, dict):
            raise _bad("body.response_format.json_schema.schema", "must be a JSON Schema object.")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise _bad("body.response_format.type", "must be text, json_object or json_schema.")


def _thinking(effort: Any, model: str) -> dict[str, Any]:
    # Which efforts are valid must not depend on the model: the core dry-runs one deployment
    # per adapter, so a line accepted there has to be accepted by every Vertex deployment.
    if effort not in _THINKING_BUDGET:
        raise _bad("body.reasoning_effort", f"must be one of {', '.join(_THINKING_BUDGET)}.")
    generation = re.search(r"gemini-(\d+)", model)
    if generation and int(generation[1]) >= 3:
        # Gemini 3 replaced token budgets with levels and cannot switch thinking off: "none"
        # gets the least thinking there is.
        return {"thinkingLevel": _THINKING_LEVEL.get(effort, "MINIMAL")}
    return {"thinkingBudget": _THINKING_BUDGET[effort]}


def _functions(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not tools:
        raise _bad("body.tools", "must be a non-empty list.")
    declarations = []
    for i, tool in enumerate(tools):
        where = f"body.tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"{where}.type", "only function tools are supported by Vertex AI Gemini.")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"{where}.function.name", "is required.")
        declaration: dict[str, Any] = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        if function.get("parameters") is not None:
            if not isinstance(function["parameters"], dict):
                raise _bad(f"{where}.function.parameters", "must be a JSON Schema object.")
            declaration["parameters"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        return {"mode": _TOOL_CHOICE[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise _bad("body.tool_choice", "must be auto, none, required or "
                                   '{"type": "function", "function": {"name": ...}}.')


def _labels(body: dict[str, Any]) -> dict[str, str]:
    tags: dict[str, str] = {}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise _bad("body.metadata", "must map strings to strings.")
        for key, value in metadata.items():
            tags[labels.sanitise_key(key)] = labels.sanitise_value(value)
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise _bad("body.user", "must be a string.")
        tags[USER_LABEL] = labels.sanitise_value(user)
    # Our own keys are reserved: a user's `gw_cid` must not shadow the custom_id.
    return {k: v for k, v in tags.items() if not k.startswith("gw_")}

