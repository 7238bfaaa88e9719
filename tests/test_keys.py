"""Virtual keys: minted with the master key, stored hashed, rejected once deleted or expired."""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from gateway.store import driver_url
from gateway.testing.servers import ServerThread
from tests.conftest import GROUP, MASTER_KEY, OTHER_GROUP


def test_generate_info_list_delete(
    admin: httpx.Client, gateway: ServerThread, database_url: str
) -> None:
    assert admin.post("/team/new", json={"team_id": "t1"}).status_code == 200
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


def test_custom_key_and_unknown_fields(
    admin: httpx.Client, gateway: ServerThread
) -> None:
    custom = "sk-my-own-key-0123456789"
    made = admin.post("/key/generate", json={"key": custom, "max_budget": 5,
                                             "budget_duration": "1mo", "rpm_limit": 100})
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["key"] == custom
    assert (body["max_budget"], body["budget_duration"], body["rpm_limit"]) == (5.0, "1mo", 100)
    assert httpx.get(gateway.url + "/v1/models",
                     headers={"Authorization": f"Bearer {custom}"}).status_code == 200
    for bad in ("sk-short", "pk-" + "x" * 30, "sk-" + "x" * 300, "sk-has space-0123456789",
                "sk-slash/0123456789abc", custom, MASTER_KEY):
        resp = admin.post("/key/generate", json={"key": bad})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "key", bad
    resp = admin.post("/key/generate", json={"models": [], "tpm_limit": 5, "spend": 1})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "spend" in error["message"] and "tpm_limit" in error["message"]
    for field, value in (("max_budget", -1), ("rpm_limit", 1.5), ("budget_duration", "soon"),
                         ("blocked", "yes")):
        resp = admin.post("/key/generate", json={field: value})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == field
    missing_team = admin.post("/key/generate", json={"team_id": "no-such-team"})
    assert missing_team.json()["error"]["code"] == "team_not_found"
    # A user_id is created as a user with no restriction (as LiteLLM does).
    assert admin.post("/key/generate", json={"user_id": "new-user"}).status_code == 200
    assert admin.get("/user/info", params={"user_id": "new-user"}).status_code == 200


def test_update_regenerate_block_list_and_delete_by_alias(
    admin: httpx.Client, gateway: ServerThread
) -> None:
    assert admin.post("/team/new", json={"team_id": "t9"}).status_code == 200
    keys = [admin.post("/key/generate", json={"key_alias": f"k{i}", "user_id": "u9",
                                              "team_id": "t9" if i < 2 else None}).json()
            for i in range(3)]
    one = keys[0]
    updated = admin.post("/key/update", json={
        "key": one["key"], "models": [GROUP], "metadata": {"a": "b"}, "duration": "1h",
        "rpm_limit": 7})
    assert updated.status_code == 200, updated.text
    info = updated.json()
    assert info["token"] == one["token"] and info["models"] == [GROUP]
    assert info["rpm_limit"] == 7
    assert datetime.datetime.fromisoformat(info["expires"]).timestamp() > time.time()
    assert info["key_alias"] == "k0"  # fields not sent are kept
    assert admin.post("/key/update", json={"key": one["token"], "colour": 1}).status_code == 400
    assert admin.post("/key/update", json={"key": "key_nope"}).status_code == 404

    by_path = admin.post(f"/key/{keys[1]['key']}/regenerate", json={})
    assert by_path.status_code == 200 and by_path.json()["token"] == keys[1]["token"]
    headers = {"Authorization": f"Bearer {keys[1]['key']}"}
    assert httpx.get(gateway.url + "/v1/models", headers=headers).status_code == 401
    chosen = admin.post("/key/regenerate",
                        json={"key": keys[1]["token"], "new_key": "sk-chosen-0123456789xyz"})
    assert chosen.json()["key"] == "sk-chosen-0123456789xyz"

    blocked = admin.post("/key/block", json={"key": keys[2]["token"]}).json()
    assert blocked["blocked"] is True
    assert admin.post("/key/block", json={"key": "sk-nope"}).status_code == 404

    def listed(**params: Any) -> dict[str, Any]:
        resp = admin.get("/key/list", params=params)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    assert set(listed(team_id="t9")["keys"]) == {keys[0]["token"], keys[1]["token"]}
    assert listed(user_id="u9")["total_count"] == 3
    assert listed(key_alias="k2")["keys"] == [keys[2]["token"]]
    page = listed(user_id="u9", size=2, page=2, return_full_object="true")
    assert (page["total_count"], page["current_page"], page["total_pages"]) == (3, 2, 2)
    assert len(page["keys"]) == 1 and page["keys"][0]["user_id"] == "u9"

    deleted = admin.post("/key/delete", json={"key_aliases": ["k0", "k2"]}).json()
    assert set(deleted["deleted_keys"]) == {keys[0]["token"], keys[2]["token"]}
    assert listed(user_id="u9")["keys"] == [keys[1]["token"]]
