"""Bad input, odd upstream answers and attempts to learn what is behind the gateway: each ends
in a clear 4xx or 502, never a 500, and nothing internal reaches a tenant."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest

from gateway.jsonl import ModelSwap
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file, request_line

HTML = "<html><body>502 Bad Gateway</body></html>"


def _upload(client: openai.OpenAI, n: int = 2) -> str:
    f = client.files.create(file=batch_file(n), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    return f.id


def _create(client: openai.OpenAI, file_id: str, **extra: object) -> openai.types.Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h", **extra)  # type: ignore[arg-type]


# -- 1. an HTML page behind a 200 --------------------------------------------------------------


def test_html_behind_200_fails_over_on_create(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = _upload(client)
    for up in upstreams[:2]:
        up.fake.fail("POST", r"^/v1/batches$", 200, body=HTML, times=1)
    # Both deployments answer garbage once: 502, named by group only.
    with pytest.raises(openai.InternalServerError) as info:
        _create(client, file_id)
    assert info.value.status_code == 502 and "html" not in str(info.value.body).lower()
    # The next create goes through.
    assert _create(client, file_id).status == "validating"


def test_html_behind_200_on_retrieve_list_and_content(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    batch = _create(client, _upload(client))
    for up in upstreams[:2]:
        up.fake.fail("GET", r"^/v1/batches/", 200, body=HTML, times=1)
    with pytest.raises(openai.InternalServerError) as info:
        client.batches.retrieve(batch.id)
    assert info.value.status_code == 502
    # The list answers from the database: a broken upstream cannot break it.
    assert [b.id for b in client.batches.list().data] == [batch.id]
    while batch.status != "completed":
        batch = client.batches.retrieve(batch.id)
    assert batch.output_file_id is not None
    for up in upstreams[:2]:
        up.fake.fail("GET", r"/content$", 200, body=HTML, times=1)
    with pytest.raises(openai.InternalServerError) as info:
        client.files.content(batch.output_file_id)
    assert info.value.status_code == 502
    assert b"custom_id" in client.files.content(batch.output_file_id).read()


# -- 2. body size and metadata -----------------------------------------------------------------


def test_control_bodies_have_a_size_cap(gateway: ServerThread) -> None:
    body = b'{"models": [], "metadata": {"x": "' + b"a" * (2 << 20) + b'"}}'
    resp = httpx.post(gateway.url + "/key/generate", content=body,
                      headers={"Authorization": f"Bearer {MASTER_KEY}",
                               "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "body_too_large"


def test_the_control_body_cap_is_configurable(
    upstreams: list[Upstream], database_url: str
) -> None:
    with gateway_server(config_for(upstreams, database_url, max_json_body_kb=2)) as server:
        resp = httpx.post(server.url + "/key/generate",
                          json={"models": [], "metadata": {"x": "a" * 3000}},
                          headers={"Authorization": f"Bearer {MASTER_KEY}"})
        assert resp.status_code == 400
        assert resp.json()["error"] == {"message": "Request body is larger than 2 KiB.",
                                        "type": "invalid_request_error", "param": None,
                                        "code": "body_too_large"}
        resp = httpx.post(server.url + "/key/generate", json={"metadata": {"x": "a" * 1000}},
                          headers={"Authorization": f"Bearer {MASTER_KEY}"})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("metadata", [{"k" * 65: "v"}, {"k": "v" * 513},
                                      {f"k{i}": "v" for i in range(17)}])
def test_metadata_limits(client: openai.OpenAI, metadata: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, _upload(client), metadata=metadata)
    assert "metadata" in str(info.value.body)


# -- 5. nesting ----------------------------------------------------------------------------------


def test_deep_json_is_a_400_everywhere(
    gateway: ServerThread, client: openai.OpenAI, make_key: Callable[..., str]
) -> None:
    deep = "[" * 5000 + "]" * 5000
    for path in ("/v1/batches", "/key/generate"):
        resp = httpx.post(gateway.url + path, content=f'{{"x": {deep}}}',
                          headers={"Authorization": f"Bearer {MASTER_KEY}"})
        assert resp.status_code == 400 and "nested too deeply" in resp.text, (path, resp.text)
    line = json.dumps(request_line("ok", GROUP)).encode()
    nested = line[:-2] + b', "x": ' + deep.encode() + b"}}"
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("f.jsonl", line + b"\n" + nested + b"\n"), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    assert "Line 2: nested too deeply" in str(info.value.body)


# -- 6. durations --------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", ["0s", "100000000000000000000s", "101000w"])
def test_key_durations_out_of_range(admin: httpx.Client, duration: str) -> None:
    resp = admin.post("/key/generate", json={"duration": duration})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "duration"


# -- 7. provider text ----------------------------------------------------------------------------


def test_provider_error_text_is_scrubbed(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = _upload(client)
    body = {"error": {"message": "Enqueued token limit reached for gpt-4o-mini in organization "
                                 "org-Zx81Kq2LmN0pQ. See https://platform.example/limits",
                      "type": "invalid_request_error", "code": "token_limit_exceeded"}}
    for up in upstreams[:2]:
        up.fake.fail("POST", r"^/v1/batches$", 400, body=body, times=1)
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, file_id)
    text = str(info.value.body)
    assert "Enqueued token limit" in text
    assert "org-Zx81Kq2LmN0pQ" not in text and "platform.example" not in text


# -- 8. usage ------------------------------------------------------------------------------------


def test_usage_hides_deployments_from_virtual_keys(
    client: openai.OpenAI, admin: httpx.Client, gateway: ServerThread
) -> None:
    batch = _create(client, _upload(client))
    while batch.status != "completed":
        batch = client.batches.retrieve(batch.id)
    mine = httpx.get(gateway.url + "/usage", headers={"Authorization": f"Bearer {client.api_key}"})
    (row,) = mine.json()["data"]
    assert row["batch_id"] == batch.id and "deployment_id" not in row
    assert all("deployment_id" in r for r in admin.get("/usage").json()["data"])


# -- 11. an unknown group in a line --------------------------------------------------------------


def test_unknown_group_in_a_line_names_the_line(client: openai.OpenAI) -> None:
    data = json.dumps(request_line("a", GROUP)).encode() + b"\n" + \
        json.dumps(request_line("b", "no-such-group")).encode() + b"\n"
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("f.jsonl", data), purpose="batch")
    assert "Line 2: body.model 'no-such-group' is not a model group" in str(info.value.body)


# -- 12. the byte-level rename and escaped keys --------------------------------------------------


def test_rename_never_picks_another_key_when_model_is_escaped() -> None:
    raw = b'{"custom_id":"a","body":{"tools":[{"model":"g"}],"mod\\u0065l":"g"}}'
    assert ModelSwap(["g"], "deploy-1")(raw) is None  # left to the parser


def test_escaped_model_key_reaches_the_provider_renamed(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    line = (b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":'
            b'{"messages":[],"tools":[{"type":"function","function":{"name":"f"},"model":"'
            + GROUP.encode() + b'"}],"mod\\u0065l":"' + GROUP.encode() + b'"}}\n')
    client.files.create(file=("f.jsonl", line), purpose="batch",
                        extra_body={"target_model_names": GROUP})
    for up in upstreams[:2]:
        (native,) = up.fake.uploads
        (got,) = up.fake.file_lines(native)
        assert got["body"]["model"] == up.model
        assert got["body"]["tools"][0]["model"] == GROUP


# -- 3. lengths the database would refuse ------------------------------------------------------


def test_long_names_are_a_400(client: openai.OpenAI, admin: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("f" * 600 + ".jsonl", batch_file(1).getvalue()),
                            purpose="batch", extra_body={"target_model_names": GROUP})
    assert "file name is longer than 512" in str(info.value.body)
    for field in ("key_alias", "team_id", "user_id"):
        resp = admin.post("/key/generate", json={field: "x" * 300})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == field


# -- 4. a declared size over the limit ---------------------------------------------------------


def test_oversized_upload_is_refused_before_it_is_read(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    line = json.dumps(request_line("x", GROUP)).encode() + b"\n"
    data = line * ((64 << 20) // len(line))  # 64 MB against the 4 MB limit of this gateway
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("big.jsonl", data), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    assert info.value.body["code"] == "file_too_large"  # type: ignore[index]
    assert all(not up.fake.uploads for up in upstreams)


# -- 10. an endpoint other than the lines' -------------------------------------------------------


def test_create_with_another_endpoint_than_the_lines_is_a_400(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = _upload(client)
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                              completion_window="24h")
    assert "differs from the url of the file's lines" in str(info.value.body)
    assert not any(up.fake.batches for up in upstreams)
