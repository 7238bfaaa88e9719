"""Bad input gets a clear 4xx in the OpenAI envelope, naming the line, and nothing upstream."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from tests.conftest import GROUP, OTHER_GROUP, Upstream
from tests.helpers import jsonl, request_line

GOOD = json.dumps(request_line("ok-1")).encode()
GOOD2 = json.dumps(request_line("ok-2")).encode()


def lines(*raw: bytes) -> bytes:
    return b"\n".join(raw) + b"\n"


def with_body(**changes: object) -> bytes:
    line = request_line("x-1")
    line.update(changes)
    return json.dumps(line).encode()


# (name, file bytes, target_model_names, expected fragment of the message)
CASES = [
    ("bad json", lines(GOOD, b'{"custom_id": "a",'), GROUP, "Line 2: not valid JSON"),
    ("not an object", lines(GOOD, b"[1, 2]"), GROUP, "Line 2: a request line must be a JSON"),
    ("missing custom_id", lines(json.dumps({"method": "POST", "url": "/v1/chat/completions",
                                            "body": {"model": GROUP}}).encode()),
     GROUP, "Line 1: missing required field 'custom_id'"),
    ("custom_id not a string", lines(with_body(custom_id=7)), GROUP,
     "Line 1: field 'custom_id': Expected `str`, got `int`"),
    ("empty custom_id", lines(with_body(custom_id="")), GROUP, "Line 1: custom_id must not be"),
    ("duplicate custom_id", lines(GOOD, GOOD2, GOOD), GROUP,
     "Line 3: custom_id 'ok-1' is already used on line 1"),
    ("wrong method", lines(GOOD, with_body(method="GET")), GROUP, "Line 2: method must be 'POST'"),
    ("unsupported url", lines(with_body(url="/v1/audio/speech")), GROUP,
     "Line 1: url '/v1/audio/speech' is not a supported endpoint"),
    ("mixed urls", lines(GOOD, json.dumps({**request_line("e-1"), "url": "/v1/embeddings"})
                         .encode()), GROUP, "Line 2: url '/v1/embeddings' differs"),
    ("model not targeted", lines(GOOD, json.dumps(request_line("m-1", "gpt-5")).encode()), GROUP,
     "Line 2: body.model 'gpt-5' is not one of the target model names"),
    ("missing body.model", lines(with_body(body={"messages": []})), GROUP,
     "Line 1: missing required field 'body.model'"),
    ("body not an object", lines(with_body(body="hello")), GROUP,
     "Line 1: field 'body': Expected `object`"),
    ("empty file", b"", GROUP, "The file is empty"),
    ("only blank lines", b"\n\n  \n", GROUP, "The file is empty"),
    ("byte order mark", b"\xef\xbb\xbf" + lines(GOOD), GROUP, "Line 1: the file starts with a"),
    ("not utf-8", lines(GOOD, GOOD2.replace(b"Say hello", b"Say h\xe9llo")), GROUP,
     "Line 2: not valid UTF-8"),
    ("oversize line", lines(GOOD, json.dumps(request_line("big", GROUP, user="x" * (1 << 20)))
                            .encode()), GROUP, "Line 2: line is longer than the 1 MB"),
    ("unknown model group", lines(GOOD), "no-such-group", "Unknown model group 'no-such-group'"),
    ("too many requests", jsonl([request_line(f"r-{i}") for i in range(1001)]), GROUP,
     "Line 1001: the file has more than 1000 requests"),
    ("file too large", lines(*[json.dumps(request_line(f"b-{i}", GROUP, user="y" * 500_000))
                               .encode() for i in range(9)]), GROUP,
     "File is larger than the 4 MB limit"),
]


def assert_nothing_uploaded(upstreams: list[Upstream]) -> None:
    # Copies stream while the upload arrives, so an upstream may have seen the start of a
    # request; it was cut off before the file was complete, and no file exists anywhere.
    for up in upstreams:
        assert up.fake.uploads == {} and up.fake.files == {}


@pytest.mark.parametrize(("name", "data", "targets", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_upload_is_a_400_naming_the_problem(
    client: openai.OpenAI,
    upstreams: list[Upstream],
    name: str,
    data: bytes,
    targets: str,
    fragment: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(
            file=("bad.jsonl", data), purpose="batch", extra_body={"target_model_names": targets}
        )
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and fragment in body["message"], body
    assert body["type"] == "invalid_request_error"
    assert_nothing_uploaded(upstreams)
    assert client.files.list().data == []


def test_group_without_access_is_403_naming_the_model(
    make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI],
    upstreams: list[Upstream],
) -> None:
    client = client_for(make_key([GROUP]))
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.files.create(
            file=("f.jsonl", jsonl([request_line("a", OTHER_GROUP)])),
            purpose="batch",
            extra_body={"target_model_names": OTHER_GROUP},
        )
    assert OTHER_GROUP in str(info.value.body)
    # Refused before any copy was started.
    assert not [r for up in upstreams for r in up.fake.requests if r[0] == "POST"]


def test_model_in_the_file_cannot_bypass_the_allowlist(
    make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI],
    upstreams: list[Upstream],
) -> None:
    # No target_model_names: the gateway takes the groups from body.model, and still checks.
    client = client_for(make_key([GROUP]))
    with pytest.raises(openai.PermissionDeniedError):
        client.files.create(
            file=("f.jsonl", jsonl([request_line("a", OTHER_GROUP)])), purpose="batch"
        )
    assert_nothing_uploaded(upstreams)


def test_wrong_purpose(client: openai.OpenAI, upstreams: list[Upstream]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("f.jsonl", lines(GOOD)), purpose="fine-tune")
    assert "purpose must be 'batch'" in str(info.value.body)
    assert_nothing_uploaded(upstreams)


def test_blank_lines_and_crlf_are_accepted(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    data = GOOD + b"\r\n\r\n" + GOOD2 + b"\r\n"
    f = client.files.create(file=("f.jsonl", data), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    (native,) = upstreams[0].fake.uploads
    assert [x["custom_id"] for x in upstreams[0].fake.file_lines(native)] == ["ok-1", "ok-2"]
    assert f.bytes == len(data)
