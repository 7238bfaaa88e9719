"""OpenAI chat request lines -> Anthropic batch request items: what is mapped, and what is
refused (with the field named). Every mapped item is also checked with the fake's copy of the
Messages API's own rules (`check_params`), so a mapping the real API would refuse fails here."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import msgspec
import pytest
from gateway_anthropic import AnthropicProvider, ChatMapper, native_custom_id
from gateway_anthropic.mapping import ORIGINAL_ID
from gateway_anthropic.params import AnthropicParams
from gateway_anthropic.testing import check_params

from adapters.anthropic.tests.anthropic_support import MODEL, request_line
from gateway import InvalidRequestLine, ProviderContext
from gateway.testing.conformance import deployment_for, native_lines
from gateway.testing.memory import MemoryState

MAPPER = ChatMapper(model=MODEL)


def body(**fields: Any) -> dict[str, Any]:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    fields.setdefault("max_tokens", 10)
    return {"model": "claude-batch", **fields}


def mapped(mapper: ChatMapper = MAPPER, version: str = "2023-06-01", custom_id: str = "r1",
           **fields: Any) -> dict[str, Any]:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body(**fields)}
    item = mapper(copy.deepcopy(line))
    problem = check_params(item["params"], version)
    assert problem is None, f"Anthropic would refuse {item['params']}: {problem}"
    return item


def params(mapper: ChatMapper = MAPPER, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = mapped(mapper, mapper.version, **fields)["params"]
    return out


def refused(mapper: ChatMapper = MAPPER, **fields: Any) -> InvalidRequestLine:
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": body(**fields)}
    with pytest.raises(InvalidRequestLine) as info:
        mapper(line)
    return info.value


# -- what is mapped ----------------------------------------------------------------------------


def test_basic_line() -> None:
    line = request_line("req-1")
    assert MAPPER(copy.deepcopy(line)) == {"custom_id": "req-1", "params": {
        "model": MODEL, "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello to req-1"}],
    }}


def test_system_and_developer_messages_become_system_in_order() -> None:
    out = params(messages=[
        {"role": "system", "content": "One."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Two."},
                                          {"type": "text", "text": "Three."}]},
        {"role": "system", "content": "   "},  # nothing to say: left out
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ])
    assert out["system"] == [{"type": "text", "text": t} for t in ("One.", "Two.", "Three.")]
    assert out["messages"] == [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"},
                               {"role": "user", "content": "again"}]


def test_multi_turn_and_same_role_turns_merged() -> None:
    out = params(messages=[
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c", "name": "bot"},
        {"role": "user", "content": "d", "name": "alice"},
    ])
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert "system" not in out


def test_prefill_final_assistant_message() -> None:
    out = params(messages=[{"role": "user", "content": "JSON please"},
                           {"role": "assistant", "content": "{"}])
    assert out["messages"][-1] == {"role": "assistant", "content": "{"}


def test_images() -> None:
    out = params(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                            "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    assert out["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_pdf_file_data_becomes_a_document() -> None:
    out = params(messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf",
                                  "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "text", "text": "Summarise."},
    ]}])
    assert out["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_tools_and_tool_choice() -> None:
    out = params(tools=[WEATHER, TIME], tool_choice="required")
    assert out["tools"] == [
        {"name": "get_weather", "description": "Weather for a city",
         "input_schema": WEATHER["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "any"}
    assert params(tools=[WEATHER], tool_choice="auto")["tool_choice"] == {"type": "auto"}
    assert params(tools=[WEATHER], tool_choice="none")["tool_choice"] == {"type": "none"}
    named = {"type": "function", "function": {"name": "get_time"}}
    assert params(tools=[WEATHER, TIME], tool_choice=named)["tool_choice"] == {
        "type": "tool", "name": "get_time"}
    assert "tool_choice" not in params(tools=[WEATHER])
    # Without tools, auto / none ask for nothing.
    assert "tool_choice" not in params(tool_choice="auto")
    assert "tools" not in params(tools=[], tool_choice="none")


def test_parallel_tool_calls_false() -> None:
    assert params(tools=[WEATHER], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert params(tools=[WEATHER], tool_choice="required",
                  parallel_tool_calls=False)["tool_choice"] == {
        "type": "any", "disable_parallel_tool_use": True}
    assert params(tools=[WEATHER], tool_choice="none",
                  parallel_tool_calls=False)["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in params(tools=[WEATHER], parallel_tool_calls=True)


def test_strict_tool() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    assert params(tools=[strict])["tools"][0]["strict"] is True
    assert "strict" not in params(tools=[{"type": "function", "function": {
        **WEATHER["function"], "strict": False}}])["tools"][0]


def test_tool_history() -> None:
    out = params(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call:2", "type": "function",  # not a tool_use id: hashed, both sides
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
        {"role": "tool", "tool_call_id": "call:2",
         "content": [{"type": "text", "text": "25"}, {"type": "text", "text": "C"}]},
        {"role": "user", "content": "Thanks. Which is warmer?"},
    ])
    assistant, results = out["messages"][1], out["messages"][2]
    second = assistant["content"][2]["id"]
    assert second != "call:2" and second.startswith("toolu_gw")
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": second, "name": "get_weather", "input": {"city": "Rome"}},
    ]}
    # The tool messages are one user turn; the user's next words follow in the same turn.
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
        {"type": "tool_result", "tool_use_id": second,
         "content": [{"type": "text", "text": "25"}, {"type": "text", "text": "C"}]},
        {"type": "text", "text": "Thanks. Which is warmer?"},
    ]}
    assert len(out["messages"]) == 3


def test_assistant_tool_call_without_text() -> None:
    out = params(tools=[WEATHER], messages=[
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": ""},
    ])
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {}}]
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c1"}]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"max_tokens": 50}, 50),
    ({"max_completion_tokens": 70}, 70),
    ({"max_tokens": 50, "max_completion_tokens": 70}, 70),  # the newer name wins
])
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    line = {"custom_id": "x", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}], **fields}}
    assert MAPPER(line)["params"]["max_tokens"] == expected


def test_max_tokens_default_from_params() -> None:
    mapper = ChatMapper(model=MODEL, max_tokens=256)
    line = {"custom_id": "x", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}]}}
    assert mapper(line)["params"]["max_tokens"] == 256
    line["body"]["max_tokens"] = 5
    assert mapper(line)["params"]["max_tokens"] == 5


def test_sampling_stop_and_user() -> None:
    out = params(temperature=0.7, top_p=0.9, stop="END", user="user-42")
    assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (0.7, 0.9, ["END"])
    assert out["metadata"] == {"user_id": "user-42"}
    out = params(stop=["A", "B"], temperature=0, safety_identifier="hash-1", user="other")
    assert out["stop_sequences"] == ["A", "B"] and out["temperature"] == 0
    assert out["metadata"] == {"user_id": "hash-1"}


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    out = params(response_format={"type": "json_schema",
                                  "json_schema": {"name": "a", "strict": True,
                                                  "schema": schema}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in params(response_format={"type": "text"})


def test_harmless_fields_are_accepted() -> None:
    out = params(n=1, stream=False, logprobs=False, presence_penalty=0, frequency_penalty=0.0,
                 logit_bias={}, store=False, metadata={"team": "a"}, service_tier="auto",
                 modalities=["text"], prompt_cache_key="k", seed=None, top_logprobs=None,
                 stream_options=None, user="")
    assert set(out) == {"model", "max_tokens", "messages"}


def test_version_2026_takes_no_sampling() -> None:
    mapper = ChatMapper(model=MODEL, version="2026-10-21")
    assert "temperature" not in params(mapper)
    assert refused(mapper, temperature=1).field == "body.temperature"
    assert refused(mapper, top_p=0.5).field == "body.top_p"


def test_other_endpoints_pass_through() -> None:
    line = {"custom_id": "e", "url": "/v1/embeddings", "body": {"model": "x", "input": "a"}}
    assert MAPPER(copy.deepcopy(line)) == line  # never submitted here (capabilities)


# -- custom ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("custom_id", ["req-1", "A_b-9", "x" * 64, "gw-abc"])
def test_custom_ids_anthropic_takes_are_kept(custom_id: str) -> None:
    item = mapped(custom_id=custom_id)
    assert item["custom_id"] == custom_id and ORIGINAL_ID not in item


@pytest.mark.parametrize("custom_id", ["has space", "a.b", "x" * 65, "ünï", "",
                                       "gw-" + "0" * 40])
def test_other_custom_ids_are_rekeyed(custom_id: str) -> None:
    item = mapped(custom_id=custom_id)
    assert item["custom_id"] == native_custom_id(custom_id)
    assert item["custom_id"].startswith("gw-") and len(item["custom_id"]) == 43
    assert item["custom_id"] != custom_id and item[ORIGINAL_ID] == custom_id
    assert mapped(custom_id=custom_id)["custom_id"] == item["custom_id"]  # deterministic


# -- what is refused, naming the field -----------------------------------------------------------

REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"n": 2}, "body.n"),
    ({"logprobs": True}, "body.logprobs"),
    ({"top_logprobs": 3}, "body.top_logprobs"),
    ({"presence_penalty": 0.5}, "body.presence_penalty"),
    ({"frequency_penalty": -1}, "body.frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "body.logit_bias"),
    ({"seed": 7}, "body.seed"),
    ({"stream": True}, "body.stream"),
    ({"stream_options": {"include_usage": True}}, "body.stream_options"),
    ({"store": True}, "body.store"),
    ({"service_tier": "priority"}, "body.service_tier"),
    ({"modalities": ["text", "audio"]}, "body.modalities"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "body.audio"),
    ({"reasoning_effort": "high"}, "body.reasoning_effort"),
    ({"functions": [{"name": "f"}]}, "body.functions"),
    ({"top_k": 5}, "body.top_k"),
    ({"something_new": 1}, "body.something_new"),
    ({"temperature": 1.5}, "body.temperature"),
    ({"temperature": "hot"}, "body.temperature"),
    ({"top_p": 2}, "body.top_p"),
    ({"max_tokens": 0}, "body.max_tokens"),
    ({"max_tokens": True}, "body.max_tokens"),
    ({"max_completion_tokens": "10"}, "body.max_completion_tokens"),
    ({"stop": ["ok", " "]}, "body.stop"),
    ({"stop": 5}, "body.stop"),
    ({"user": "u" * 257}, "body.user"),
    ({"response_format": {"type": "json_object"}}, "body.response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "body.response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "body.response_format.type"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "body.tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]},
     "body.tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f",
                                                  "parameters": {"type": "array"}}}]},
     "body.tools[0].function.parameters"),
    ({"tools": [TIME, TIME]}, "body.tools[1].function.name"),
    ({"tools": {"a": 1}}, "body.tools"),
    ({"tool_choice": "required"}, "body.tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "body.tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "body.tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, "body.tool_choice"),
    ({"messages": []}, "body.messages"),
    ({"messages": "hi"}, "body.messages"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "body.messages"),
    ({"messages": [{"role": "critic", "content": "x"}]}, "body.messages[0].role"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]},
     "body.messages[0].role"),
    ({"messages": [{"role": "user", "content": "x", "cache_control": {}}]},
     "body.messages[0].cache_control"),
    ({"messages": [{"role": "user", "content": ""}]}, "body.messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "body.messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}]}]},
     "body.messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {"data": "x"}}]}]},
     "body.messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/tiff;base64,AAAA"}}]}]}, "body.messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "ftp://example.com/a.png"}}]}]}, "body.messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {
        "file_id": "file-abc"}}]}]}, "body.messages[0].content[0].file"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {
        "url": "https://x/y.png"}}]}, {"role": "user", "content": "hi"}]},
     "body.messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     "body.messages[1].content"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "Sure "}]}, "body.messages[1].content"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "x", "function_call": {"name": "f"}}]},
     "body.messages[1].function_call"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                         "function": {"name": "f",
                                                                      "arguments": "[1]"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "x"}]},
     "body.messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                         "function": {"name": "f",
                                                                      "arguments": "{"}}]}]},
     "body.messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                         "function": {"name": "f"}}]},
                   {"role": "user", "content": "never answered"}]},
     "body.messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                         "function": {"name": "f"}}]}]},
     "body.messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "tool", "tool_call_id": "c9", "content": "x"}]},
     "body.messages[1].tool_call_id"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                         "function": {"name": "f"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "x"},
                   {"role": "tool", "tool_call_id": "c1", "content": "again"}]},
     "body.messages[3].tool_call_id"),
]


@pytest.mark.parametrize(("fields", "field"), REFUSALS,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(REFUSALS)])
def test_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    error = refused(**fields)
    assert error.field == field, f"{error.field}: {error.message}"
    assert error.message


def test_missing_max_tokens_without_default() -> None:
    line = {"custom_id": "x", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}]}}
    with pytest.raises(InvalidRequestLine) as info:
        MAPPER(line)
    assert info.value.field == "body.max_tokens" and "max_tokens" in info.value.message


def test_structured_outputs_off() -> None:
    mapper = ChatMapper(model=MODEL, structured_outputs=False)
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    assert refused(mapper, response_format=fmt).field == "body.response_format"
    strict = {"type": "function", "function": {"name": "f", "strict": True}}
    assert refused(mapper, tools=[strict]).field == "body.tools[0].function.strict"


def test_body_not_an_object() -> None:
    with pytest.raises(InvalidRequestLine) as info:
        MAPPER({"custom_id": "x", "url": "/v1/chat/completions", "body": []})
    assert info.value.field == "body"


# -- the provider's rewrite and Params -----------------------------------------------------------


def test_provider_rewrite_uses_params() -> None:
    deployment = deployment_for(AnthropicProvider, {
        "model": f"anthropic/{MODEL}", "api_key": "k", "max_tokens": 321,
        "anthropic_version": "2026-10-21", "structured_outputs": False})
    provider = AnthropicProvider(deployment, ProviderContext(http=None,  # type: ignore[arg-type]
                                                             state=MemoryState()))
    line = {"custom_id": "x y", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "g", "messages": [{"role": "user", "content": "hi"}]}}
    (native,) = [json.loads(x) for x in native_lines(provider, [line]).splitlines()]
    assert native == {"custom_id": native_custom_id("x y"), "params": {
        "model": MODEL, "max_tokens": 321, "messages": [{"role": "user", "content": "hi"}]},
        ORIGINAL_ID: "x y"}
    with pytest.raises(InvalidRequestLine):
        native_lines(provider, [{**line, "body": {**line["body"], "temperature": 0.5}}])


def test_params_are_checked_at_config_load() -> None:
    with pytest.raises(msgspec.ValidationError, match="api_key is required"):
        deployment_for(AnthropicProvider, {"model": f"anthropic/{MODEL}"})
    for bad, where in (({"max_tokens": 0}, "max_tokens"),
                       ({"anthropic_version": "2024-01-01"}, "anthropic_version"),
                       ({"max_requests_per_batch": 100_001}, "max_requests_per_batch"),
                       ({"max_bytes": (256 << 20) + 1}, "max_bytes"),
                       ({"timeout": "soon"}, "timeout")):
        with pytest.raises(msgspec.ValidationError, match=rf"\$\.{where}"):
            deployment_for(AnthropicProvider, {"model": "anthropic/m", "api_key": "k", **bad})
    with pytest.raises(msgspec.ValidationError, match="api_base"):
        deployment_for(AnthropicProvider, {"model": "anthropic/m", "api_key": "k",
                                           "api_base": "api.anthropic.com"})
    d = deployment_for(AnthropicProvider, {"model": "anthropic/m", "api_key": "k",
                                           "api_base": "https://proxy.example/v1/",
                                           "anthropic_beta": ["a-1", "b-2"]})
    assert isinstance(d.params, AnthropicParams)
    p = d.params
    assert (p.api_base, p.anthropic_version, p.max_tokens) == (
        "https://proxy.example", "2023-06-01", None)
    assert (p.max_requests_per_batch, p.max_bytes, p.anthropic_beta) == (
        100_000, 256 << 20, "a-1,b-2")
    d = deployment_for(AnthropicProvider, {"model": "anthropic/m", "api_key": "k"})
    assert isinstance(d.params, AnthropicParams)
    assert d.params.api_base == "https://api.anthropic.com"


def test_mapped_lines_encode_as_json() -> None:
    item = mapped(custom_id="a b", tools=[WEATHER], temperature=0.5)
    assert json.loads(json.dumps(item)) == item


# -- whatever a line holds: a mapped request Anthropic takes, or a refusal -----------------------

_ATOMS: list[Any] = [
    None, "", " ", "x", "y ", 0, 1, 2, 0.5, True, [], {}, "auto", "required", "c1", "{}",
    "user", "assistant", "tool", "text", {"type": "text", "text": "z"},
    {"type": "text", "text": " "}, {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"}, {"role": "tool", "tool_call_id": "c1", "content": "r"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
    {"role": "system", "content": "s"}, TIME,
    {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
]
_BASES: list[dict[str, Any]] = [
    body(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]),
    body(tools=[WEATHER], tool_choice="required", messages=[
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12"},
        {"role": "user", "content": "thanks"}]),
    body(stop=["x"], temperature=0.3, messages=[
        {"role": "user", "content": [{"type": "text", "text": "what"}, {"type": "image_url",
                                     "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]},
        {"role": "developer", "content": "D"}, {"role": "user", "content": "sure?"}]),
]
_KEYS = ["content", "role", "tool_calls", "tool_call_id", "text", "type", "name", "arguments",
         "tool_choice", "parallel_tool_calls", "user", "response_format", "refusal"]


def _mutate(rng: random.Random, obj: Any) -> None:
    if isinstance(obj, dict) and obj:
        key, r = rng.choice(list(obj)), rng.random()
        if r < 0.3:
            obj[key] = copy.deepcopy(rng.choice(_ATOMS))
        elif r < 0.4:
            del obj[key]
        elif r < 0.5:
            obj[rng.choice(_KEYS)] = copy.deepcopy(rng.choice(_ATOMS))
        else:
            _mutate(rng, obj[key])
    elif isinstance(obj, list):
        r = rng.random()
        if r < 0.3 and obj:
            obj[rng.randrange(len(obj))] = copy.deepcopy(rng.choice(_ATOMS))
        elif r < 0.5:
            obj.insert(rng.randint(0, len(obj)), copy.deepcopy(rng.choice(_ATOMS)))
        elif r < 0.6 and obj:
            obj.pop(rng.randrange(len(obj)))
        elif obj:
            _mutate(rng, rng.choice(obj))


@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21"])
def test_mutated_lines_map_or_are_refused(version: str) -> None:
    """Thousands of lines mutated from valid ones: each is either refused with
    InvalidRequestLine or mapped to params the Messages API's rules accept; nothing else."""
    rng = random.Random(20261021)
    mapper = ChatMapper(model=MODEL, max_tokens=3, version=version)
    outcomes = {"mapped": 0, "refused": 0}
    for _ in range(4000):
        line_body = copy.deepcopy(rng.choice(_BASES))
        for _ in range(rng.randint(1, 3)):
            _mutate(rng, line_body)
        line = {"custom_id": "a", "url": "/v1/chat/completions", "body": line_body}
        try:
            item = mapper(copy.deepcopy(line))
        except InvalidRequestLine:
            outcomes["refused"] += 1
            continue
        problem = check_params(item["params"], version)
        assert problem is None, f"{json.dumps(line_body)} -> {item['params']}: {problem}"
        outcomes["mapped"] += 1
    assert outcomes["mapped"] > 300 and outcomes["refused"] > 300, outcomes
