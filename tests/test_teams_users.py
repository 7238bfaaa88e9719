"""Teams and users (LiteLLM's admin API) through real HTTP: every route, model access as key ∩
user ∩ team with blocked levels, files and batches shared by a user's keys (also after a
regenerate and a key's deletion), and the master key's LiteLLM alias."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.store import FileRow, Store, schema
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, OTHER_GROUP, Upstream, config_for
from tests.helpers import batch_file
from tests.test_flow import poll


def _as(gateway: ServerThread, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=30)


def _models(gateway: ServerThread, key: str) -> list[str]:
    with _as(gateway, key) as c:
        resp = c.get("/v1/models")
        assert resp.status_code == 200, resp.text
        return [m["id"] for m in resp.json()["data"]]


def _ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()


# -- teams ---------------------------------------------------------------------------------------


def test_team_routes(admin: httpx.Client, gateway: ServerThread) -> None:
    made = _ok(admin.post("/team/new", json={
        "team_alias": "research", "models": [GROUP], "metadata": {"cc": "7"},
        "max_budget": 10.5, "budget_duration": "30d", "rpm_limit": 60,
    }))
    team_id = made["team_id"]
    assert len(team_id) == 36  # generated (a UUID) when absent
    assert made["team_alias"] == "research" and made["models"] == [GROUP]
    assert (made["max_budget"], made["budget_duration"], made["rpm_limit"]) == (10.5, "30d", 60)
    assert made["blocked"] is False and made["members_with_roles"] == []
    named = _ok(admin.post("/team/new", json={"team_id": "ops"}))
    assert named["team_id"] == "ops" and named["models"] == []
    again = admin.post("/team/new", json={"team_id": "ops"})
    assert again.status_code == 400 and again.json()["error"]["code"] == "team_exists"
    bad = admin.post("/team/new", json={"team_id": "x", "tpm_limit": 5})
    assert bad.status_code == 400 and "tpm_limit" in bad.json()["error"]["message"]
    assert admin.post("/team/new", json={"models": ["nope"]}).status_code == 400

    updated = _ok(admin.post("/team/update", json={"team_id": team_id, "team_alias": "r2",
                                                   "models": [GROUP, OTHER_GROUP]}))
    assert updated["team_id"] == team_id
    assert updated["data"]["team_alias"] == "r2"
    assert updated["data"]["models"] == [GROUP, OTHER_GROUP]
    assert updated["data"]["metadata"] == {"cc": "7"}  # untouched fields kept
    assert admin.post("/team/update", json={"team_id": "nope"}).status_code == 404

    added = _ok(admin.post("/team/member_add", json={
        "team_id": team_id, "member": [{"role": "admin", "user_id": "alice"},
                                       {"role": "user", "user_email": "bob@example.com"}]}))
    assert len(added["updated_users"]) == 2
    roles = {m["user_id"]: m["role"] for m in added["members_with_roles"]}
    assert roles["alice"] == "admin" and len(roles) == 2
    alice = _ok(admin.get("/user/info", params={"user_id": "alice"}))  # created as LiteLLM does
    assert alice["user_info"]["teams"] == [team_id]
    assert [t["team_id"] for t in _ok(admin.get("/team/list", params={"user_id": "alice"}))] \
        == [team_id]
    removed = _ok(admin.post("/team/member_delete",
                             json={"team_id": team_id, "user_email": "bob@example.com"}))
    assert [m["user_id"] for m in removed["members_with_roles"]] == ["alice"]
    assert admin.post("/team/member_delete",
                      json={"team_id": team_id, "user_id": "bob"}).status_code == 404

    key = _ok(admin.post("/key/generate", json={"team_id": team_id}))
    info = _ok(admin.get("/team/info", params={"team_id": team_id}))
    assert info["team_info"]["team_alias"] == "r2"
    assert [k["token"] for k in info["keys"]] == [key["token"]]
    listed = _ok(admin.get("/team/list"))
    assert {team_id, "ops"} <= {t["team_id"] for t in listed}

    assert _ok(admin.post("/team/block", json={"team_id": team_id}))["blocked"] is True
    with _as(gateway, key["key"]) as c:
        refused = c.get("/v1/models")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "team_blocked"
    assert team_id in refused.json()["error"]["message"]
    assert _ok(admin.post("/team/unblock", json={"team_id": team_id}))["blocked"] is False
    assert _models(gateway, key["key"]) == [GROUP, OTHER_GROUP]

    # Deleting a team deletes its keys (as LiteLLM does).
    assert _ok(admin.post("/team/delete", json={"team_ids": [team_id, "nope"]})) == \
        {"deleted_teams": [team_id]}
    with _as(gateway, key["key"]) as c:
        assert c.get("/v1/models").status_code == 401
    assert admin.get("/team/info", params={"team_id": team_id}).status_code == 404
    assert admin.post("/team/delete", json={"team_ids": [team_id]}).status_code == 404


# -- users ---------------------------------------------------------------------------------------


def test_user_routes(admin: httpx.Client, gateway: ServerThread) -> None:
    _ok(admin.post("/team/new", json={"team_id": "t-users"}))
    made = _ok(admin.post("/user/new", json={
        "user_id": "carol", "user_email": "carol@example.com", "models": [GROUP],
        "teams": ["t-users"], "metadata": {"dept": "x"}, "max_budget": 3, "key_alias": "c1",
    }))
    assert made["user_id"] == "carol" and made["teams"] == ["t-users"]
    assert made["key"].startswith("sk-") and made["token"].startswith("key_")
    assert made["max_budget"] == 3.0
    assert _models(gateway, made["key"]) == [GROUP]  # the user's list applies to its key
    key = _ok(admin.get("/key/info", params={"key": made["key"]}))["info"]
    assert key["user_id"] == "carol" and key["key_alias"] == "c1"

    keyless = _ok(admin.post("/user/new", json={"user_email": "d@example.com",
                                                "auto_create_key": False}))
    assert keyless["key"] is None and len(keyless["user_id"]) == 36
    assert admin.post("/user/new", json={"user_id": "carol"}).status_code == 400
    assert admin.post("/user/new", json={"teams": ["nope"]}).json()["error"]["code"] == \
        "team_not_found"
    assert admin.post("/user/new", json={"user_role": "admin"}).status_code == 400

    updated = _ok(admin.post("/user/update", json={"user_id": "carol", "models": [],
                                                   "teams": []}))
    assert updated["data"]["models"] == [] and updated["data"]["teams"] == []
    assert updated["data"]["user_email"] == "carol@example.com"
    assert _models(gateway, made["key"]) == [GROUP, OTHER_GROUP]

    info = _ok(admin.get("/user/info", params={"user_id": "carol"}))
    assert info["user_info"]["metadata"] == {"dept": "x"}
    assert [k["token"] for k in info["keys"]] == [made["token"]]
    assert admin.get("/user/info", params={"user_id": "nope"}).status_code == 404

    # (The PostgreSQL database is shared by the session's tests: filter to this test's users.)
    both = f"carol,{keyless['user_id']}"
    page = _ok(admin.get("/user/list", params={"page_size": 1, "user_ids": both}))
    assert set(page) == {"users", "total", "page", "page_size", "total_pages"}
    assert page["total"] == 2 and page["total_pages"] == 2 and len(page["users"]) == 1
    second = _ok(admin.get("/user/list", params={"page_size": 1, "page": 2, "user_ids": both}))
    assert {page["users"][0]["user_id"], second["users"][0]["user_id"]} == set(both.split(","))
    members = _ok(admin.get("/user/list", params={"team_id": "t-users"}))["users"]
    assert [u["user_id"] for u in members] == []  # carol left the team above

    # Deleting a user deletes its keys; its files and batches stay (master key).
    assert _ok(admin.post("/user/delete", json={"user_ids": ["carol"]})) == \
        {"deleted_users": ["carol"]}
    with _as(gateway, made["key"]) as c:
        assert c.get("/v1/models").status_code == 401
    assert admin.post("/user/delete", json={"user_ids": ["carol"]}).status_code == 404


def test_admin_routes_need_the_master_key(
    make_key: Callable[..., str], gateway: ServerThread
) -> None:
    with _as(gateway, make_key([])) as c:
        for path in ("/team/new", "/team/update", "/team/delete", "/team/block",
                     "/team/unblock", "/team/member_add", "/team/member_delete", "/user/new",
                     "/user/update", "/user/delete"):
            assert c.post(path, json={}).status_code == 403, path
        for path in ("/team/info", "/team/list", "/user/info", "/user/list"):
            assert c.get(path).status_code == 403, path


# -- access: key ∩ user ∩ team -------------------------------------------------------------------


def test_access_is_key_and_user_and_team(
    admin: httpx.Client, gateway: ServerThread, client_for: Callable[[str], openai.OpenAI]
) -> None:
    _ok(admin.post("/team/new", json={"team_id": "eu", "models": [OTHER_GROUP]}))
    _ok(admin.post("/team/new", json={"team_id": "all"}))
    _ok(admin.post("/user/new", json={"user_id": "dana", "models": [GROUP],
                                      "auto_create_key": False}))

    def key(**body: Any) -> str:
        return str(_ok(admin.post("/key/generate", json=body))["key"])

    # Each empty list is no restriction at its level.
    assert _models(gateway, key(team_id="all")) == [GROUP, OTHER_GROUP]
    assert _models(gateway, key(user_id="dana", team_id="all")) == [GROUP]
    assert _models(gateway, key(team_id="eu")) == [OTHER_GROUP]
    nothing = key(user_id="dana", team_id="eu")  # user and team disagree: nothing left
    assert _models(gateway, nothing) == []
    assert _models(gateway, key(models=[OTHER_GROUP], user_id="dana")) == []
    with _as(gateway, nothing) as c:
        assert c.get("/model_group/info").json()["data"] == []

    # Upload (target_model_names, or the lines' body.model), create and list filters.
    client = client_for(key(user_id="dana", team_id="all"))
    for extra in ({"target_model_names": OTHER_GROUP}, {}):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.files.create(file=batch_file(1, model=OTHER_GROUP), purpose="batch",
                                extra_body=extra)
        assert "user 'dana'" in str(refused.value.body)
    with pytest.raises(openai.PermissionDeniedError):
        client.batches.list(extra_query={"target_model_names": OTHER_GROUP})
    f = client.files.create(file=batch_file(1), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    # The team narrows after the upload: creating a batch on the file is refused.
    _ok(admin.post("/team/update", json={"team_id": "all", "models": [OTHER_GROUP]}))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert "team 'all'" in str(refused.value.body)


def test_blocked_key_user_and_team_answer_401(
    admin: httpx.Client, gateway: ServerThread
) -> None:
    _ok(admin.post("/team/new", json={"team_id": "tb"}))
    made = _ok(admin.post("/user/new", json={"user_id": "erin"}))
    key = _ok(admin.post("/key/generate", json={"user_id": "erin", "team_id": "tb"}))["key"]
    blocked_at_birth = _ok(admin.post("/key/generate", json={"blocked": True}))["key"]
    other = made["key"]  # erin's first key, no team

    def code(k: str) -> str | None:
        with _as(gateway, k) as c:
            resp = c.get("/v1/files")
        return None if resp.status_code == 200 else \
            f"{resp.status_code} {resp.json()['error']['code']}"

    assert code(blocked_at_birth) == "401 key_blocked"
    assert _ok(admin.post("/key/block", json={"key": key}))["blocked"] is True
    assert code(key) == "401 key_blocked" and code(other) is None
    assert _ok(admin.post("/key/unblock", json={"key": key}))["blocked"] is False
    assert code(key) is None
    _ok(admin.post("/user/update", json={"user_id": "erin", "blocked": True}))
    assert code(key) == "401 user_blocked" and code(other) == "401 user_blocked"
    _ok(admin.post("/user/update", json={"user_id": "erin", "blocked": False}))
    _ok(admin.post("/team/block", json={"team_id": "tb"}))
    assert code(key) == "401 team_blocked" and code(other) is None
    with _as(gateway, key) as c:
        assert "team 'tb' is blocked" in c.get("/v1/batches").json()["error"]["message"]


# -- ownership -----------------------------------------------------------------------------------


def test_a_users_keys_share_files_and_batches(
    admin: httpx.Client, gateway: ServerThread, make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI],
) -> None:
    first = _ok(admin.post("/user/new", json={"user_id": "fay"}))["key"]
    second = _ok(admin.post("/key/generate", json={"user_id": "fay"}))["key"]
    a, b = client_for(first), client_for(second)
    f = a.files.create(file=batch_file(2), purpose="batch",
                       extra_body={"target_model_names": GROUP})
    done = poll(a, a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                    completion_window="24h").id)
    assert done.output_file_id
    # Every key of the user reaches them: retrieve (the one-query path), lists, content.
    assert b.batches.retrieve(done.id).id == done.id
    assert b.files.retrieve(f.id).id == f.id
    assert b.files.content(done.output_file_id).text
    assert [x.id for x in b.batches.list()] == [done.id]
    assert f.id in [x.id for x in b.files.list()]
    live = b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                            completion_window="24h")
    assert a.batches.retrieve(live.id).id == live.id

    # Other callers: another user's key and a key without a user still get 404.
    stranger = _ok(admin.post("/user/new", json={"user_id": "gus"}))["key"]
    for k in (stranger, make_key([])):
        with _as(gateway, k) as c:
            assert c.get(f"/v1/batches/{done.id}").status_code == 404
            assert c.get(f"/v1/files/{f.id}").status_code == 404

    # Regenerate: new secret, same token; the old secret is refused at once; ownership kept.
    token = _ok(admin.get("/key/info", params={"key": first}))["key"]
    renewed = _ok(admin.post("/key/regenerate", json={"key": first}))
    assert renewed["token"] == token and renewed["key"] != first
    with _as(gateway, first) as c:
        assert c.get("/v1/models").status_code == 401
    assert client_for(renewed["key"]).batches.retrieve(done.id).id == done.id

    # Deleting a key does not delete its user's resources.
    _ok(admin.post("/key/delete", json={"keys": [renewed["key"]]}))
    assert b.batches.retrieve(done.id).id == done.id
    assert b.files.retrieve(f.id).id == f.id

    # A key without a user owns its own: the same user's other keys are not involved.
    solo = client_for(make_key([]))
    g = solo.files.create(file=batch_file(1), purpose="batch",
                          extra_body={"target_model_names": GROUP})
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(g.id)


# -- the master key ------------------------------------------------------------------------------


@pytest.fixture
def litellm_gateway(
    upstreams: list[Upstream], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-litellm-master")
    cfg = config_for(upstreams, database_url)
    del cfg["general_settings"]["master_key"]
    with gateway_server(cfg) as server:
        yield server


def test_litellm_master_key_is_an_alias(litellm_gateway: ServerThread) -> None:
    with _as(litellm_gateway, "sk-litellm-master") as c:
        assert c.post("/team/new", json={"team_id": "m"}).status_code == 200
    with _as(litellm_gateway, MASTER_KEY) as c:
        assert c.get("/team/list").status_code == 401


def test_no_master_key_logs_how_to_enable_admin_routes(
    upstreams: list[Upstream], database_url: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("GATEWAY_MASTER_KEY", "LITELLM_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    cfg = config_for(upstreams, database_url)
    del cfg["general_settings"]["master_key"]
    with caplog.at_level("WARNING", logger="gateway"), gateway_server(cfg) as server, \
            _as(server, "sk-anything") as c:
        assert c.get("/key/list").status_code == 401
    lines = [r.getMessage() for r in caplog.records if "master key" in r.getMessage()]
    assert len(lines) == 1
    assert "admin routes" in lines[0] and "LITELLM_MASTER_KEY" in lines[0]


# -- the migration ---------------------------------------------------------------------------


async def test_migration_hands_a_user_keys_files_to_its_user(database_url: str) -> None:
    """Version 4 on rows as version 3 left them: `user_id` and `team_id` were labels, files
    belonged to the key. After it, the labels are a user and a team (no restriction) and the
    labelled key's files belong to its user; a key without a user keeps its own."""
    store = Store(database_url)
    await store.connect()
    try:
        tag = secrets.token_hex(4)
        user_id, team_id = f"legacy-{tag}", f"legacy-team-{tag}"
        hashes = [secrets.token_hex(32) for _ in range(2)]
        labelled = await store.insert_key(hashes[0], models=[], key_alias=None, team_id=team_id,
                                          user_id=user_id, metadata={}, expires_at=None)
        solo = await store.insert_key(hashes[1], models=[], key_alias=None, team_id=None,
                                      user_id=None, metadata={}, expires_at=None)
        rows = [FileRow(id=f"file-{tag}{i}", owner=owner, purpose="batch", filename="f.jsonl",
                        bytes=1, created_at=int(time.time()), status="processed",
                        model_groups=[GROUP], source_model=None)
                for i, owner in enumerate((labelled.id, solo.id))]
        for row in rows:
            await store.insert_file(row)
        await schema._v4_users_and_teams(store.db)
        assert await store.get_file(f"user:{user_id}", rows[0].id) is not None
        assert await store.get_file(labelled.id, rows[0].id) is None
        assert await store.get_file(solo.id, rows[1].id) is not None
        user, team = await store.users.get(user_id), await store.teams.get(team_id)
        assert user is not None and user.models == [] and not user.blocked
        assert team is not None and team.models == [] and not team.blocked
        access = await store.key_access(hashes[0])
        assert access is not None and access.key.owner == f"user:{user_id}"
        assert access.user is not None and access.user.id == user_id
        assert access.team is not None and access.team.id == team_id
    finally:
        await store.disconnect()
