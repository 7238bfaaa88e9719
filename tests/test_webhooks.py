"""Batch webhooks: OpenAI's events, signed as Standard Webhooks (checked with the
`standardwebhooks` library), sent once per endpoint from an outbox shared by every instance,
retried with backoff, filtered by team, visible to the master key; a key's own endpoint
(`/key/generate` metadata `webhook_url`) with a secret shown once."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file

SECRET = "whsec_" + base64.b64encode(b"webhook-test-secret-0123456789ab").decode()


class Receiver:
    """A webhook endpoint: records every request; answers with `plan`'s codes, then 200."""

    def __init__(self, plan: list[int] | None = None, always: int | None = None,
                 secret: str = SECRET) -> None:
        self.plan = list(plan or [])
        self.always = always
        self.secret = secret
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((body, dict(request.headers)))
            code = self.always or (self.plan.pop(0) if self.plan else 200)
        return Response(status_code=code)

    def events(self, batch_id: str) -> list[tuple[bytes, dict[str, str]]]:
        """The requests about `batch_id` (every one must verify)."""
        out = []
        for body, headers in list(self.received):
            event = Webhook(self.secret).verify(body, headers)
            if event["data"]["id"] == batch_id:
                out.append((body, headers))
        return out


@pytest.fixture
def receiver_of() -> Iterator[Callable[..., tuple[Receiver, ServerThread]]]:
    servers: list[ServerThread] = []

    def make(**kw: Any) -> tuple[Receiver, ServerThread]:
        receiver = Receiver(**kw)
        servers.append(ServerThread(receiver.app).start())
        return receiver, servers[-1]

    yield make
    for server in servers:
        server.stop()


def hook(server: ServerThread, **extra: Any) -> dict[str, Any]:
    return {"url": server.url + "/hook", "secret": SECRET, **extra}


def mint(server: ServerThread, **extra: Any) -> tuple[str, str]:
    """A virtual key (and its token id) on `server`, in team `team_id` if given."""
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    if "team_id" in extra:  # teams are made first where the gateway has them (/team/new)
        made = httpx.post(server.url + "/team/new", json={"team_id": extra["team_id"]},
                          headers=master)
        assert made.status_code in (200, 404), made.text
    resp = httpx.post(server.url + "/key/generate", json={"models": [GROUP], **extra},
                      headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["key"], resp.json()["token"]


def start_batch(server: ServerThread, key: str,
                upstreams: list[Upstream]) -> tuple[str, Upstream, str]:
    """(gateway batch id, the upstream running it, its native id)."""
    before = {(id(up), native) for up in upstreams for native in up.fake.batches}
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    f = client.files.create(file=batch_file(2), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    ((up, native),) = [(up, native) for up in upstreams for native in up.fake.batches
                       if (id(up), native) not in before]
    return batch.id, up, native


def deliveries(server: ServerThread, key: str = MASTER_KEY, **params: str) -> httpx.Response:
    return httpx.get(server.url + "/webhooks/deliveries", params=params,
                     headers={"Authorization": f"Bearer {key}"})


def delivery(server: ServerThread, batch_id: str) -> dict[str, Any]:
    (row,) = deliveries(server, batch_id=batch_id).json()["data"]
    assert isinstance(row, dict)
    return row


def wait_for(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_signed_event_per_finished_batch_with_two_instances(
    upstreams: list[Upstream], database_url: str,
    receiver_of: Callable[..., tuple[Receiver, ServerThread]],
) -> None:
    receiver, endpoint = receiver_of()
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.1,
                     webhook_retry_seconds=0.1, webhooks=[hook(endpoint)])
    with gateway_server(cfg) as a, gateway_server(cfg) as b:
        key, token = mint(a)
        done, up1, native1 = start_batch(a, key, upstreams)
        expired, up2, native2 = start_batch(b, key, upstreams)
        up1.fake.complete(native1)
        up2.fake.advance(native2, "expired")
        wait_for(lambda: bool(receiver.events(done) and receiver.events(expired)))
        time.sleep(1.0)  # both instances keep polling and delivering: nothing more comes
        for batch_id, kind in ((done, "batch.completed"), (expired, "batch.expired")):
            ((body, headers),) = receiver.events(batch_id)
            event = Webhook(SECRET).verify(body, headers)
            assert event["object"] == "event" and event["type"] == kind
            assert event["id"].startswith("evt_") and headers["webhook-id"] == event["id"]
            assert event["data"] == {"id": batch_id}
            assert abs(event["created_at"] - time.time()) < 60
            # OpenAI's SDK takes it as one of its own webhook events.
            parsed = openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=SECRET)
            assert (parsed.type, parsed.data.id) == (kind, batch_id)
            row = delivery(b, batch_id)
            assert (row["status"], row["attempts"], row["last_status_code"]) == (
                "delivered", 1, 200)
            assert (row["event_type"], row["owner"], row["next_attempt_at"]) == (kind, token, None)
        # A tampered body does not verify.
        body, headers = receiver.events(done)[0]
        with pytest.raises(Exception, match="signature"):
            Webhook(SECRET).verify(body.replace(b"completed", b"failed"), headers)


def test_a_failing_receiver_gets_the_event_again_until_it_succeeds(
    upstreams: list[Upstream], database_url: str,
    receiver_of: Callable[..., tuple[Receiver, ServerThread]],
) -> None:
    receiver, endpoint = receiver_of(plan=[500, 500])
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.1,
                     webhook_retry_seconds=0.1, webhooks=[hook(endpoint)])
    with gateway_server(cfg) as gw:
        key, _ = mint(gw)
        batch_id, up, native = start_batch(gw, key, upstreams)
        up.fake.complete(native)
        wait_for(lambda: delivery(gw, batch_id)["status"] == "delivered"
                 if deliveries(gw, batch_id=batch_id).json()["data"] else False)
        row = delivery(gw, batch_id)
        assert (row["attempts"], row["last_status_code"], row["last_error"]) == (3, 200, None)
        attempts = receiver.events(batch_id)  # every attempt signed, with one webhook-id
        assert len(attempts) == 3 and len({h["webhook-id"] for _, h in attempts}) == 1
        assert batch_id in [r["batch_id"] for r in deliveries(gw, status="delivered")
                            .json()["data"]]
        assert batch_id not in [r["batch_id"] for r in deliveries(gw, status="failed")
                                .json()["data"]]
        # The master key's only.
        assert deliveries(gw, key=key).status_code == 403
        assert httpx.get(gw.url + "/webhooks/deliveries").status_code == 401
        assert deliveries(gw, status="nope").status_code == 400


def test_a_team_filter_sends_nothing_for_another_teams_batch(
    upstreams: list[Upstream], database_url: str,
    receiver_of: Callable[..., tuple[Receiver, ServerThread]],
) -> None:
    receiver, endpoint = receiver_of()
    everything, all_endpoint = receiver_of()
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.1,
                     webhook_retry_seconds=0.1,
                     webhooks=[hook(endpoint, team_id="team-a", events=["batch.completed"]),
                               hook(all_endpoint)])
    with gateway_server(cfg) as gw:
        key_a, _ = mint(gw, team_id="team-a")
        key_b, _ = mint(gw, team_id="team-b")
        ours, up_a, native_a = start_batch(gw, key_a, upstreams)
        theirs, up_b, native_b = start_batch(gw, key_b, upstreams)
        cancelled, up_c, native_c = start_batch(gw, key_a, upstreams)
        up_a.fake.complete(native_a)
        up_b.fake.complete(native_b)
        up_c.fake.advance(native_c, "cancelled")
        wait_for(lambda: all(everything.events(b) for b in (ours, theirs, cancelled)))
        wait_for(lambda: bool(receiver.events(ours)))
        time.sleep(0.5)
        assert len(receiver.events(ours)) == 1
        assert receiver.events(theirs) == []  # team b's batch
        assert receiver.events(cancelled) == []  # not one of its events
        assert [Webhook(SECRET).verify(*everything.events(cancelled)[0])["type"]] == [
            "batch.cancelled"]


def test_a_receiver_that_always_fails_is_given_up_on(
    upstreams: list[Upstream], database_url: str,
    receiver_of: Callable[..., tuple[Receiver, ServerThread]],
) -> None:
    receiver, endpoint = receiver_of(always=503)
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.1,
                     webhook_retry_seconds=0.05, webhook_retry_for_seconds=0.5,
                     webhooks=[hook(endpoint)])
    with gateway_server(cfg) as gw:
        key, _ = mint(gw)
        batch_id, up, native = start_batch(gw, key, upstreams)
        up.fake.complete(native)
        wait_for(lambda: batch_id in [r["batch_id"] for r in deliveries(gw, status="failed")
                                      .json()["data"]])
        row = delivery(gw, batch_id)
        assert row["attempts"] >= 3 and row["last_status_code"] == 503
        assert row["last_error"] == "HTTP 503" and row["next_attempt_at"] is None
        time.sleep(0.3)
        assert len(receiver.events(batch_id)) == row["attempts"]  # and nothing after


def _cfg(webhooks: Any, **settings: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": GROUP, "model_info": {"mode": "batch"},
                        "litellm_params": {"model": "openai/gpt-4o-mini"}}],
        "general_settings": {"webhooks": webhooks, **settings},
    }


def test_webhook_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    (endpoint,) = parse_config(_cfg([{"url": "https://example.com/hook",
                                      "secret": "os.environ/HOOK_SECRET", "team_id": 7}]),
                               ).settings.webhooks
    assert endpoint.secret == SECRET and endpoint.team_id == "7" and endpoint.key is None
    assert endpoint.events == ("batch.completed", "batch.failed", "batch.cancelled",
                               "batch.expired")
    settings = parse_config(_cfg(None)).settings
    assert (settings.webhooks, settings.webhook_retry_seconds,
            settings.webhook_retry_for_seconds) == ([], 5.0, 86_400.0)
    ok = {"url": "https://example.com/hook", "secret": SECRET}
    for bad, field in [
        ({"secret": SECRET}, "webhooks[0].url"),
        ({**ok, "url": "ftp://example.com"}, "webhooks[0].url"),
        ({**ok, "secret": "not-whsec"}, "webhooks[0].secret"),
        ({**ok, "secret": "whsec_!!"}, "webhooks[0].secret"),
        ({**ok, "events": ["batch.done"]}, "webhooks[0].events"),
        ({**ok, "team_id": ""}, "webhooks[0].team_id"),
        ({**ok, "sekret": "x"}, "webhooks[0].sekret"),
    ]:
        with pytest.raises(ConfigError, match=f"general_settings.{field}".replace("[", r"\[")):
            parse_config(_cfg([bad]))
    with pytest.raises(ConfigError, match=r"webhooks\[1\].url: the same URL"):
        parse_config(_cfg([ok, ok]))
    with pytest.raises(ConfigError, match=r"webhooks\[0\].secret: environment variable"):
        parse_config(_cfg([{**ok, "secret": "os.environ/NO_SUCH_HOOK_SECRET"}]))
    with pytest.raises(ConfigError, match="webhook_retry_for_seconds"):
        parse_config(_cfg([ok], webhook_retry_for_seconds=-1))


# -- a key's own webhook endpoint ------------------------------------------------------------

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


def generate(server: ServerThread, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/key/generate", json={"models": [GROUP], **body},
                      headers=MASTER)


def update(server: ServerThread, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/key/update", json=body, headers=MASTER)


def admin_get(server: ServerThread, path: str, **params: str) -> httpx.Response:
    return httpx.get(server.url + path, params=params, headers=MASTER)


def finish(server: ServerThread, key: str, upstreams: list[Upstream]) -> str:
    """A batch of `key`, completed upstream and seen finished by a retrieve (which has written
    its outbox rows by the time it answers)."""
    batch_id, up, native = start_batch(server, key, upstreams)
    up.fake.complete(native)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    assert client.batches.retrieve(batch_id).status == "completed"
    return batch_id


def test_a_keys_webhook_gets_its_owners_batches_only(
    upstreams: list[Upstream], database_url: str,
    receiver_of: Callable[..., tuple[Receiver, ServerThread]],
) -> None:
    # No general_settings.webhooks at all: a key's endpoint is enough.
    cfg = config_for(upstreams, database_url, webhook_retry_seconds=0.1)
    with gateway_server(cfg) as a, gateway_server(cfg) as b:
        made = generate(a, key_alias="ci", metadata={
            "webhook_url": "http://127.0.0.1:9/wrong", "team": "x"})
        assert made.status_code == 200, made.text
        key, token, secret = made.json()["key"], made.json()["token"], \
            made.json()["webhook_secret"]
        assert secret.startswith("whsec_") and len(secret) == 6 + 44
        receiver, endpoint = receiver_of(plan=[500], secret=secret)
        # The URL corrected: same endpoint and secret (none in the answer).
        moved = update(a, key=token, metadata={"webhook_url": endpoint.url + "/hook", "team": "x"})
        assert moved.status_code == 200 and "webhook_secret" not in moved.json()
        other, _ = mint(a)
        # A key with a user hears of the user's batches, made with any key of the user.
        hooked = generate(a, user_id="alice", metadata={"webhook_url": endpoint.url + "/alice"})
        alice_receiver, alice_endpoint = receiver_of(secret=hooked.json()["webhook_secret"])
        assert update(a, key=hooked.json()["token"], metadata={
            "webhook_url": alice_endpoint.url + "/hook"}).status_code == 200
        alice, _ = mint(a, user_id="alice")

        ours = finish(b, key, upstreams)  # seen finished on the other instance
        theirs = finish(a, other, upstreams)
        alices = finish(a, alice, upstreams)
        wait_for(lambda: len(receiver.events(ours)) == 2 and bool(alice_receiver.events(alices)))
        # Once, after one failure; verified with the key's secret, and not with another.
        attempts = receiver.events(ours)
        assert len({h["webhook-id"] for _, h in attempts}) == 1
        event = Webhook(secret).verify(*attempts[-1])
        assert (event["type"], event["data"]) == ("batch.completed", {"id": ours})
        with pytest.raises(Exception, match="signature"):
            Webhook(SECRET).verify(*attempts[-1])
        row = delivery(a, ours)
        assert (row["endpoint_id"], row["status"], row["attempts"], row["owner"]) == (
            f"key:{token}", "delivered", 2, token)
        # Nothing for another key's batch: not queued, not sent.
        assert deliveries(a, batch_id=theirs).json()["data"] == []
        assert len(receiver.received) == 2 and len(alice_receiver.received) == 1
        time.sleep(0.5)  # both instances keep delivering: nothing more comes
        assert len(receiver.received) == 2 and len(alice_receiver.received) == 1
        # The secret was shown once: /key/info and /key/list never have it.
        for resp in (admin_get(a, "/key/info", key=token),
                     httpx.get(a.url + "/key/info", headers={"Authorization": f"Bearer {key}"}),
                     admin_get(a, "/key/list", return_full_object="true")):
            assert resp.status_code == 200 and "whsec_" not in resp.text
        assert admin_get(a, "/key/info", key=token).json()["info"]["metadata"] == {
            "webhook_url": endpoint.url + "/hook", "team": "x"}


def test_a_keys_webhook_goes_with_its_url_or_its_key(
    upstreams: list[Upstream], database_url: str,
    receiver_of: Callable[..., tuple[Receiver, ServerThread]],
) -> None:
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.1,
                     webhook_retry_seconds=0.1)
    with gateway_server(cfg) as gw:
        alias = f"bad-{time.time_ns()}"
        for bad in ("ftp://example.com/hook", "not a url", "http://[::1/x", 42):
            resp = generate(gw, key_alias=alias, metadata={"webhook_url": bad})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == "metadata"
        assert admin_get(gw, "/key/list", key_alias=alias).json()["total_count"] == 0

        receiver, endpoint = receiver_of(always=503)
        made = generate(gw, metadata={"webhook_url": endpoint.url + "/hook"}).json()
        key, token = made["key"], made["token"]
        # Metadata without webhook_url: the endpoint goes, and the key's batches send nothing.
        gone = update(gw, key=token, metadata={})
        assert gone.status_code == 200 and "webhook_secret" not in gone.json()
        silent = finish(gw, key, upstreams)
        assert deliveries(gw, batch_id=silent).json()["data"] == []
        # Set again: a new endpoint, with a new secret in that answer.
        again = update(gw, key=token, metadata={"webhook_url": endpoint.url + "/hook"}).json()
        assert again["webhook_secret"].startswith("whsec_")
        assert again["webhook_secret"] != made["webhook_secret"]
        receiver.secret = again["webhook_secret"]
        failing = finish(gw, key, upstreams)
        wait_for(lambda: len(receiver.events(failing)) >= 2)  # the receiver keeps failing
        assert receiver.events(silent) == []
        # The key deleted: its endpoint and secret go too, so its pending event is given up.
        assert httpx.post(gw.url + "/key/delete", headers=MASTER,
                          json={"keys": [token]}).status_code == 200
        wait_for(lambda: delivery(gw, failing)["status"] == "failed")
        row = delivery(gw, failing)
        assert row["last_error"].startswith("endpoint removed")
        assert row["attempts"] == len(receiver.events(failing))
