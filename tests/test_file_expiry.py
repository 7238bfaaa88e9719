"""`expires_after` on upload (OpenAI's files.create): checked up front, shown as `expires_at`, and
the file (its copies upstream and the kept input with it) deleted once it has passed."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from gateway.store import Store
from gateway.store.schema import files
from gateway.testing.servers import gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file


def _upload(client: openai.OpenAI, expires_after: Any) -> Any:
    return client.files.create(file=batch_file(2), purpose="batch", expires_after=expires_after,
                               extra_body={"target_model_names": GROUP})


@pytest.mark.parametrize(("expires_after", "param"), [
    ({"anchor": "created_at", "seconds": 60}, "expires_after[seconds]"),
    ({"anchor": "created_at", "seconds": 2_592_001}, "expires_after[seconds]"),
    ({"anchor": "last_active_at", "seconds": 3600}, "expires_after[anchor]"),
])
def test_a_bad_expiry_is_refused_before_anything_is_copied(
    client: openai.OpenAI, upstreams: list[Upstream], expires_after: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _upload(client, expires_after)
    assert e.value.param == param
    assert not any(up.fake.files for up in upstreams)
    assert list(client.files.list()) == []


async def _expire_now(database_url: str, file_id: str) -> None:
    store = Store(database_url)
    await store.connect()
    try:  # an hour passes
        await store.db.execute(files.update().where(files.c.id == file_id)
                               .values(expires_at=int(time.time()) - 1))
    finally:
        await store.disconnect()


async def test_a_file_is_deleted_everywhere_once_its_expiry_passes(
    upstreams: list[Upstream], database_url: str
) -> None:
    cfg = config_for(upstreams, database_url, copy_retry_interval=0.2)
    with gateway_server(cfg) as server:
        key = httpx.post(f"{server.url}/key/generate", json={"models": [GROUP]},
                         headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        f = _upload(client, {"anchor": "created_at", "seconds": 3600})
        assert f.expires_at == f.created_at + 3600
        assert client.files.retrieve(f.id).expires_at == f.expires_at
        assert sum(len(up.fake.files) for up in upstreams) == 2

        await _expire_now(database_url, f.id)
        deadline = time.monotonic() + 10
        while sum(len(up.fake.files) for up in upstreams) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(up.fake.files for up in upstreams)
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(f.id)
