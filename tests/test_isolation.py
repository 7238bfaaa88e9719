"""Another key's file or batch answers 404 exactly like a missing one, on every endpoint."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from gateway.testing.servers import ServerThread
from tests.conftest import GROUP
from tests.helpers import batch_file
from tests.test_flow import poll


@pytest.fixture
def owned(
    make_key: Callable[..., str], client_for: Callable[[str], openai.OpenAI]
) -> dict[str, str]:
    alice = client_for(make_key([GROUP]))
    f = alice.files.create(file=batch_file(2), purpose="batch",
                           extra_body={"target_model_names": GROUP})
    done = poll(alice, alice.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    live = alice.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert done.output_file_id
    return {"file": f.id, "output": done.output_file_id, "done": done.id, "live": live.id}


def test_other_key_gets_404_everywhere(
    owned: dict[str, str],
    make_key: Callable[..., str],
    gateway: ServerThread,
) -> None:
    mallory = make_key([GROUP])
    missing_file = "file-" + "A" * 22
    missing_batch = "batch_" + "A" * 22
    calls = [
        ("GET", "/v1/files/{file}"), ("GET", "/v1/files/{file}/content"),
        ("DELETE", "/v1/files/{file}"),
        ("GET", "/v1/files/{output}"), ("GET", "/v1/files/{output}/content"),
        ("DELETE", "/v1/files/{output}"),
        ("GET", "/v1/batches/{done}"), ("GET", "/v1/batches/{live}"),
        ("POST", "/v1/batches/{live}/cancel"), ("POST", "/v1/batches/{done}/cancel"),
    ]
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {mallory}"}) as c:
        for method, path in calls:
            theirs = c.request(method, path.format(**owned))
            missing = c.request(method, path.format(file=missing_file, output=missing_file,
                                                    done=missing_batch, live=missing_batch))
            assert theirs.status_code == missing.status_code == 404, (method, path)
            # Same shape of answer: nothing tells "exists but not yours" from "missing".
            assert theirs.json()["error"]["type"] == missing.json()["error"]["type"]
        create = c.post("/v1/batches", json={"input_file_id": owned["file"],
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"})
        assert create.status_code == 404
        assert c.get("/v1/files").json()["data"] == []
        assert c.get("/v1/batches").json()["data"] == []
        # Paging with another key's cursor reveals nothing either.
        assert c.get("/v1/batches", params={"after": owned["live"]}).json()["data"] == []


def test_owner_still_has_everything(
    owned: dict[str, str], make_key: Callable[..., str]
) -> None:
    # (sanity for the test above: the ids are real)
    assert all(v for v in owned.values())


def test_only_the_master_key_lists_every_tenants_batches(
    make_key: Callable[..., str], client_for: Callable[[str], openai.OpenAI],
    admin: httpx.Client,
) -> None:
    alice, bob = client_for(make_key([GROUP])), client_for(make_key([GROUP]))
    made = []
    for client in (alice, bob):
        f = client.files.create(file=batch_file(2), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        made.append(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h").id)
    # (On PostgreSQL the database is shared with other tests: other tenants are there too.)
    everyone = admin.get("/v1/batches", params={"all": "true", "limit": 2})
    assert everyone.status_code == 200
    assert [b["id"] for b in everyone.json()["data"]] == made[::-1]  # newest first
    assert made[0] not in [b["id"] for b in admin.get("/v1/batches").json()["data"]]
    page = admin.get("/v1/batches", params={"all": "true", "limit": 1}).json()
    rest = admin.get("/v1/batches", params={"all": "true", "after": page["last_id"],
                                            "limit": 1}).json()
    assert [b["id"] for b in page["data"] + rest["data"]] == made[::-1]

    with pytest.raises(openai.PermissionDeniedError):
        alice.batches.list(extra_query={"all": "true"})
    assert [b.id for b in alice.batches.list()] == [made[0]]
    assert admin.get("/v1/batches", params={"all": "yes"}).status_code == 400

    # Files alike.
    files = admin.get("/v1/files", params={"all": "true", "limit": 2}).json()["data"]
    assert len(files) == 2 and {f["id"] for f in files} == {
        b.input_file_id for b in (alice.batches.retrieve(made[0]), bob.batches.retrieve(made[1]))}
    assert not admin.get("/v1/files").json()["data"] or files[0]["id"] not in [
        f["id"] for f in admin.get("/v1/files").json()["data"]]
    with pytest.raises(openai.PermissionDeniedError):
        bob.files.list(extra_query={"all": "true"})
