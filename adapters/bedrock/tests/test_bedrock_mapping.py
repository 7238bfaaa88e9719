"""What the adapter declares and maps, without any upstream: params (and their refusals, naming
the field), OpenAI chat lines → Claude records, Claude records → OpenAI output lines."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import msgspec
import pytest
from gateway_bedrock import BedrockParams, BedrockProvider
from gateway_bedrock.claude_output import chat_completion, convert, missing, scrub
from gateway_bedrock.claude_request import custom_id_of, record_id, to_record
from gateway_bedrock.params import model_id
from gateway_bedrock.testing import Malformed, check_claude_body

from adapters.bedrock.tests.bedrock_support import MODEL, provider_for
from gateway import CHAT_COMPLETIONS, InvalidRequestLine, MapLines
from gateway.testing.conformance import deployment_for

ROLE = "arn:aws:iam::123456789012:role/BedrockBatch"
PNG = "iVBORw0KGgo="


def raw_params(**extra: Any) -> dict[str, Any]:
    return {"model": f"bedrock/{MODEL}", "aws_region_name": "us-west-2",
            "aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "secret",
            "s3_bucket_name": "my-batch-bucket", "aws_batch_role_arn": ROLE, **extra}


def convert_params(raw: dict[str, Any]) -> BedrockParams:
    """As the config loader converts an entry's `litellm_params`."""
    return msgspec.convert(raw, type=BedrockParams, strict=False)


# -- params ---------------------------------------------------------------------------------------


async def test_params_defaults_capabilities_and_identity() -> None:
    params = convert_params(raw_params())
    assert (params.s3_prefix, params.timeout, params.min_requests_per_job,
            params.max_requests_per_job, params.timeout_hours, params.max_tokens,
            params.s3_upload_part_size) == ("batch-gateway", 60.0, 100, 50_000, None, None,
                                            8 << 20)
    assert BedrockProvider.identity == ("model", "aws_region_name", "api_base")
    loose = convert_params(raw_params(min_requests_per_job="10", timeout="5",
                                      s3_bucket_name="s3://my-batch-bucket/",
                                      s3_prefix="/team-a/batches/"))
    assert (loose.min_requests_per_job, loose.timeout) == (10, 5.0)
    assert (loose.s3_bucket_name, loose.s3_prefix) == ("my-batch-bucket", "team-a/batches")
    async with aiohttp.ClientSession() as http:
        provider = provider_for(http, raw_params(min_requests_per_job=150, max_tokens=512))
        caps = provider.capabilities()
        assert caps.input == "file" and caps.endpoints == frozenset({CHAT_COMPLETIONS})
        assert (caps.min_requests, caps.max_requests) == (150, 50_000)
        assert caps.cancel and caps.delete and caps.max_bytes == 1 << 30
        assert provider.api_base == "https://bedrock.us-west-2.amazonaws.com"
        assert provider.s3.url("my-batch-bucket", "a/b c.jsonl") == \
            "https://my-batch-bucket.s3.us-west-2.amazonaws.com/a/b%20c.jsonl"
        rewrite = provider.rewrite()
        assert isinstance(rewrite, MapLines)
        line = {"custom_id": "a1", "method": "POST", "url": CHAT_COMPLETIONS,
                "body": {"model": "g", "messages": [{"role": "user", "content": "hi"}]}}
        assert rewrite.to_native(copy.deepcopy(line))["modelInput"]["max_tokens"] == 512
        other = provider_for(http, raw_params(s3_region_name="eu-west-1",
                                              s3_endpoint_url="http://127.0.0.1:9000/",
                                              api_base="https://vpce.example/"))
        assert other.api_base == "https://vpce.example"
        assert other.s3.url("b-1", "k") == "http://127.0.0.1:9000/b-1/k"
        assert other.s3.region == "eu-west-1"


@pytest.mark.parametrize(("bad", "field", "message"), [
    ({"aws_region_name": "us_west_2"}, "aws_region_name", "Expected `str` matching"),
    ({"aws_region_name": None}, "aws_region_name", "Expected `str`, got `null`"),
    ({"s3_bucket_name": "Bad_Bucket"}, "s3_bucket_name", "not an S3 bucket name"),
    ({"s3_bucket_name": "s3://"}, "s3_bucket_name", "not an S3 bucket name"),
    ({"s3_prefix": "a b"}, "s3_prefix", "characters Bedrock refuses"),
    ({"aws_batch_role_arn": "BedrockBatch"}, "aws_batch_role_arn", "Expected `str` matching"),
    ({"aws_batch_role_arn": "arn:aws:iam::123:user/x"}, "aws_batch_role_arn",
     "Expected `str` matching"),
    ({"timeout": 0}, "timeout", "Expected `float` >"),
    ({"timeout": "x"}, "timeout", "Expected `float`, got `str`"),
    ({"min_requests_per_job": 0}, "min_requests_per_job", "Expected `int` >= 1"),
    ({"min_requests_per_job": 10, "max_requests_per_job": 5}, "min_requests_per_job",
     "larger than max_requests_per_job"),
    ({"timeout_hours": 12}, "timeout_hours", ">= 24"),
    ({"timeout_hours": 200}, "timeout_hours", "<= 168"),
    ({"max_tokens": 0}, "max_tokens", "Expected `int` >= 1"),
    ({"s3_upload_part_size": 1 << 20}, "s3_upload_part_size", f">= {5 << 20}"),
    ({"aws_secret_access_key": None}, "aws_secret_access_key", "other half of the key pair"),
    ({"aws_access_key_id": None}, "aws_access_key_id", "other half of the key pair"),
    ({"aws_access_key_id": None, "aws_secret_access_key": None, "aws_session_token": "t"},
     "aws_session_token", "only with aws_access_key_id"),
    ({"api_base": "bedrock.example"}, "api_base", "not an http(s) URL"),
    ({"s3_endpoint_url": "localhost:9000"}, "s3_endpoint_url", "not an http(s) URL"),
    ({"model": "bedrock/meta.llama3-70b-instruct-v1:0"}, "model", "not an Anthropic Claude"),
    ({"model": "bedrock/us.amazon.nova-pro-v1:0"}, "model", "not an Anthropic Claude"),
    ({"model": "bedrock/arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/"
               "abc123"}, "model", "application inference profiles"),
    ({"model": f"bedrock/converse/{MODEL}"}, "model", "only InvokeModel-format jobs"),
])
def test_a_bad_entry_fails_conversion_naming_the_field(
    bad: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        convert_params(raw_params(**bad))
    text = str(caught.value)
    assert message in text
    # Types name the field in the path; cross-field checks in the message.
    assert f"`$.{field}`" in text or text.startswith(f"{field}: "), text


@pytest.mark.parametrize("field", ["aws_region_name", "s3_bucket_name", "aws_batch_role_arn"])
def test_required_fields(field: str) -> None:
    raw = raw_params()
    del raw[field]
    with pytest.raises(msgspec.ValidationError, match=f"missing required field `{field}`"):
        convert_params(raw)
    with pytest.raises(msgspec.ValidationError, match=field):
        deployment_for(BedrockProvider, raw)


def test_credentials_may_come_from_the_default_chain() -> None:
    params = convert_params(raw_params(aws_access_key_id=None, aws_secret_access_key=None))
    assert params.aws_access_key_id is None and params.aws_secret_access_key is None


@pytest.mark.parametrize(("model", "expected"), [
    ("bedrock/anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
    (f"bedrock/{MODEL}", MODEL),
    ("bedrock/eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
     "eu.anthropic.claude-3-7-sonnet-20250219-v1:0"),
    ("bedrock/global.anthropic.claude-sonnet-4-5-20250929-v1:0",
     "global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("bedrock/us-gov.anthropic.claude-3-haiku-20240307-v1:0",
     "us-gov.anthropic.claude-3-haiku-20240307-v1:0"),
    (f"bedrock/invoke/{MODEL}", MODEL),
    ("bedrock/arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
     "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"),
    (f"bedrock/arn:aws:bedrock:us-east-1:123456789012:inference-profile/{MODEL}",
     f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{MODEL}"),
])
def test_claude_model_ids(model: str, expected: str) -> None:
    assert model_id(model) == expected


# -- requests -------------------------------------------------------------------------------------


def line(*messages: dict[str, Any], custom_id: str = "r1", **body: Any) -> dict[str, Any]:
    msgs = list(messages) or [{"role": "user", "content": "hi"}]
    return {"custom_id": custom_id, "method": "POST", "url": CHAT_COMPLETIONS,
            "body": {"model": "claude-batch", "messages": msgs, "max_tokens": 100, **body}}


def claude(*messages: dict[str, Any], default: int | None = None, **body: Any) -> dict[str, Any]:
    record = to_record(line(*messages, **body), default)
    assert set(record) == {"recordId", "modelInput"}
    check_claude_body(record["modelInput"])  # the fake Bedrock would take it
    out: dict[str, Any] = record["modelInput"]
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_minimal_body() -> None:
    assert claude() == {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                        "messages": [{"role": "user", "content": [{"type": "text",
                                                                   "text": "hi"}]}]}


def test_system_and_developer_messages_are_hoisted() -> None:
    body = claude({"role": "system", "content": "Be terse."}, user("hi"))
    assert body["system"] == "Be terse."
    body = claude({"role": "system", "content": "Be terse."},
                  {"role": "developer", "content": [{"type": "text", "text": "In French."}]},
                  user("hi"))
    assert body["system"] == [{"type": "text", "text": "Be terse."},
                              {"type": "text", "text": "In French."}]
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_multi_turn_keeps_order_and_merges_same_role_turns() -> None:
    body = claude(user("2+2?"), {"role": "assistant", "content": "4"}, user("and 3+3?"),
                  user([{"type": "text", "text": "quickly"}]))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
        {"role": "user", "content": [{"type": "text", "text": "and 3+3?"},
                                     {"type": "text", "text": "quickly"}]},
    ]


def test_images_as_base64() -> None:
    body = claude(user([{"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                                           "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}}
                        ]))
    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
    ]


def test_tools_tool_calls_and_results() -> None:
    calls = [{"id": "call_a", "type": "function",
              "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "time",
                                                               "arguments": "{}"}}]
    tools = [{"type": "function", "function": {
        "name": "weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "time"}}]
    body = claude(user("weather and time in Paris?"),
                  {"role": "assistant", "content": "Checking.", "tool_calls": calls},
                  {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
                  {"role": "tool", "tool_call_id": "call_b",
                   "content": [{"type": "text", "text": "noon"}]},
                  user("thanks"), tools=tools, tool_choice="auto", parallel_tool_calls=False)
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "time", "input": {}},
    ]}
    # Both results in the next user turn, first, then the user's text.
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_a",
         "content": [{"type": "text", "text": "sunny"}]},
        {"type": "tool_result", "tool_use_id": "call_b",
         "content": [{"type": "text", "text": "noon"}]},
        {"type": "text", "text": "thanks"},
    ]}
    assert body["tools"] == [
        {"name": "weather", "description": "Weather now",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert claude(tools=tools, tool_choice=choice)["tool_choice"] == expected


@pytest.mark.parametrize(("body", "expected"), [
    ({"max_tokens": 5}, {"max_tokens": 5}),
    ({"max_completion_tokens": 7, "max_tokens": 5}, {"max_tokens": 7}),
    ({"temperature": 0.2, "top_p": 1}, {"temperature": 0.2, "top_p": 1}),
    ({"stop": "END"}, {"stop_sequences": ["END"]}),
    ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
    ({"user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
    ({"n": 1, "logprobs": False, "presence_penalty": 0, "stream": False,
      "response_format": {"type": "text"}, "store": False, "metadata": {"a": "b"},
      "temperature": None, "tools": []}, {}),
])
def test_parameters(body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = claude(**body)
    for key in ("anthropic_version", "messages"):
        out.pop(key)
    assert out == {"max_tokens": 100, **expected}


def test_max_tokens_from_the_deployment_else_refused() -> None:
    bare = line()
    del bare["body"]["max_tokens"]
    assert to_record(copy.deepcopy(bare), 256)["modelInput"]["max_tokens"] == 256
    with pytest.raises(InvalidRequestLine) as caught:
        to_record(bare, None)
    assert caught.value.field == "body.max_tokens" and "required" in caught.value.message


@pytest.mark.parametrize(("change", "field"), [
    ({"url": "/v1/embeddings"}, "url"),
    ({"body": {"n": 2}}, "body.n"),
    ({"body": {"stream": True}}, "body.stream"),
    ({"body": {"logprobs": True}}, "body.logprobs"),
    ({"body": {"top_logprobs": 2}}, "body.top_logprobs"),
    ({"body": {"frequency_penalty": 0.5}}, "body.frequency_penalty"),
    ({"body": {"logit_bias": {"1": 2}}}, "body.logit_bias"),
    ({"body": {"seed": 7}}, "body.seed"),
    ({"body": {"reasoning_effort": "low"}}, "body.reasoning_effort"),
    ({"body": {"response_format": {"type": "json_object"}}}, "body.response_format"),
    ({"body": {"temperature": 1.5}}, "body.temperature"),
    ({"body": {"top_p": -1}}, "body.top_p"),
    ({"body": {"max_tokens": 0}}, "body.max_tokens"),
    ({"body": {"stop": ["ok", " "]}}, "body.stop[1]"),
    ({"body": {"user": 5}}, "body.user"),
    ({"body": {"tools": [{"type": "web_search"}]}}, "body.tools[0]"),
    ({"body": {"tools": [{"type": "function", "function": {"name": "bad name"}}]}},
     "body.tools[0].function.name"),
    ({"body": {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "array"}}}]}}, "body.tools[0].function.parameters"),
    ({"body": {"tool_choice": "required"}}, "body.tool_choice"),
    ({"body": {"tools": [{"type": "function", "function": {"name": "f"}}],
               "tool_choice": {"type": "function", "function": {"name": "g"}}}},
     "body.tool_choice.function.name"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "body.messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]},
     "body.messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]},
     "body.messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "  "}]}, "body.messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "body.messages[0].content"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "body.messages"),
    ({"messages": []}, "body.messages"),
    ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "body.messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi", "audio": {}}]}, "body.messages[0].audio"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     "body.messages[1].tool_call_id"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                                                       "tool_calls": [{
        "id": "c 1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "body.messages[1].tool_calls[0].id"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                                                       "tool_calls": [{
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "body.messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     "body.messages[1].content"),
])
def test_what_cannot_be_mapped_is_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    request = line()
    request["body"].update(change.get("body", {}))
    if "messages" in change:
        request["body"]["messages"] = change["messages"]
    if "url" in change:
        request["url"] = change["url"]
    with pytest.raises(InvalidRequestLine) as caught:
        to_record(request, 100)
    assert caught.value.field == field, caught.value.message


@pytest.mark.parametrize("custom_id", [
    "r1", "REQ0001", "request-1", "req_1", "a b", "ü-é", "GWX7265", "gwx1", "x" * 200, "1.5",
    "GWX", "GWXzz",
])
def test_record_ids_map_back_exactly(custom_id: str) -> None:
    rid = record_id(custom_id)
    assert rid.isascii() and rid.isalnum()
    assert custom_id_of(rid) == custom_id
    if custom_id.isascii() and custom_id.isalnum() and not custom_id.startswith("GWX"):
        assert rid == custom_id  # plain ids travel as they are
    assert to_record(line(custom_id=custom_id), 10)["recordId"] == rid


# -- outputs --------------------------------------------------------------------------------------


def message(**extra: Any) -> dict[str, Any]:
    return {"id": "msg_bdrk_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": [{"type": "text", "text": "Hi!"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 9, "output_tokens": 2}, **extra}


def test_model_output_becomes_a_chat_completion() -> None:
    rid = record_id("req-1")
    ok, got_rid, out = convert({"recordId": rid, "modelInput": {}, "modelOutput": message()},
                               "arn:job", 1_700_000_000, MODEL)
    assert ok and got_rid == rid
    assert out["custom_id"] == "req-1" and out["error"] is None
    assert out["id"].startswith("batch_req_")
    assert out["response"]["status_code"] == 200
    assert out["response"]["request_id"] == "msg_bdrk_01"
    body = out["response"]["body"]
    assert body == {
        "id": "msg_bdrk_01", "object": "chat.completion", "created": 1_700_000_000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!",
                                             "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                  "prompt_tokens_details": {"cached_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "system_fingerprint": None,
    }
    again = convert({"recordId": rid, "modelOutput": message()}, "arn:job", 1, MODEL)[2]
    assert again["id"] == out["id"]  # stable across reads


@pytest.mark.parametrize(("reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), (None, "stop"),
])
def test_finish_reasons(reason: str | None, finish: str) -> None:
    body = chat_completion(message(stop_reason=reason), "seed", 0, MODEL)
    assert body["choices"][0]["finish_reason"] == finish


def test_tool_use_thinking_and_cache_usage() -> None:
    body = chat_completion(message(
        content=[{"type": "thinking", "thinking": "hmm", "signature": "x"},
                 {"type": "text", "text": "Let me check."},
                 {"type": "tool_use", "id": "toolu_1", "name": "weather",
                  "input": {"city": "Oslo"}}],
        stop_reason="tool_use", model=None,
        usage={"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 100,
               "cache_creation_input_tokens": 20}), "seed", 0, MODEL)
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "weather", "arguments": '{"city": "Oslo"}'}}]
    assert choice["finish_reason"] == "tool_calls"
    assert body["model"] == MODEL
    assert body["usage"]["prompt_tokens"] == 125 and body["usage"]["total_tokens"] == 132
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 100}


def test_error_records_and_missing_records() -> None:
    rid = record_id("req 2")
    ok, _, out = convert({"recordId": rid, "modelInput": {}, "error": {
        "errorCode": 400, "errorMessage": "Malformed input request: #: extraneous key [model] "
                                          "is not permitted, see s3://bucket/in/x.jsonl"}},
        "arn:job", 0, MODEL)
    assert not ok and out["custom_id"] == "req 2" and out["error"] is None
    assert out["response"]["status_code"] == 400
    error = out["response"]["body"]["error"]
    assert error["type"] == "invalid_request_error"
    assert "extraneous key [model]" in error["message"] and "bucket" not in error["message"]
    ok, _, out = convert({"recordId": rid, "error": {"errorCode": "oops",
                                                     "errorMessage": "odd"}}, "a", 0, MODEL)
    assert not ok and out["response"] is None and out["error"]["code"] == "bedrock_error"
    ok, _, out = convert({"recordId": rid}, "a", 0, MODEL)
    assert not ok and out["error"]["code"] == "bedrock_error"
    cancelled = missing("arn:job", rid, "batch_cancelled")
    assert cancelled["custom_id"] == "req 2" and cancelled["response"] is None
    assert cancelled["error"]["code"] == "batch_cancelled"
    assert missing("arn:job", rid, "batch_expired")["error"]["code"] == "batch_expired"


def test_scrub_hides_buckets_and_arns() -> None:
    text = scrub("Access to s3://my-bucket/in/x.jsonl denied for "
                 "arn:aws:iam::123456789012:role/R on "
                 "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc")
    assert "my-bucket" not in text and "123456789012" not in text and "role/R" not in text


def test_the_fake_checks_claude_bodies() -> None:
    body = claude()
    for bad, words in (({"model": "x"}, "extraneous key [model]"),
                       ({"anthropic_version": "2023-06-01"}, "anthropic_version"),
                       ({"max_tokens": None}, "max_tokens")):
        broken = {**body, **bad}
        if broken.get("max_tokens") is None:
            broken.pop("max_tokens")
        with pytest.raises(Malformed, match=words.replace("[", r"\[").replace("]", r"\]")):
            check_claude_body(broken)
