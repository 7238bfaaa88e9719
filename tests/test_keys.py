"""Virtual keys: minted with the master key, stored hashed, rejected once deleted or expired."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import httpx
import openai
import pytest
import sqlalchemy as sa

from gateway.store import driver_url
from gateway.testing.servers import ServerThread
from tests.conftest import GROUP, OTHER_GROUP


def test_generate_info_list_delete(
    admin: httpx.Client, gateway: ServerThread, database_url: str
) -> None:
    resp = admin.post("/key/generate", json={
        "models": [GROUP], "key_alias": "team-a", "team_id": "t1", "user_id": "u1",
        "metadata": {"cost_center": "42"},
    })
    assert resp.status_code == 200
    body = resp.json()
    key = body["key"]
    assert key.startswith("sk-") and len(key) >= 40
    assert body["models"] == [GROUP] and body["key_alias"] == "team-a"

    info = admin.get("/key/info", params={"key": key}).json()
    assert info["info"]["team_id"] == "t1" and info["info"]["metadata"] == {"cost_center": "42"}
    own = httpx.get(gateway.url + "/key/info", headers={"Authorization": f"Bearer {key}"})
    assert own.json()["key"] == info["key"]

    listed = admin.get("/key/list").json()
    assert info["key"] in listed["keys"] and key not in str(listed)

    # Only the hash is stored.
    sync_url = driver_url(database_url).replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    if sync_url.startswith("sqlite"):
        engine = sa.create_engine(sync_url)
        with engine.connect() as conn:
            dump = str(conn.execute(sa.text("SELECT * FROM gateway_keys")).fetchall())
        assert key not in dump
        assert hashlib.sha256(key.encode()).hexdigest() in dump

    assert admin.post("/key/delete", json={"keys": [key]}).json()["deleted_keys"] == [info["key"]]
    gone = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert gone.status_code == 401
    assert gone.json()["error"]["type"] == "authentication_error"


def test_expired_key_is_rejected(
    admin: httpx.Client, client_for: Callable[[str], openai.OpenAI]
) -> None:
    key = admin.post("/key/generate", json={"models": [GROUP], "duration": "1s"}).json()["key"]
    client = client_for(key)
    assert [m.id for m in client.models.list()] == [GROUP]
    time.sleep(2.05)  # expiry is whole seconds, rounded up: at most 2 s after creation
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_bad_and_missing_keys(gateway: ServerThread) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-nope"}, {"api-key": "sk-nope"}):
        resp = httpx.get(gateway.url + "/v1/files", headers=headers)
        assert resp.status_code == 401
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_api_key_header_is_accepted(make_key: Callable[..., str], gateway: ServerThread) -> None:
    key = make_key([GROUP])
    resp = httpx.get(gateway.url + "/v1/models", headers={"api-key": key})
    assert resp.status_code == 200


def test_admin_endpoints_need_the_master_key(
    make_key: Callable[..., str], gateway: ServerThread
) -> None:
    key = make_key([])
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(gateway.url + "/key/generate", json={}, headers=headers).status_code == 403
    assert httpx.get(gateway.url + "/key/list", headers=headers).status_code == 403


def test_models_show_what_the_key_may_use(
    make_key: Callable[..., str], client_for: Callable[[str], openai.OpenAI],
    gateway: ServerThread,
) -> None:
    only = client_for(make_key([OTHER_GROUP]))
    assert [m.id for m in only.models.list()] == [OTHER_GROUP]
    every = make_key([])  # an empty list means every model group
    info = httpx.get(gateway.url + "/model_group/info",
                     headers={"Authorization": f"Bearer {every}"}).json()
    assert [(g["model_group"], g["mode"]) for g in info["data"]] == [
        (GROUP, "batch"), (OTHER_GROUP, "batch")]


def test_unknown_model_in_key_is_rejected(admin: httpx.Client) -> None:
    resp = admin.post("/key/generate", json={"models": ["nope"]})
    assert resp.status_code == 400 and "nope" in resp.json()["error"]["message"]
