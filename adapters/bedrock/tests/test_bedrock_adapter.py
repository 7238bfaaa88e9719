"""The adapter against the S3 emulator (behind the fake's SigV4-checking front) and the fake
Bedrock control plane: uploads (single and multipart, bounded, aborted), signatures, the job
body, the lifecycle, partial / stopped / expired results, errors, credentials."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from gateway_bedrock import BedrockProvider, s3
from gateway_bedrock.aws import error_for
from gateway_bedrock.claude_request import record_id, to_record
from gateway_bedrock.testing import ACCESS_KEY, REGION, SECRET_KEY, verify_sigv4

from adapters.bedrock.tests.bedrock_support import (
    MODEL,
    Aws,
    Servers,
    chunks,
    finish,
    native_jsonl,
    provider_for,
    put,
    read_lines,
    request_line,
    run,
    start,
    submission,
)
from gateway import (
    DeploymentFull,
    ResultFile,
    Unsuitable,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.s3 import S3Emulator

MIB = 1 << 20
JOB_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")


def s3_calls(aws: Aws, since: int = 0) -> list[tuple[str, str, int]]:
    """(method, query, status) of what reached the S3 front."""
    return [(r.method, r.query, r.status) for r in aws.fake.s3_requests[since:]]


def synthetic(size: int) -> bytes:
    line = json.dumps({"recordId": "R", "modelInput": {"x": "y" * 900}}).encode() + b"\n"
    return line * (size // len(line) + 1)


# -- inputs ---------------------------------------------------------------------------------------


async def test_small_upload_is_one_put_of_claude_records(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, aws.params())
    lines = [request_line(f"req-{i}") for i in range(3)]
    data = native_jsonl(provider, lines)
    uri = await put(provider, data, "file-mine.jsonl")
    assert re.fullmatch(rf"s3://{aws.bucket}/batch-gateway/in/file-mine-[0-9a-f]{{32}}\.jsonl",
                        uri)
    assert s3_calls(aws) == [("PUT", "", 200)]  # fits in a part: no multipart round trips
    key = uri.removeprefix(f"s3://{aws.bucket}/")
    records = [json.loads(x) for x in aws.read(key).splitlines()]
    assert [r["recordId"] for r in records] == [record_id(f"req-{i}") for i in range(3)]
    assert records[0]["modelInput"] == {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello req-0"}]}]}
    head = aws.client().head_object(Bucket=aws.bucket, Key=key)
    assert head["ContentType"] == "application/jsonl"
    # Two copies of one gateway file (two deployments on one bucket) never collide.
    assert await put(provider, data, "file-mine.jsonl") != uri


async def test_large_upload_is_multipart_in_bounded_parts(
    aws: Aws, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = 5 * MIB
    provider = provider_for(http, aws.params(s3_upload_part_size=part))
    data = synthetic(11 * MIB + 12345)
    step = 64 << 10
    pulled = 0
    stored = [0]
    lag: list[int] = []
    sizes: list[int] = []
    upload_part = s3.S3.upload_part

    async def spy(self: s3.S3, path: s3.S3Path, upload_id: str, number: int,
                  body: bytes) -> str:
        etag = await upload_part(self, path, upload_id, number, body)
        sizes.append(len(body))
        stored.append(stored[-1] + len(body))
        return etag

    monkeypatch.setattr(s3.S3, "upload_part", spy)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for begin in range(0, len(data), step):
            lag.append(pulled - stored[-1])  # what the adapter may be holding right now
            pulled += min(step, len(data) - begin)
            yield data[begin: begin + step]

    uri = await provider.put_input(stream(), "file-big.jsonl")
    calls = s3_calls(aws)
    assert calls[0][0] == "POST" and calls[0][1] == "uploads="
    assert [c[0] for c in calls[1:-1]] == ["PUT"] * 3
    assert all(c[1].startswith("partNumber=") and c[2] == 200 for c in calls[1:-1])
    assert calls[-1][0] == "POST" and calls[-1][1].startswith("uploadId=")
    assert sizes == [part, part, len(data) - 2 * part]  # >= 5 MiB but the last
    assert max(lag) <= part + step  # memory bounded by a part
    key = uri.removeprefix(f"s3://{aws.bucket}/")
    assert aws.read(key) == data


async def test_a_failed_upload_is_aborted(aws: Aws, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, aws.params(s3_upload_part_size=5 * MIB))
    data = synthetic(7 * MIB)

    class Broken(Exception):
        pass

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in chunks(data):
            yield chunk
        raise Broken("the input broke off")

    with pytest.raises(Broken):
        await provider.put_input(stream(), "file-broken.jsonl")
    methods = [(c[0], c[1].split("=")[0]) for c in s3_calls(aws)]
    assert methods[0] == ("POST", "uploads") and methods[-1] == ("DELETE", "uploadId")
    assert aws.objects() == []
    assert not aws.client().list_multipart_uploads(Bucket=aws.bucket).get("Uploads")


async def test_missing_bucket_is_a_deployment_problem(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, aws.params(s3_bucket_name="no-such-bucket"))
    with pytest.raises(UpstreamUnavailable, match="NoSuchBucket"):  # a 502, not a 404
        await put(provider, b'{"recordId":"a","modelInput":{}}\n')


async def test_delete_input(aws: Aws, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, aws.params())
    uri = await put(provider, native_jsonl(provider, [request_line("a")]))
    assert aws.objects("batch-gateway/in/")
    await provider.delete_input(uri)
    assert aws.objects() == []
    with pytest.raises(UpstreamNotFound):
        await provider.delete_input(uri)
    with pytest.raises(UpstreamNotFound):  # not a copy this adapter could have made
        await provider.delete_input("file-abc")


# -- signatures -----------------------------------------------------------------------------------


async def test_wrong_signatures_are_rejected_and_reported_as_unavailable(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    wrong = provider_for(http, aws.params(aws_secret_access_key="not-the-secret"))
    with pytest.raises(UpstreamUnavailable, match="SignatureDoesNotMatch"):
        await put(wrong, b'{"recordId":"a","modelInput":{}}\n')
    assert aws.fake.s3_requests[-1].status == 403
    with pytest.raises(UpstreamUnavailable, match="InvalidSignatureException"):
        await wrong.poll("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdefabcdef")
    assert aws.fake.requests[-1].status == 403
    stranger = provider_for(http, aws.params(aws_access_key_id="AKIASTRANGER"))
    with pytest.raises(UpstreamUnavailable, match="UnrecognizedClientException"):
        await stranger.poll("abcdefabcdef")
    with pytest.raises(UpstreamUnavailable, match="InvalidAccessKeyId"):
        await put(stranger, b'{"recordId":"a","modelInput":{}}\n')
    # The right key passes both.
    good = provider_for(http, aws.params())
    await put(good, b'{"recordId":"a","modelInput":{}}\n')
    with pytest.raises(UpstreamNotFound):
        await good.poll("abcdefabcdef")


async def test_session_tokens_are_signed(s3_emulator: S3Emulator, bedrock_servers: Servers,
                                         http: aiohttp.ClientSession) -> None:
    env = Aws(s3_emulator, bedrock_servers,
              keys={"ASIATEMPORARY": ("temp-secret", "the-session-token")})
    try:
        params = env.params(aws_access_key_id="ASIATEMPORARY",
                            aws_secret_access_key="temp-secret")
        without = provider_for(http, params)
        with pytest.raises(UpstreamUnavailable, match="UnrecognizedClientException"):
            await without.poll("abcdefabcdef")
        with pytest.raises(UpstreamUnavailable, match="InvalidToken"):
            await put(without, b"x\n")
        provider = provider_for(http, {**params, "aws_session_token": "the-session-token"})
        await put(provider, b"x\n")
        with pytest.raises(UpstreamNotFound):
            await provider.poll("abcdefabcdef")
        assert env.fake.requests[-1].headers["x-amz-security-token"] == "the-session-token"
    finally:
        env.stop()


class _Headers(dict[str, str]):
    """Enough of starlette's Headers for `verify_sigv4`: case-insensitive, `getlist`."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in items.items()})

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(str(key).lower())

    def getlist(self, key: str) -> list[str]:
        return [self[key]] if key in self else []


def signed(path: str, body: bytes = b"", **extra: str) -> _Headers:
    request = AWSRequest(method="POST", url=f"http://127.0.0.1:9{path}", data=body,
                         headers={"Content-Type": "application/json", **extra})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION).add_auth(request)
    return _Headers({"host": "127.0.0.1:9", **dict(request.headers.items())})


def test_verify_sigv4_recomputes_botocore_signatures() -> None:
    keys = {ACCESS_KEY: (SECRET_KEY, None)}
    path = "/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Amodel-invocation-job" \
           "%2Fabc/stop"

    def check(headers: _Headers, body: bytes = b"{}", at: str = path, service: str = "bedrock",
              region: str = REGION, now: float | None = None) -> str | None:
        failure = verify_sigv4("POST", at, "", headers, body, service=service, region=region,
                               keys=keys, now=time.time() if now is None else now)
        return failure.code if failure else None

    good = signed(path, b"{}")
    assert check(good) is None
    assert check(good, body=b'{"x":1}') == "InvalidSignatureException"  # the payload is signed
    assert check(good, at=path.replace("abc", "abd")) == "InvalidSignatureException"
    assert check(good, region="us-west-2") == "InvalidSignatureException"
    assert check(good, service="s3") == "AuthorizationHeaderMalformed"
    assert check(good, now=time.time() + 600) == "InvalidSignatureException"  # expired
    assert check(_Headers({"host": "127.0.0.1:9"})) == "MissingAuthenticationTokenException"
    tampered = _Headers({**good, "content-type": "text/plain"})  # a signed header changed
    assert check(tampered) == "InvalidSignatureException"
    no_date = _Headers({k: v for k, v in good.items() if k != "x-amz-date"})
    assert check(no_date) == "IncompleteSignatureException"
    garbled = _Headers({**good, "authorization": "AWS4-HMAC-SHA256 nonsense"})
    assert check(garbled) == "IncompleteSignatureException"


# -- batches --------------------------------------------------------------------------------------


async def test_job_round_trip(aws: Aws, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, aws.params())
    lines = [request_line(f"req-{i}") for i in range(4)]
    lines.append(request_line("req bad", "please FAIL"))
    lines.append(request_line("plain7", "one two three four five", max_tokens=2))
    data = native_jsonl(provider, lines)
    uri = await put(provider, data)
    created = await provider.submit(submission(uri, data, batch_id="batch_round1",
                                               metadata={"team": "ml"}))
    assert created.status == "validating"
    assert re.fullmatch(r"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/[a-z0-9]{12}",
                        created.id)
    (body,) = aws.fake.created()
    assert JOB_NAME.fullmatch(body["jobName"]) and body["jobName"].startswith("batch-round1-")
    assert body["clientRequestToken"] == body["jobName"]
    assert body["modelId"] == MODEL and body["roleArn"].endswith(":role/BedrockBatchInference")
    assert body["inputDataConfig"] == {"s3InputDataConfig": {"s3Uri": uri,
                                                             "s3InputFormat": "JSONL"}}
    assert body["outputDataConfig"] == {"s3OutputDataConfig": {
        "s3Uri": f"s3://{aws.bucket}/batch-gateway/out/batch_round1/"}}
    assert "timeoutDurationInHours" not in body and "tags" not in body
    assert "ml" not in json.dumps(body)  # metadata stays with the gateway

    seen = []
    batch = created
    while batch.status not in ("completed", "failed"):
        batch = await provider.poll(created.id)
        seen.append(batch.status)
    assert seen == ["validating", "validating", "in_progress", "completed"]
    # The job is addressed by its ARN, percent-encoded (and signed double-encoded).
    get = aws.fake.requests[-1]
    assert get.method == "GET" and get.path.startswith("/model-invocation-job/arn%3Aaws%3A")
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (6, 5, 1)
    assert batch.output == ResultFile(bytes=None, created_at=batch.completed_at)
    assert batch.error == ResultFile(bytes=None, created_at=batch.completed_at)
    assert batch.completed_at and batch.expires_at and batch.errors is None
    job = aws.fake.job(created.id)
    manifest = json.loads(aws.read(f"batch-gateway/out/batch_round1/{job.job_id}/"
                                   "manifest.json.out"))
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (
        manifest["inputTokenCount"], manifest["outputTokenCount"])
    assert batch.usage.total_tokens == manifest["inputTokenCount"] + manifest["outputTokenCount"]
    assert aws.objects(f"batch-gateway/out/batch_round1/{job.job_id}/") == [
        f"batch-gateway/out/batch_round1/{job.job_id}/file-abc-"
        f"{uri.rsplit('-', 1)[1]}.out",
        f"batch-gateway/out/batch_round1/{job.job_id}/manifest.json.out",
    ]

    output = await read_lines(provider, created.id, "output")
    errors = await read_lines(provider, created.id, "errors")
    assert sorted(x["custom_id"] for x in output) == ["plain7", "req-0", "req-1", "req-2",
                                                      "req-3"]
    assert [x["custom_id"] for x in errors] == ["req bad"]
    assert errors[0]["response"]["status_code"] == 400
    by_id = {x["custom_id"]: x["response"]["body"] for x in output}
    assert by_id["req-0"]["choices"][0]["message"]["content"] == "echo: hello req-0"
    assert by_id["req-0"]["model"] == "claude-sonnet-4-5-20250929"
    assert by_id["plain7"]["choices"][0]["finish_reason"] == "length"
    assert by_id["req-0"]["usage"]["total_tokens"] > 0
    assert await read_lines(provider, created.id, "output") == output  # stable re-reads

    # Submitting the same batch again (a retry) is the same job.
    again = await provider.submit(submission(uri, data, batch_id="batch_round1"))
    assert again.id == created.id and len(aws.fake.jobs) == 1


async def test_timeout_hours_and_unsuitable_batches(aws: Aws,
                                                    http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, aws.params(timeout_hours=48))
    data = native_jsonl(provider, [request_line(f"r{i}") for i in range(3)])
    uri = await put(provider, data)
    with pytest.raises(Unsuitable, match="at least 3 records"):
        await provider.submit(submission(uri, data, count=2))
    with pytest.raises(Unsuitable, match="chat/completions"):
        await provider.submit(submission(uri, data, endpoint="/v1/embeddings"))
    with pytest.raises(UpstreamNotFound):  # the copy is gone: another deployment may have one
        await provider.submit(submission(uri.replace(".jsonl", "-gone.jsonl"), data))
    assert aws.fake.created() == []
    await provider.submit(submission(uri, data))
    assert aws.fake.created()[0]["timeoutDurationInHours"] == 48


async def test_too_few_records_fail_validation_upstream(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    # A deployment configured below the account's real minimum: Bedrock fails the job.
    provider = provider_for(http, aws.params(min_requests_per_job=1))
    batch = await run(provider, [request_line("only")])
    assert batch.status == "failed" and batch.failed_at
    assert batch.output is None and batch.error is None
    assert batch.errors is not None
    (error,) = batch.errors
    assert error.code == "bedrock_job_failed"
    assert error.message == ("The number of records in the input (1) is less than the minimum "
                             "number of records per batch inference job (3).")
    with pytest.raises(UpstreamNotFound):
        await provider.results(batch.id, "output")


async def test_bad_input_fails_with_a_scrubbed_message(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, aws.params())
    data = b'{"recordId": "a-1", "modelInput": {}}\n' * 3
    uri = await put(provider, data)
    batch = await finish(provider, await provider.submit(submission(uri, data)))
    assert batch.status == "failed" and batch.errors is not None
    message = batch.errors[0].message or ""
    assert "recordId must be an alphanumeric string" in message
    assert aws.bucket not in message and "s3://…" in message


async def test_stop_while_running_gives_partial_results(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, aws.params())
    lines = [request_line(f"req-{i}") for i in range(6)]
    batch = await start(provider, lines)
    for _ in range(3):
        batch = await provider.poll(batch.id)
    assert batch.status == "in_progress"
    stopping = await provider.cancel(batch.id)
    assert stopping.status == "cancelled" and stopping.cancelled_at  # Stopping, then Stopped
    assert stopping.request_counts is not None
    assert (stopping.request_counts.total, stopping.request_counts.completed,
            stopping.request_counts.failed) == (6, 3, 3)
    assert stopping.output is not None and stopping.error is not None
    output = await read_lines(provider, batch.id, "output")
    errors = await read_lines(provider, batch.id, "errors")
    assert len(output) == 3 and len(errors) == 3
    assert sorted(x["custom_id"] for x in output + errors) == sorted(f"req-{i}" for i in range(6))
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    with pytest.raises(UpstreamConflict, match="already ended"):
        await provider.cancel(batch.id)


async def test_stop_before_running_and_cancel_missing(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, aws.params())
    batch = await start(provider, [request_line(f"r{i}") for i in range(3)])
    assert (await provider.cancel(batch.id)).status in ("cancelling", "cancelled")
    final = await finish(provider, batch)
    assert final.status == "cancelled"
    assert final.output is None and final.error is not None  # nothing ran
    errors = await read_lines(provider, batch.id, "errors")
    assert sorted(x["custom_id"] for x in errors) == ["r0", "r1", "r2"]
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    assert await read_lines(provider, batch.id, "output") == []
    with pytest.raises(UpstreamNotFound):
        await provider.cancel("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"
                              "zzzzzzzzzzzz")


@pytest.mark.parametrize(("status", "processed", "expected", "code"), [
    ("PartiallyCompleted", 2, "completed", "batch_expired"),
    ("Expired", None, "expired", "batch_expired"),
])
async def test_partial_and_expired_jobs(
    aws: Aws, http: aiohttp.ClientSession, status: str, processed: int | None, expected: str,
    code: str,
) -> None:
    provider = provider_for(http, aws.params())
    lines = [request_line(f"req-{i}") for i in range(4)]
    batch = await start(provider, lines)
    for _ in range(2):
        batch = await provider.poll(batch.id)  # validated: the job knows its records
    aws.fake.set_status(aws.fake.job(batch.id).job_id, status, processed)
    final = await provider.poll(batch.id)
    assert final.status == expected
    assert final.request_counts is not None
    done = processed or 0
    assert (final.request_counts.completed, final.request_counts.failed) == (done, 4 - done)
    assert (final.output is not None) == bool(done) and final.error is not None
    output = await read_lines(provider, batch.id, "output")
    errors = await read_lines(provider, batch.id, "errors")
    assert len(output) == done
    assert sorted(x["custom_id"] for x in output + errors) == sorted(f"req-{i}" for i in range(4))
    assert all(x["error"]["code"] == code for x in errors)


@pytest.mark.parametrize(("status", "code", "error"), [
    (429, "ThrottlingException", UpstreamRateLimited),
    (400, "ServiceQuotaExceededException", DeploymentFull),
    (400, "ValidationException", UpstreamBadRequest),
    (400, "ConflictException", UpstreamConflict),
    (404, "ResourceNotFoundException", UpstreamNotFound),
    (403, "AccessDeniedException", UpstreamUnavailable),
    (500, "InternalServerException", UpstreamUnavailable),
    (503, "ServiceUnavailableException", UpstreamUnavailable),
])
async def test_bedrock_errors_are_typed(
    aws: Aws, http: aiohttp.ClientSession, status: int, code: str, error: type[Exception]
) -> None:
    provider = provider_for(http, aws.params())
    data = native_jsonl(provider, [request_line(f"r{i}") for i in range(3)])
    uri = await put(provider, data)
    aws.fake.inject.append((status, code, "nope: arn:aws:iam::123456789012:role/Secret"))
    with pytest.raises(error) as caught:
        await provider.submit(submission(uri, data))
    assert "role/Secret" not in str(caught.value)


async def test_the_active_job_quota_is_deployment_full(
    s3_emulator: S3Emulator, bedrock_servers: Servers, http: aiohttp.ClientSession
) -> None:
    env = Aws(s3_emulator, bedrock_servers, max_active_jobs=1)
    try:
        provider = provider_for(http, env.params())
        await start(provider, [request_line(f"r{i}") for i in range(3)], batch_id="batch_one")
        with pytest.raises(DeploymentFull):
            await start(provider, [request_line(f"r{i}") for i in range(3)],
                        batch_id="batch_two")
    finally:
        env.stop()


def test_error_shapes() -> None:
    json_error = error_for(400, b'{"message": "bad"}', {
        "x-amzn-ErrorType": "ValidationException:http://internal.amazon.com/coral/x/"})
    assert isinstance(json_error, UpstreamBadRequest) and json_error.detail == "bad"
    typed = error_for(400, b'{"__type": "com.amazon.coral#ServiceQuotaExceededException",'
                           b'"Message": "full"}', {})
    assert isinstance(typed, DeploymentFull) and "full" in typed.detail
    throttled = error_for(400, b'{"__type": "ThrottlingException"}', {"retry-after": "7"})
    assert isinstance(throttled, UpstreamRateLimited) and throttled.retry_after == 7.0
    xml = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    assert isinstance(error_for(404, xml, {}), UpstreamNotFound)
    slow = b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
    assert isinstance(error_for(503, slow, {}), UpstreamRateLimited)
    assert isinstance(error_for(403, b"", {}), UpstreamUnavailable)  # HEAD: no body
    assert isinstance(error_for(404, b"", {}), UpstreamNotFound)
    assert isinstance(error_for(502, b"<html>bad gateway</html>", {}), UpstreamUnavailable)


# -- credentials and construction ---------------------------------------------------------------


async def test_default_credential_chain(
    aws: Aws, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    params = aws.params(aws_access_key_id=None, aws_secret_access_key=None)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    nothing = provider_for(http, params)
    with pytest.raises(UpstreamUnavailable, match="no AWS credentials"):
        await nothing.poll("abcdefabcdef")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    provider = provider_for(http, params)
    await put(provider, b"x\n")
    with pytest.raises(UpstreamNotFound):
        await provider.poll("abcdefabcdef")


async def test_construction_does_no_io() -> None:
    # Nothing listens on these; a provider must still construct and answer the pure parts.
    async with aiohttp.ClientSession() as http:
        provider = provider_for(http, {
            "model": f"bedrock/{MODEL}", "aws_region_name": REGION, "s3_bucket_name": "b-1",
            "aws_batch_role_arn": "arn:aws:iam::123456789012:role/R",
            "api_base": "http://127.0.0.1:9", "s3_endpoint_url": "http://127.0.0.1:9"})
        assert isinstance(provider, BedrockProvider)
        assert provider.capabilities().min_requests == 100
        await provider.aclose()


async def test_the_fake_serves_a_boto3_client(aws: Aws) -> None:
    """The fake speaks Bedrock's protocol as botocore does, not just as the adapter does."""
    import boto3

    client = boto3.client("bedrock", region_name=REGION, endpoint_url=aws.bedrock.url,
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    key = "batch-gateway/in/boto.jsonl"
    aws.client().put_object(Bucket=aws.bucket, Key=key, Body=b"".join(
        json.dumps(to_record(request_line(f"b{i}"))).encode() + b"\n" for i in range(3)))
    arn = client.create_model_invocation_job(
        jobName="boto3-job", roleArn=aws.params()["aws_batch_role_arn"], modelId=MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{aws.bucket}/{key}"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{aws.bucket}/out/"}},
    )["jobArn"]
    for _ in range(4):
        job = client.get_model_invocation_job(jobIdentifier=arn)
    assert job["status"] == "Completed" and job["successRecordCount"] == 3
    listed = client.list_model_invocation_jobs(statusEquals="Completed")
    assert [j["jobArn"] for j in listed["invocationJobSummaries"]] == [arn]
    with pytest.raises(client.exceptions.ValidationException):
        client.stop_model_invocation_job(jobIdentifier=arn)
    with pytest.raises(client.exceptions.ValidationException, match="jobName"):
        client.create_model_invocation_job(
            jobName="bad_name!", roleArn=aws.params()["aws_batch_role_arn"], modelId=MODEL,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{aws.bucket}/{key}"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{aws.bucket}/out/"}})



def test_the_fake_validates_job_bodies(aws: Aws) -> None:
    import httpx

    def create(body: dict[str, Any]) -> httpx.Response:
        url = aws.bedrock.url + "/model-invocation-job"
        data = json.dumps(body).encode()
        request = AWSRequest(method="POST", url=url, data=data,
                             headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION).add_auth(request)
        return httpx.post(url, content=data, headers=dict(request.headers.items()))

    good = {"jobName": "job-1", "roleArn": aws.params()["aws_batch_role_arn"], "modelId": MODEL,
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": f"s3://{aws.bucket}/in/a.jsonl"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"s3://{aws.bucket}/out/"}}}
    for change, words in (
        ({"metadata": {"a": "b"}}, "'metadata' failed to satisfy constraint: Member is not a "
                                   "known member"),
        ({"jobName": "batch_1"}, "at 'jobName' failed to satisfy constraint: Member must "
                                 "satisfy regular expression pattern"),
        ({"roleArn": "BedrockRole"}, "at 'roleArn'"),
        ({"timeoutDurationInHours": 12}, "value between 24 and 168"),
        ({"modelId": "anthropic.claude-unknown-v1:0"}, "model identifier is invalid"),
        ({"roleArn": "arn:aws:iam::123456789012:role/Other"}, "could not assume"),
        ({"inputDataConfig": {}}, "exactly one member"),
        ({"jobName": None}, "Value null at 'jobName'"),
    ):
        resp = create({**good, **change})
        assert resp.status_code == 400, resp.text
        assert resp.headers["x-amzn-ErrorType"].startswith("ValidationException:")
        assert words in resp.json()["message"], resp.json()
    assert aws.fake.jobs == {}
    assert create(good).status_code == 200
    resp = create({**good, "clientRequestToken": "other"})
    assert resp.status_code == 400 and resp.headers["x-amzn-ErrorType"].startswith("Conflict")
