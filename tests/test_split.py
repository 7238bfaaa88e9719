"""Split batches through the OpenAI SDK: one batch run as parts on three deployments of two
providers (two fake OpenAI accounts and a fake Azure resource) at once.

Each test checks what the client got (one batch, summed counts, one output and one error file
with every custom_id once and in input order, the same answers as an unsplit run) and what
each upstream received (one batch per part, cancels, a failed part's second try)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch

from gateway.testing.fake_azure import FakeAzure
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import MASTER_KEY, RunningGateway, ServerThread, gateway_config
from tests.helpers import jsonl, request_line
from tests.test_serve import Served

GROUP = "gpt-4o-batch"
ENDED = ("completed", "failed", "expired", "cancelled")
FAST_AZURE = {"timeout": 5, "file_poll_interval": 0.01, "file_poll_max_interval": 0.05,
              "file_ready_timeout": 5}


class Fleet:
    """Two fake OpenAI accounts and one fake Azure resource, all serving GROUP."""

    def __init__(self) -> None:
        self.openai = [FakeOpenAI(api_key=f"sk-up-{i}", models={m})
                       for i, m in enumerate(("gpt-4o-mini", "gpt-4o-mini-2024-07-18"))]
        self.azure = FakeAzure(api_key="azure-key", deployments={"gpt-4o-mini-batch"})
        self.servers = [ServerThread(f.app).start() for f in (*self.openai, self.azure)]

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        (one, two), azure = self.servers[:2], self.servers[2]
        return [
            (GROUP, {"model": "openai/gpt-4o-mini", "api_base": one.url + "/v1",
                     "api_key": "sk-up-0", "timeout": 5}),
            (GROUP, {"model": "openai/gpt-4o-mini-2024-07-18", "api_base": two.url + "/v1",
                     "api_key": "sk-up-1", "timeout": 5}),
            (GROUP, {"model": "azure/gpt-4o-mini-batch", "api_base": azure.url,
                     "api_key": "azure-key", **FAST_AZURE}),
        ]

    def batches(self) -> list[dict[str, Any]]:
        """Every batch the upstreams hold (fake OpenAI's, then Azure's)."""
        return [b for f in (*self.openai, self.azure) for b in list(f.batches.values())]

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        for f in self.openai:
            f.close()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    yield f
    f.stop()


def config(fleet: Fleet, database_url: str, **settings: Any) -> dict[str, Any]:
    cfg = gateway_config(fleet.entries(), database_url)
    cfg["general_settings"].update({"batch_poll_interval": 0, "crash_recovery_seconds": 1,
                                    **settings})
    return cfg


def lines(n: int, fail: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        extra = {"metadata": {"fake_fail": "true"}} if i in fail else {}
        out.append(request_line(f"req-{i:03d}", GROUP, **extra))
    return out


def upload(client: openai.OpenAI, rows: list[dict[str, Any]]) -> str:
    return client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch").id


def create(client: openai.OpenAI, file_id: str, split: Any = "auto") -> Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h",
                                 extra_body={"split": split} if split is not None else None)


def wait(client: openai.OpenAI, batch_id: str, until: Callable[[Batch], bool] | None = None,
         timeout: float = 60) -> Batch:
    """Retrieve as a client does (each retrieve polls the parts) until the batch ended."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch) if until else batch.status in ENDED:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.05)


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    return [json.loads(x) for x in client.files.content(file_id).read().splitlines()]


def answers(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["custom_id"], r["response"]["body"]["choices"][0]["message"]["content"])
            for r in rows]


def admin_get(url: str, batch_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/v1/batches/{batch_id}", timeout=30,
                     headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# -- the whole flow ------------------------------------------------------------------------------


def test_split_over_three_deployments_equals_the_unsplit_run(
    fleet: Fleet, database_url: str
) -> None:
    n = 30
    rows = lines(n, fail=(4, 17))
    with RunningGateway(config(fleet, database_url), [GROUP]) as gw:
        file_id = upload(gw.client, rows)
        batch = create(gw.client, file_id)
        assert batch.status == "in_progress" and batch.model == GROUP
        assert "parts" not in batch.model_extra and "deployment_id" not in batch.model_extra
        # One part per deployment, on both providers.
        natives = {b["id"] for b in fleet.batches()}
        assert len(natives) == 3
        assert all(len(f.batches) == 1 for f in (*fleet.openai, fleet.azure))
        seen = admin_get(gw.server.url, batch.id)
        parts = seen["parts"]
        assert [(p["first_line"], p["total"]) for p in parts] == [(1, 10), (11, 10), (21, 10)]
        assert len({p["deployment_id"] for p in parts}) == 3
        assert all(p["model_group"] == GROUP for p in parts)

        done = wait(gw.client, batch.id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed,
                done.request_counts.failed) == (n, n - 2, 2)
        out = results(gw.client, done.output_file_id)
        errors = results(gw.client, done.error_file_id)
        expected = [r["custom_id"] for r in rows]
        assert [r["custom_id"] for r in out] == [c for c in expected
                                                 if c not in ("req-004", "req-017")]
        assert [r["custom_id"] for r in errors] == ["req-004", "req-017"]

        whole = create(gw.client, file_id, split=None)
        assert "parts" not in admin_get(gw.server.url, whole.id)
        unsplit = wait(gw.client, whole.id)
        assert answers(out) == answers(results(gw.client, unsplit.output_file_id))

        # One usage record for the split batch, its parts summed.
        usage = {r["batch_id"]: r for r in httpx.get(
            f"{gw.server.url}/usage", headers={"Authorization": f"Bearer {gw.key}"},
            timeout=30).json()["data"]}
        assert usage[batch.id]["requests_completed"] == n - 2
        assert usage[batch.id]["requests_failed"] == 2
        parts_usage = [b["usage"] for b in fleet.batches() if b.get("usage")
                       and b["id"] in natives]
        assert parts_usage and usage[batch.id]["input_tokens"] == sum(
            u["input_tokens"] for u in parts_usage)
        # The master key sees the parts ended; the tenant sees one batch.
        assert {p["status"] for p in admin_get(gw.server.url, batch.id)["parts"]} \
            == {"completed"}
        listed = [b for b in gw.client.batches.list() if b.id == batch.id]
        assert listed[0].status == "completed" and "parts" not in listed[0].model_extra


def _split_spend(fleet: Fleet, database_url: str, deployments: int,
                 prices: list[tuple[float, float]]) -> tuple[Batch, dict[str, Any]]:
    """A split batch over the first `deployments` of the fleet, priced per deployment (per
    input and output token); the batch and its /spend/logs entry."""
    cfg = gateway_config(fleet.entries()[:deployments], database_url)
    cfg["general_settings"]["batch_poll_interval"] = 0
    for entry, (sent, received) in zip(cfg["model_list"], prices, strict=True):
        entry["model_info"].update(input_cost_per_token_batches=sent,
                                   output_cost_per_token_batches=received)
    with RunningGateway(cfg, [GROUP]) as gw:
        batch = wait(gw.client, create(gw.client, upload(gw.client, lines(30))).id)
        assert batch.status == "completed", batch
        logs = httpx.get(f"{gw.server.url}/spend/logs", timeout=30,
                         headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()
    (entry,) = [x for x in logs if x["request_id"] == batch.id]
    return batch, entry


def test_each_part_is_priced_at_its_own_deployments_prices(
    fleet: Fleet, database_url: str
) -> None:
    prices = [(1e-6, 2e-6), (3e-6, 5e-6)]
    _, entry = _split_spend(fleet, database_url, 2, prices)
    expected = 0.0
    for fake, (sent, received) in zip(fleet.openai, prices, strict=True):
        (part,) = fake.batches.values()  # one part per deployment
        expected += part["usage"]["input_tokens"] * sent + part["usage"]["output_tokens"] * received
    assert entry["spend"] == pytest.approx(expected)
    # What the first part's prices alone would make of the summed tokens:
    assert entry["spend"] != pytest.approx(
        entry["prompt_tokens"] * prices[0][0] + entry["completion_tokens"] * prices[0][1])


def test_a_part_that_reports_no_tokens_leaves_the_batch_unpriced(
    fleet: Fleet, database_url: str
) -> None:
    # Azure's batch object carries no usage: the cost of its part is unknown, so the whole
    # batch's is (null, never a silent undercharge).
    _, entry = _split_spend(fleet, database_url, 3, [(1e-6, 2e-6)] * 3)
    assert fleet.azure.batches and entry["spend"] is None


def test_weights_size_the_parts_and_an_integer_asks_for_parts(
    fleet: Fleet, database_url: str
) -> None:
    cfg = config(fleet, database_url)
    cfg["model_list"][0]["model_info"]["weight"] = 3
    with RunningGateway(cfg, [GROUP]) as gw:
        file_id = upload(gw.client, lines(10))
        batch = create(gw.client, file_id, split=2)
        parts = admin_get(gw.server.url, batch.id)["parts"]
        assert len(parts) == 2 and sum(p["total"] for p in parts) == 10
        done = wait(gw.client, batch.id)
        assert done.status == "completed"
        assert [r["custom_id"] for r in results(gw.client, done.output_file_id)] == \
            [f"req-{i:03d}" for i in range(10)]
        with pytest.raises(openai.BadRequestError) as bad:
            create(gw.client, file_id, split="many")
        assert "split" in str(bad.value)


def test_split_batches_over_splits_large_batches(fleet: Fleet, database_url: str) -> None:
    with RunningGateway(config(fleet, database_url, split_batches_over=5), [GROUP]) as gw:
        small = create(gw.client, upload(gw.client, lines(5)), split=None)
        large = create(gw.client, upload(gw.client, lines(6)), split=None)
        assert "parts" not in admin_get(gw.server.url, small.id)
        assert len(admin_get(gw.server.url, large.id)["parts"]) == 3


# -- failures --------------------------------------------------------------------------------------


def test_a_part_that_fails_is_tried_once_more_elsewhere(
    fleet: Fleet, database_url: str
) -> None:
    rows = lines(12)
    with RunningGateway(config(fleet, database_url), [GROUP]) as gw:
        batch = create(gw.client, upload(gw.client, rows), split=2)
        parts = admin_get(gw.server.url, batch.id)["parts"]
        spare = [f for f in (*fleet.openai, fleet.azure) if not f.batches]
        assert len(spare) == 1
        # The first part's deployment goes down mid-way: its batch fails.
        first = next(f for f in (*fleet.openai, fleet.azure) if f.batches and f is not spare[0]
                     and next(iter(f.batches.values()))["request_counts"] is not None)
        (native,) = first.batches
        first.advance(native, "failed")
        done = wait(gw.client, batch.id)
        assert done.status == "completed", done
        assert [r["custom_id"] for r in results(gw.client, done.output_file_id)] == \
            [r["custom_id"] for r in rows]
        assert len(spare[0].batches) == 1  # the second try
        after = admin_get(gw.server.url, batch.id)["parts"]
        assert sorted(p["attempt"] for p in after) == [1, 2]
        assert {p["deployment_id"] for p in after} != {p["deployment_id"] for p in parts}


def test_a_part_that_fails_twice_puts_its_lines_in_the_error_file(
    fleet: Fleet, database_url: str
) -> None:
    rows = lines(8)
    cfg = config(fleet, database_url)
    cfg["model_list"] = cfg["model_list"][:2]  # two deployments: the retry goes to the other
    with RunningGateway(cfg, [GROUP]) as gw:
        batch = create(gw.client, upload(gw.client, rows))
        one, two = fleet.openai
        (first,) = one.batches
        one.advance(first, "failed")
        wait(gw.client, batch.id, until=lambda b: len(two.batches) == 2)
        second = list(two.batches)[-1]
        two.advance(second, "failed")
        done = wait(gw.client, batch.id)
        assert done.status == "completed", done  # the other part completed
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (4, 4)
        out = results(gw.client, done.output_file_id)
        errors = results(gw.client, done.error_file_id)
        assert [r["custom_id"] for r in out] == [f"req-{i:03d}" for i in range(4, 8)]
        assert [r["custom_id"] for r in errors] == [f"req-{i:03d}" for i in range(4)]
        assert {r["error"]["code"] for r in errors} == {"fake_failure"}
        assert all(r["response"] is None for r in errors)


def test_a_deployment_down_at_create_gets_no_part(fleet: Fleet, database_url: str) -> None:
    fleet.openai[0].fail("POST", r"^/v1/batches$", 500, times=-1)
    with RunningGateway(config(fleet, database_url), [GROUP]) as gw:
        batch = create(gw.client, upload(gw.client, lines(9)))
        assert not fleet.openai[0].batches
        assert len(fleet.openai[1].batches) + len(fleet.azure.batches) == 3
        done = wait(gw.client, batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None and done.request_counts.completed == 9


def test_cancel_cancels_every_part(fleet: Fleet, database_url: str) -> None:
    rows = lines(9)
    with RunningGateway(config(fleet, database_url), [GROUP]) as gw:
        batch = create(gw.client, upload(gw.client, rows))
        cancelled = gw.client.batches.cancel(batch.id)
        assert cancelled.status == "cancelling"
        assert all(b["status"] in ("cancelling", "cancelled") for b in fleet.batches())
        done = wait(gw.client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        errors = results(gw.client, done.error_file_id)
        assert [r["custom_id"] for r in errors] == [r["custom_id"] for r in rows]
        assert {r["error"]["code"] for r in errors} == {"batch_cancelled"}
        with pytest.raises(openai.ConflictError):
            gw.client.batches.cancel(batch.id)


# -- who sees what ---------------------------------------------------------------------------------


def test_master_reads_any_tenants_batch_and_tenants_only_their_own(
    fleet: Fleet, database_url: str
) -> None:
    with RunningGateway(config(fleet, database_url), [GROUP]) as gw:
        batch = create(gw.client, upload(gw.client, lines(6)))
        whole = create(gw.client, upload(gw.client, lines(3)), split=None)
        other = RunningGateway.__new__(RunningGateway)
        key = httpx.post(f"{gw.server.url}/key/generate", json={"models": [GROUP]},
                         headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
        other.client = openai.OpenAI(base_url=gw.server.url + "/v1", api_key=key,
                                     max_retries=0)
        for batch_id in (batch.id, whole.id):
            with pytest.raises(openai.NotFoundError):
                other.client.batches.retrieve(batch_id)
            with pytest.raises(openai.NotFoundError):
                other.client.batches.cancel(batch_id)
        seen = admin_get(gw.server.url, whole.id)
        assert seen["deployment_id"] and seen["model_group"] == GROUP
        tenant = gw.client.batches.retrieve(whole.id)
        assert "deployment_id" not in tenant.model_extra and "parts" not in tenant.model_extra
        master = openai.OpenAI(base_url=gw.server.url + "/v1", api_key=MASTER_KEY,
                               max_retries=0)
        assert master.batches.cancel(batch.id).status == "cancelling"
        assert wait(gw.client, batch.id).status == "cancelled"
        other.client.close()
        master.close()


# -- crashes ---------------------------------------------------------------------------------------


@pytest.fixture
def serving(fleet: Fleet, tmp_path: Path) -> Iterator[Callable[[str], Served]]:
    started: list[Served] = []

    def start(database_url: str) -> Served:
        cfg = config(fleet, database_url, data_dir=str(tmp_path / "data"))
        served = Served(tmp_path, cfg)
        started.append(served)
        return served

    yield start
    for s in started:
        s.stop()


def _client(served: Served, key: str | None = None) -> openai.OpenAI:
    if key is None:
        key = httpx.post(f"{served.url}/key/generate", json={"models": [GROUP]},
                         headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
    return openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0)


def _kill(served: Served) -> None:
    served.proc.kill()  # SIGKILL: no shutdown code runs
    served.proc.wait(10)


def test_kill_mid_create_and_mid_run_loses_nothing(
    fleet: Fleet, serving: Callable[[str], Served], database_url: str
) -> None:
    rows = lines(12)
    gw = serving(database_url)
    client = _client(gw)
    file_id = upload(client, rows)
    # One part's create is made upstream but never answered: the gateway dies first.
    held = fleet.openai[1]
    held.hold("POST", r"^/v1/batches$", 4.0)
    thread = threading.Thread(target=lambda: _quietly(lambda: create(client, file_id)),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not all(f.batches for f in (*fleet.openai, fleet.azure)):
        assert time.monotonic() < deadline, "the parts never reached the upstreams"
        time.sleep(0.05)
    _kill(gw)
    thread.join()
    (orphan,) = held.batches.values()

    gw = serving(database_url)
    client = _client(gw, client.api_key)
    (batch,) = list(client.batches.list())
    # Mid-run: the parts are running; the gateway dies again and comes back.
    client.batches.retrieve(batch.id)
    _kill(gw)
    gw = serving(database_url)
    client = _client(gw, client.api_key)
    done = wait(client, batch.id)
    assert done.status == "completed", done
    assert [r["custom_id"] for r in results(client, done.output_file_id)] == \
        [r["custom_id"] for r in rows]
    # The part whose create was never recorded ran again; the unrecorded batch was cancelled.
    deadline = time.monotonic() + 20
    while orphan["status"] not in ("cancelling", "cancelled"):
        assert time.monotonic() < deadline, "the unrecorded part batch was left running"
        time.sleep(0.05)
    live = [b for b in fleet.batches() if b["status"] not in ("cancelling", "cancelled")]
    assert len(live) == 3


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(openai.APIError, httpx.HTTPError):  # the gateway died under it
        call()


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_submit_split_auto(fleet: Fleet, database_url: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    rows = lines(9)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(jsonl(rows))
    with RunningGateway(config(fleet, database_url), [GROUP]) as gw:
        code = main(["batch", "submit", str(src), "--model", GROUP, "--split", "auto",
                     "--output", str(out), "--json", "--poll-interval", "0.1",
                     "--base-url", gw.server.url + "/v1", "--api-key", gw.key])
        answer = json.loads(capsys.readouterr().out)
        assert code == 0, answer
        assert len(admin_get(gw.server.url, answer["batch"]["id"])["parts"]) == 3
        assert [json.loads(x)["custom_id"] for x in out.read_text().splitlines()] == \
            [r["custom_id"] for r in rows]
        with pytest.raises(SystemExit) as usage:
            main(["batch", "submit", str(src), "--model", GROUP, "--split", "0",
                  "--base-url", gw.server.url + "/v1", "--api-key", gw.key])
        assert usage.value.code == 1
