"""Copies to deployments: a deployment that fails uploads does not fail the upload; its copy is
made again in the background and on demand, and batches run where a copy is ready."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.testing.servers import gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file


def _placements(server_url: str, file_id: str) -> dict[str, str]:
    resp = httpx.get(f"{server_url}/v1/files/{file_id}",
                     headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 200, resp.text
    return {p["deployment_id"]: p["state"] for p in resp.json()["placements"]}


def _client(server_url: str) -> openai.OpenAI:
    key = httpx.post(f"{server_url}/key/generate", json={"models": [GROUP]},
                     headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
    return openai.OpenAI(base_url=server_url + "/v1", api_key=key, max_retries=0)


def test_a_failing_deployment_does_not_fail_the_upload_and_recovers(
    upstreams: list[Upstream], database_url: str
) -> None:
    healthy, broken = upstreams[0], upstreams[1]
    broken.fake.fail("POST", r"^/v1/files$", 500, times=-1)
    cfg = config_for(upstreams, database_url, copy_retry_interval=0.3)
    with gateway_server(cfg) as server:
        client = _client(server.url)
        f = client.files.create(file=batch_file(3), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        states = _placements(server.url, f.id)
        assert sorted(states.values()) == ["failed", "ready"]
        # Tenants see a plain file, never the deployments behind it.
        assert "placements" not in client.files.retrieve(f.id).model_dump()

        # Every batch runs on the deployment holding a ready copy.
        for _ in range(3):
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            assert batch.status in ("validating", "in_progress")
        assert len(healthy.fake.batches) == 3 and not broken.fake.batches

        # The deployment recovers: the background retry makes its copy from the kept input.
        broken.fake.clear_faults()
        deadline = time.monotonic() + 20
        while sorted(_placements(server.url, f.id).values()) != ["ready", "ready"]:
            assert time.monotonic() < deadline, _placements(server.url, f.id)
            time.sleep(0.1)
        (native,) = broken.fake.uploads
        lines = broken.fake.file_lines(native)
        assert [x["custom_id"] for x in lines] == ["req-0", "req-1", "req-2"]
        assert {x["body"]["model"] for x in lines} == {broken.model}


def test_a_batch_makes_a_missing_copy_first(
    upstreams: list[Upstream], database_url: str
) -> None:
    only = upstreams[0]
    only.fake.fail("POST", r"^/v1/files$", 503, times=1)
    # A retry interval far away: only the batch's own request can make the copy.
    cfg = config_for(upstreams[:1], database_url, copy_retry_interval=3600)
    with gateway_server(cfg) as server:
        client = _client(server.url)
        f = client.files.create(file=batch_file(2), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        assert list(_placements(server.url, f.id).values()) == ["failed"]
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert batch.input_file_id == f.id
        assert list(_placements(server.url, f.id).values()) == ["ready"]
        (native,) = only.fake.uploads
        assert [b["input_file_id"] for b in only.fake.batches.values()] == [native]
        # The input's content is the gateway's kept copy, byte for byte.
        assert client.files.content(f.id).read() == batch_file(2).getvalue()


def test_no_copy_anywhere_is_a_502_naming_the_group_only(
    upstreams: list[Upstream], database_url: str
) -> None:
    only = upstreams[0]
    only.fake.fail("POST", r"^/v1/files$", 500, times=-1)
    cfg = config_for(upstreams[:1], database_url, copy_retry_interval=3600)
    with gateway_server(cfg) as server:
        client = _client(server.url)
        f = client.files.create(file=batch_file(1), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        with pytest.raises(openai.InternalServerError) as info:
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        assert info.value.status_code == 502
        assert GROUP in str(info.value.body) and "127.0.0.1" not in str(info.value.body)
        assert not only.fake.batches


def test_retention_deletes_old_inputs_everywhere(
    upstreams: list[Upstream], database_url: str
) -> None:
    only = upstreams[0]
    # About 0.9 s: the file expires during the test, and its expiry is announced.
    cfg = config_for(upstreams[:1], database_url, file_retention_days=0.00001)
    with gateway_server(cfg) as server:
        client = _client(server.url)
        f = client.files.create(file=batch_file(1), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        assert f.expires_at == f.created_at + 1
        assert len(only.fake.uploads) == 1
        deadline = time.monotonic() + 20
        while True:
            try:
                client.files.retrieve(f.id)
            except openai.NotFoundError:
                break
            assert time.monotonic() < deadline, "the file did not expire"
            time.sleep(0.1)
        # The file is gone for clients first; its copy upstream and its kept input follow.
        kept = Path(cfg["general_settings"]["data_dir"]) / "files"
        while only.fake.uploads or list(kept.rglob("*.jsonl")):
            assert time.monotonic() < deadline, (only.fake.uploads, list(kept.rglob("*")))
            time.sleep(0.05)


def test_a_deletion_cut_short_is_hidden_at_once_and_finished_later(
    upstreams: list[Upstream], database_url: str
) -> None:
    only = upstreams[0]
    cfg = config_for(upstreams[:1], database_url, copy_retry_interval=0.3)
    with gateway_server(cfg) as server:
        client = _client(server.url)
        f = client.files.create(file=batch_file(1), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        assert len(only.fake.uploads) == 1
        # The provider fails the deletion of its copy: the same state a crash leaves behind.
        only.fake.fail("DELETE", r"^/v1/files/", 500, times=-1)
        with pytest.raises(openai.InternalServerError):
            client.files.delete(f.id)
        # Never half-visible: gone from retrieve, list and content at once.
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(f.id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(f.id)
        assert f.id not in [x.id for x in client.files.list().data]
        # The provider recovers: the janitor finishes the deletion everywhere.
        only.fake.clear_faults()
        deadline = time.monotonic() + 20
        while only.fake.uploads:
            assert time.monotonic() < deadline, "the copy was never deleted"
            time.sleep(0.1)
        kept = Path(cfg["general_settings"]["data_dir"]) / "files"
        deadline = time.monotonic() + 20
        while list(kept.rglob("*.jsonl")):
            assert time.monotonic() < deadline, "the kept input was never deleted"
            time.sleep(0.1)
