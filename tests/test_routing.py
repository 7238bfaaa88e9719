"""Batch creation fails over among deployments holding the file, never elsewhere."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import GROUP, Upstream
from tests.helpers import batch_file
from tests.test_flow import batch_creates


def upload(client: openai.OpenAI) -> str:
    return client.files.create(file=batch_file(1), purpose="batch",
                               extra_body={"target_model_names": GROUP}).id


def create(client: openai.OpenAI, file_id: str) -> openai.types.Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_failing_deployment_is_skipped(
    client: openai.OpenAI, upstreams: list[Upstream], status: int
) -> None:
    file_id = upload(client)
    sick, healthy = upstreams[0], upstreams[1]
    sick.fake.fail("POST", r"^/v1/batches$", status, times=10)
    for _ in range(4):
        assert create(client, file_id).status == "validating"
    # Every batch landed on the healthy deployment; the sick one was tried once and then left
    # alone for its cool-down instead of being hit on every create.
    assert len(healthy.fake.batches) == 4 and sick.fake.batches == {}
    assert batch_creates(sick) == 1
    assert batch_creates(upstreams[2]) == 0


def test_not_answering_deployment_is_skipped(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = upload(client)
    upstreams[0].fake.stall("POST", r"^/v1/batches$", 4, times=2)  # longer than the 2 s timeout
    for _ in range(2):
        assert create(client, file_id).status == "validating"
    assert len(upstreams[1].fake.batches) == 2


def test_all_rate_limited_is_429_with_retry_after(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = upload(client)
    for up in upstreams:
        up.fake.fail("POST", r"^/v1/batches$", 429, headers={"Retry-After": "7"}, times=5)
    with pytest.raises(openai.RateLimitError) as info:
        create(client, file_id)
    assert info.value.response.headers["retry-after"] == "7"
    assert GROUP in info.value.message
    # Never sent to the deployment that does not hold the file.
    assert batch_creates(upstreams[2]) == 0


def test_all_down_is_502(client: openai.OpenAI, upstreams: list[Upstream]) -> None:
    file_id = upload(client)
    for up in upstreams:
        up.fake.fail("POST", r"^/v1/batches$", 503, times=5)
    with pytest.raises(openai.InternalServerError) as info:
        create(client, file_id)
    assert info.value.status_code == 502
    assert "127.0.0.1" not in str(info.value.body) and "sk-upstream" not in str(info.value.body)
