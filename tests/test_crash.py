"""Crashes lose nothing: a real `gateway serve` process is killed with SIGKILL during an upload,
a fan-out, a batch create and a delete (each at the moment the upstream has acted and the
gateway has not recorded it yet), restarted on the same database and file store, and then every
id resolves, nothing upstream is left that the gateway does not know about, and the client's
retry succeeds."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file, jsonl, request_line
from tests.test_serve import Served

HOLD = 4.0  # seconds an upstream keeps its answer back: the gateway dies meanwhile


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def crashing(upstreams: list[Upstream], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start (and restart) `gateway serve` on one database and data dir; every process is
    stopped at the end."""
    started: list[Served] = []

    def start(database_url: str | None = None) -> Served:
        cfg = config_for(upstreams, database_url or _sqlite(tmp_path), crash_recovery_seconds=1,
                         data_dir=str(tmp_path / "data"))
        served = Served(tmp_path, cfg)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def _kill(served: Served) -> None:
    served.proc.kill()  # SIGKILL: no shutdown code runs
    served.proc.wait(10)


def _client(served: Served, retries: int = 0) -> openai.OpenAI:
    key = httpx.post(f"{served.url}/key/generate", json={"models": [GROUP]},
                     headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
    return openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=retries)


def _same_key(served: Served, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=retries)


def _in_background(call: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        # The gateway dies under it: what a client sees in a crash.
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _upstream_files(upstreams: list[Upstream]) -> int:
    return sum(len(up.fake.files) for up in upstreams[:2])


def _upload(client: openai.OpenAI, **kw: Any) -> str:
    return client.files.create(file=batch_file(3), purpose="batch",
                               extra_body={"target_model_names": GROUP}, **kw).id


def test_kill_during_create_cancels_the_unrecorded_batch_and_the_retry_succeeds(
    crashing: Callable[..., Served], upstreams: list[Upstream], database_url: str
) -> None:
    gw = crashing(database_url)
    client = _client(gw)
    file_id = _upload(client)
    for up in upstreams[:2]:
        up.fake.hold("POST", r"^/v1/batches$", HOLD)
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
              "completion_window": "24h", "extra_headers": {"Idempotency-Key": "nightly-1"}}
    thread = _in_background(lambda: client.batches.create(**create))
    _until(lambda: any(up.fake.batches for up in upstreams), "the upstream never got the create")
    _kill(gw)
    thread.join()
    (orphan,) = [b for up in upstreams for b in up.fake.batches.values()]

    gw = crashing(database_url)
    # The batch the gateway never recorded is cancelled: nobody could follow or download it.
    _until(lambda: orphan["status"] in ("cancelling", "cancelled"),
           "the unrecorded batch was left running")
    # The client's retry with the same key succeeds (the dead request's hold on it ended).
    retried = _same_key(gw, client.api_key, retries=3).batches.create(**create)
    again = _same_key(gw, client.api_key).batches.retrieve(retried.id)
    assert again.id == retried.id and again.input_file_id == file_id
    live = [b for up in upstreams for b in up.fake.batches.values()
            if b["status"] not in ("cancelling", "cancelled")]
    assert len(live) == 1  # the retry's, and only it
    assert _same_key(gw, client.api_key).files.retrieve(file_id).id == file_id


def test_kill_during_upload_removes_the_copies_nobody_recorded(
    crashing: Callable[..., Served], upstreams: list[Upstream]
) -> None:
    gw = crashing()
    client = _client(gw)
    for up in upstreams[:2]:
        up.fake.hold("POST", r"^/v1/files$", HOLD)
    thread = _in_background(lambda: _upload(client))
    _until(lambda: _upstream_files(upstreams) == 2, "the copies never reached the upstreams")
    _kill(gw)
    thread.join()

    gw = crashing()
    # The client never got an id: the copies named after it are removed upstream.
    _until(lambda: _upstream_files(upstreams) == 0, "unrecorded copies were left upstream")
    again = _same_key(gw, client.api_key)
    assert list(again.files.list()) == []
    file_id = _upload(again)
    assert again.files.retrieve(file_id).id == file_id
    assert _upstream_files(upstreams) == 2


def test_kill_mid_fan_out_leaves_nothing_anywhere(
    crashing: Callable[..., Served], upstreams: list[Upstream]
) -> None:
    gw = crashing()
    client = _client(gw)
    line = jsonl([request_line(f"req-{i}") for i in range(2000)])
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        boundary = b"--crash"
        yield (boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
               + boundary + b'\r\nContent-Disposition: form-data; name="target_model_names"'
               b"\r\n\r\n" + GROUP.encode() + b"\r\n" + boundary
               + b'\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n'
               b"Content-Type: application/jsonl\r\n\r\n")
        yield line[: len(line) // 2]
        sent.set()
        time.sleep(30)  # the rest never comes: the gateway dies first
        yield line[len(line) // 2:]

    def upload() -> None:
        httpx.post(f"{gw.url}/v1/files", content=slow_body(), timeout=60,
                   headers={"Authorization": f"Bearer {client.api_key}",
                            "Content-Type": "multipart/form-data; boundary=crash"})

    _in_background(upload)
    assert sent.wait(10)
    # The copies are streaming to both deployments while the upload arrives.
    _until(lambda: sum(1 for up in upstreams[:2] for r in up.fake.requests
                       if r[:2] == ("POST", "/v1/files")) == 2, "no copy was started")
    _kill(gw)

    gw = crashing()
    again = _same_key(gw, client.api_key)
    assert list(again.files.list()) == []
    assert _upstream_files(upstreams) == 0  # a half-sent copy never becomes a file
    file_id = _upload(again)
    assert again.files.retrieve(file_id).id == file_id


def test_kill_during_delete_finishes_the_delete_after_restart(
    crashing: Callable[..., Served], upstreams: list[Upstream]
) -> None:
    gw = crashing()
    client = _client(gw)
    file_id = _upload(client)
    for up in upstreams[:2]:
        up.fake.hold("DELETE", r"^/v1/files/", HOLD)
    thread = _in_background(lambda: client.files.delete(file_id))
    _until(lambda: _upstream_files(upstreams) < 2, "no copy was deleted upstream")
    _kill(gw)
    thread.join()

    gw = crashing()
    again = _same_key(gw, client.api_key)
    with pytest.raises(openai.NotFoundError):
        again.files.retrieve(file_id)
    _until(lambda: _upstream_files(upstreams) == 0, "a copy of the deleted file was left")
    assert list(again.files.list()) == []


def test_kill_while_minting_output_ids_then_every_id_resolves_once(
    crashing: Callable[..., Served], upstreams: list[Upstream]
) -> None:
    gw = crashing()
    client = _client(gw)
    file_id = _upload(client)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    (up,) = [u for u in upstreams if u.fake.batches]
    (native,) = up.fake.batches
    up.fake.complete(native)
    # The gateway learns the end and asks for the output file's size: it dies right then.
    up.fake.hold("GET", r"^/v1/files/", HOLD)
    thread = _in_background(lambda: client.batches.retrieve(batch.id))
    _until(lambda: any(r[0] == "GET" and r[1].startswith("/v1/files/")
                       for r in up.fake.requests), "the output was never looked at")
    _kill(gw)
    thread.join()

    gw = crashing()
    again = _same_key(gw, client.api_key)
    done = again.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id
    assert again.batches.retrieve(batch.id).output_file_id == done.output_file_id
    content = again.files.content(done.output_file_id).read()
    assert content.count(b"custom_id") == 3
    outputs = [f for f in again.files.list() if f.purpose == "batch_output"]
    assert [f.id for f in outputs] == [done.output_file_id]
