"""The OpenAI ↔ Gemini mapping, row by row of the reference table: requests to Gemini,
predictions back to OpenAI output lines."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from gateway_vertex import labels
from gateway_vertex.gemini_output import chat_completion, convert, unix_seconds
from gateway_vertex.gemini_request import CUSTOM_ID_LABEL, to_gemini

from gateway import InvalidRequestLine
from gateway.testing.fake_vertex import check_request

MODEL = "gemini-2.5-flash"
PNG = "iVBORw0KGgo="


def line(*messages: dict[str, Any], custom_id: str = "r1", **body: Any) -> dict[str, Any]:
    msgs = list(messages) or [{"role": "user", "content": "hi"}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gemini-batch", "messages": msgs, **body}}


def gemini(*messages: dict[str, Any], model: str = MODEL, **body: Any) -> dict[str, Any]:
    out = to_gemini(line(*messages, **body), model)
    assert set(out) == {"request"}
    assert check_request(out["request"]) is None, out  # the fake Vertex would accept it
    request: dict[str, Any] = out["request"]
    return request


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# -- requests: messages ---------------------------------------------------------------------------


def test_system_and_developer_messages_become_one_system_instruction() -> None:
    req = gemini({"role": "system", "content": "Be terse."},
                 {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                 user("hi"))
    assert req["systemInstruction"] == {"parts": [{"text": "Be terse.\n\nAnswer in French."}]}
    assert req["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_multi_turn_conversation_keeps_order_and_roles() -> None:
    req = gemini(user("2+2?"), {"role": "assistant", "content": "4"}, user("and 3+3?"))
    assert req["contents"] == [
        {"role": "user", "parts": [{"text": "2+2?"}]},
        {"role": "model", "parts": [{"text": "4"}]},
        {"role": "user", "parts": [{"text": "and 3+3?"}]},
    ]


def test_image_parts_data_uri_and_urls() -> None:
    req = gemini(user([
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp",
                                            "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/dog.png"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=3"}},
    ]))
    assert req["contents"][0]["parts"] == [
        {"text": "compare"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/dog.png"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render?id=3"}},
    ]


def test_audio_and_file_parts() -> None:
    req = gemini(user([
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERg=="}},
        {"type": "file", "file": {"file_data": "JVBERg==", "filename": "a.pdf"}},
    ]))
    assert req["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
    ]


def test_tool_calls_and_tool_results() -> None:
    calls = [
        {"id": "call_a", "type": "function",
         "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    req = gemini(user("weather and time in Paris?"),
                 {"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
                 {"role": "tool", "tool_call_id": "call_b",
                  "content": [{"type": "text", "text": "noon"}]},
                 {"role": "assistant", "content": "Sunny at noon."},
                 user("thanks"))
    assert req["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "time", "args": {}}},
    ]}
    # Both answers to one turn's calls travel in one content, as Gemini wants.
    assert req["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "weather", "response": {"content": "sunny"}}},
        {"functionResponse": {"name": "time", "response": {"content": "noon"}}},
    ]}
    assert [c["role"] for c in req["contents"]] == ["user", "model", "user", "model", "user"]


# -- requests: parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "config"), [
    ({"max_tokens": 256}, {"maxOutputTokens": 256}),
    ({"max_completion_tokens": 100, "max_tokens": 5}, {"maxOutputTokens": 100}),
    ({"max_completion_tokens": None, "max_tokens": 5}, {"maxOutputTokens": 5}),
    ({"temperature": 0.2, "top_p": 1}, {"temperature": 0.2, "topP": 1}),
    ({"n": 3}, {"candidateCount": 3}),
    ({"seed": 7}, {"seed": 7}),
    ({"presence_penalty": 0.5, "frequency_penalty": -0.5},
     {"presencePenalty": 0.5, "frequencyPenalty": -0.5}),
    ({"stop": "END"}, {"stopSequences": ["END"]}),
    ({"stop": ["a", "b"]}, {"stopSequences": ["a", "b"]}),
    ({"response_format": {"type": "text"}}, {}),
    ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}},
     {"responseMimeType": "application/json",
      "responseJsonSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}),
    ({"logprobs": True, "top_logprobs": 3}, {"responseLogprobs": True, "logprobs": 3}),
    ({"logprobs": False}, {}),
    ({"reasoning_effort": "low"}, {"thinkingConfig": {"thinkingBudget": 1024}}),
    ({"reasoning_effort": "none"}, {"thinkingConfig": {"thinkingBudget": 0}}),
    ({"temperature": None, "stop": None}, {}),
])
def test_generation_parameters(body: dict[str, Any], config: dict[str, Any]) -> None:
    assert gemini(**body).get("generationConfig", {}) == config


@pytest.mark.parametrize(("effort", "level"), [("high", "HIGH"), ("none", "MINIMAL")])
def test_reasoning_effort_on_gemini_3_uses_thinking_levels(effort: str, level: str) -> None:
    req = gemini(model="gemini-3-pro-preview", reasoning_effort=effort)
    assert req["generationConfig"] == {"thinkingConfig": {"thinkingLevel": level}}


def test_tools_and_tool_choice() -> None:
    tools = [{"type": "function", "function": {
        "name": "weather", "description": "Weather for a city", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "noop"}}]
    req = gemini(tools=tools)
    assert req["tools"] == [{"functionDeclarations": [
        {"name": "weather", "description": "Weather for a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "noop"}]}]
    assert "toolConfig" not in req
    for choice, config in [
        ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "noop"}},
         {"mode": "ANY", "allowedFunctionNames": ["noop"]}),
    ]:
        got = gemini(tools=tools, tool_choice=choice)["toolConfig"]
        assert got == {"functionCallingConfig": config}


def test_ignored_fields_are_accepted() -> None:
    req = gemini(parallel_tool_calls=True, store=False, service_tier="auto", stream=False)
    assert set(req) == {"contents", "labels"}


def test_user_and_metadata_become_sanitised_labels() -> None:
    req = gemini(user="Alice@Example.com", metadata={"Team": "Search Quality", "gw_cid": "x"})
    assert req["labels"]["user"] == "alice_example_com"
    assert req["labels"]["team"] == "search_quality"
    assert labels.decode(CUSTOM_ID_LABEL, req["labels"]) == "r1"  # not shadowed


@pytest.mark.parametrize("custom_id", [
    "r1", "Request-ÄÖÜ 42 🚀", "x" * 500, "", "UPPER/with:punct=and=spaces   ",
])
def test_custom_id_survives_in_labels(custom_id: str) -> None:
    request = to_gemini(line(custom_id=custom_id), MODEL)["request"]
    assert check_request(request) is None
    for key, value in request["labels"].items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) and re.fullmatch(r"[a-z0-9_-]*", value)
        assert len(value) <= 63
    assert labels.decode(CUSTOM_ID_LABEL, request["labels"]) == custom_id


def test_custom_ids_never_collide() -> None:
    ids = ["a", "A", "a ", "a_", "a-", "á"]
    decoded = {json.dumps(to_gemini(line(custom_id=i), MODEL)["request"]["labels"]) for i in ids}
    assert len(decoded) == len(ids)


# -- requests: lines that cannot be mapped ---------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"url": "/v1/embeddings"}, "url"),
    ({"body": {"logit_bias": {"1": 2}}}, "body.logit_bias"),
    ({"body": {"functions": []}}, "body.functions"),
    ({"body": {"stream": True}}, "body.stream"),
    ({"body": {"temperature": "hot"}}, "body.temperature"),
    ({"body": {"max_tokens": 0}}, "body.max_tokens"),
    ({"body": {"n": 0}}, "body.n"),
    ({"body": {"seed": 1.5}}, "body.seed"),
    ({"body": {"stop": [1]}}, "body.stop"),
    ({"body": {"response_format": {"type": "yaml"}}}, "body.response_format.type"),
    ({"body": {"tools": [{"type": "web_search"}]}}, "body.tools[0].type"),
    ({"body": {"tool_choice": "sometimes"}}, "body.tool_choice"),
    ({"body": {"reasoning_effort": "extreme"}}, "body.reasoning_effort"),
    ({"body": {"metadata": {"a": 1}}}, "body.metadata"),
    ({"body": {"messages": []}}, "body.messages"),
    ({"body": {"messages": [{"role": "system", "content": "only"}]}}, "body.messages"),
    ({"body": {"messages": [{"role": "function", "content": "x"}]}}, "body.messages[0].role"),
    ({"body": {"messages": [{"role": "user", "content": "x", "audio": {}}]}},
     "body.messages[0].audio"),
    ({"body": {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}},
     "body.messages[0].tool_call_id"),
    ({"body": {"messages": [user([{"type": "image_url", "image_url": {"url": "data:xx"}}])]}},
     "body.messages[0].content[0].image_url.url"),
    ({"body": {"messages": [user([{"type": "image_url",
                                   "image_url": {"url": "ftp://host/a.png"}}])]}},
     "body.messages[0].content[0].image_url.url"),
    ({"body": {"messages": [user([{"type": "file", "file": {"file_id": "file-abc"}}])]}},
     "body.messages[0].content[0].file"),
    ({"body": {"messages": [user([{"type": "input_audio",
                                   "input_audio": {"data": "x", "format": "flac"}}])]}},
     "body.messages[0].content[0].input_audio"),
    ({"body": {"messages": [user([{"type": "video", "video": {}}])]}},
     "body.messages[0].content[0].type"),
    ({"body": {"messages": [{"role": "system", "content": [{"type": "image_url"}]}, user("x")]}},
     "body.messages[0].content[0]"),
    ({"body": {"messages": [user("x"), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}},
     "body.messages[1].tool_calls[0].function.arguments"),
    ({"custom_id": "x" * 3000}, "custom_id"),
])
def test_unmappable_lines_name_the_field(change: dict[str, Any], field: str) -> None:
    bad = line()
    for key, value in change.items():
        if key == "body":
            bad["body"].update(copy.deepcopy(value))
        else:
            bad[key] = value
    with pytest.raises(InvalidRequestLine) as caught:
        to_gemini(bad, MODEL)
    assert caught.value.field == field
    assert caught.value.message


# -- results ---------------------------------------------------------------------------------------


def prediction(response: dict[str, Any] | None, status: str = "",
               custom_id: str = "r1") -> dict[str, Any]:
    request = to_gemini(line(custom_id=custom_id), MODEL)["request"]
    out: dict[str, Any] = {"status": status, "processed_time": "2024-10-16T19:39:18.102004+00:00",
                           "request": request}
    if response is not None:
        out["response"] = response
    return out


def candidate(*parts: dict[str, Any], reason: str | None = "STOP", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, **extra}
    if reason:
        c["finishReason"] = reason
    return c


def test_success_line_is_an_openai_batch_output_line() -> None:
    response = {
        "candidates": [candidate({"text": "thinking", "thought": True}, {"text": "4"},
                                 avgLogprobs=-0.01)],
        "modelVersion": "gemini-2.5-flash@default", "createTime": "2024-10-16T19:39:17.123456789Z",
        "responseId": "resp-1",
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1, "totalTokenCount": 9,
                          "thoughtsTokenCount": 3, "cachedContentTokenCount": 2,
                          "trafficType": "ON_DEMAND"},
    }
    ok, out = convert(prediction(response, custom_id="req-7"), "gs://b/out/dir")
    assert ok
    assert out["custom_id"] == "req-7" and out["error"] is None
    assert out["id"].startswith("batch_req_")
    assert out["response"]["status_code"] == 200 and out["response"]["request_id"] == "resp-1"
    assert out["response"]["body"] == {
        "id": "resp-1", "object": "chat.completion", "created": 1729107557,
        "model": "gemini-2.5-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4",
                                             "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                  "prompt_tokens_details": {"cached_tokens": 2},
                  "completion_tokens_details": {"reasoning_tokens": 3}},
    }
    # Stable ids: the same line read twice gets the same id; another batch, another id.
    assert convert(prediction(response, custom_id="req-7"), "gs://b/out/dir")[1]["id"] == out["id"]
    assert convert(prediction(response, custom_id="req-7"), "gs://b/x")[1]["id"] != out["id"]


@pytest.mark.parametrize(("reason", "parts", "finish"), [
    ("STOP", [{"text": "a"}], "stop"),
    ("MAX_TOKENS", [{"text": "a"}], "length"),
    ("SAFETY", [], "content_filter"),
    ("RECITATION", [{"text": "a"}], "content_filter"),
    ("PROHIBITED_CONTENT", [], "content_filter"),
    ("OTHER", [{"text": "a"}], "stop"),
    (None, [{"text": "a"}], "stop"),
    ("STOP", [{"functionCall": {"name": "f", "args": {}}}], "tool_calls"),
    ("MALFORMED_FUNCTION_CALL", [], "stop"),
])
def test_finish_reasons(reason: str | None, parts: list[dict[str, Any]], finish: str) -> None:
    body = chat_completion({"candidates": [candidate(*parts, reason=reason)]}, "seed")
    assert body["choices"][0]["finish_reason"] == finish


def test_candidates_become_choices_with_tool_calls() -> None:
    body = chat_completion({"candidates": [
        candidate({"text": "Let me check."},
                  {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
                  {"functionCall": {"name": "time", "args": {}, "id": "fc-9"}}, index=0),
        candidate({"text": "second"}, index=1, reason="MAX_TOKENS"),
    ]}, "seed")
    first, second = body["choices"]
    assert first["index"] == 0 and first["finish_reason"] == "tool_calls"
    assert first["message"]["content"] == "Let me check."
    calls = first["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["weather", "time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[0]["id"].startswith("call_") and calls[1]["id"] == "fc-9"
    assert calls[0]["type"] == "function"
    assert second == {"index": 1, "message": {"role": "assistant", "content": "second",
                                              "refusal": None},
                      "finish_reason": "length", "logprobs": None}


def test_blocked_prompt_is_one_filtered_choice() -> None:
    body = chat_completion({"promptFeedback": {"blockReason": "SAFETY"},
                            "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}}, "s")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": None,
                                                        "refusal": None},
                                "finish_reason": "content_filter", "logprobs": None}]
    assert body["usage"]["prompt_tokens"] == 4 and body["usage"]["completion_tokens"] == 0


def test_logprobs_are_mapped() -> None:
    result = {"chosenCandidates": [{"token": "4", "logProbability": -0.1}],
              "topCandidates": [{"candidates": [{"token": "4", "logProbability": -0.1},
                                                {"token": "5", "logProbability": -2.5}]}]}
    body = chat_completion({"candidates": [candidate({"text": "4"}, logprobsResult=result)]}, "s")
    assert body["choices"][0]["logprobs"] == {"content": [
        {"token": "4", "logprob": -0.1, "bytes": [52], "top_logprobs": [
            {"token": "4", "logprob": -0.1, "bytes": [52]},
            {"token": "5", "logprob": -2.5, "bytes": [53]}]}], "refusal": None}


def test_failed_prediction_is_an_error_line_without_bucket_names() -> None:
    ok, out = convert(prediction(None, status="INVALID_ARGUMENT: cannot read gs://secret/x.png",
                                 custom_id="bad-1"), "gs://b/out")
    assert not ok
    assert out["custom_id"] == "bad-1" and out["response"] is None
    assert out["error"]["code"] == "vertex_error"
    assert "INVALID_ARGUMENT: cannot read" in out["error"]["message"]
    assert "secret" not in out["error"]["message"]
    ok, out = convert(prediction({}, status=""), "gs://b/out")  # no response at all
    assert not ok and out["error"]["message"]


def test_rfc3339_to_unix_seconds() -> None:
    assert unix_seconds("2024-10-16T19:33:59.153782Z") == 1729107239
    assert unix_seconds("2024-10-16T19:33:59.123456789Z") == 1729107239
    assert unix_seconds("2024-10-16T21:33:59+02:00") == 1729107239
    assert unix_seconds(None) is None and unix_seconds("yesterday") is None
