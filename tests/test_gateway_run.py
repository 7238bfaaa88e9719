"""Gateway-run batches: a deployment without a batch API (an OpenAI-compatible server, faked by
`FakeChat`) whose batches the gateway runs line by line, through the OpenAI SDK.

Each run checks what the client got (status, counts, the output and error files with every
custom_id once) and what the fake received (every request, its own limit counters)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types import Batch

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.plugins import load_providers
from gateway.runtime import Gateway
from gateway.selfrun.limits import Limiter, estimate_tokens
from gateway.selfrun.params import GatewayRunParams
from gateway.selfrun.wire import endpoint_url, response_line
from gateway.store import Store
from gateway.testing.fake_chat import FakeChat
from gateway.testing.servers import MASTER_KEY, RunningGateway
from tests.helpers import jsonl

GROUP = "llama-batch"
ROOT = Path(__file__).parents[1]
ENDED = ("completed", "failed", "expired", "cancelled")


def line(i: int, url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    if url == "/v1/embeddings":
        content: dict[str, Any] = {"input": f"line {i}"}
    else:
        content = {"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 8}
    return {"custom_id": f"req-{i}", "method": "POST", "url": url,
            "body": {"model": GROUP, **content, **body}}


def marker(i: int) -> str:
    return f"line {i}"


def run_config(fake: FakeChat, database_url: str, *, data_dir: str | None = None,
               api_base: str | None = None, **params: Any) -> dict[str, Any]:
    return {
        "model_list": [{
            "model_name": GROUP,
            "litellm_params": {
                "model": "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct",
                "api_base": api_base or fake.url + "/v1",
                "api_key": "sk-vllm",
                "timeout": 2,
                **params,
            },
            "model_info": {"mode": "batch"},
        }],
        "general_settings": {"master_key": MASTER_KEY, "database_url": database_url,
                             "batch_poll_interval": 0, "gateway_run_lease_seconds": 2,
                             "data_dir": data_dir or tempfile.mkdtemp(prefix="gateway-test-")},
    }


def submit(client: openai.OpenAI, lines: list[dict[str, Any]],
           endpoint: str = "/v1/chat/completions") -> Batch:
    f = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window="24h")


def wait(client: openai.OpenAI, batch_id: str, until: Any = None,
         timeout: float = 90) -> Batch:
    """Poll as a client does, until the batch ended (or `until(batch)` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if (until(batch) if until else batch.status in ENDED):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.05)


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).read().splitlines()]


def ids(lines: list[dict[str, Any]]) -> list[str]:
    return [x["custom_id"] for x in lines]


@pytest.fixture
def fake() -> Iterator[FakeChat]:
    # The fake's window forgives 0.2 s of jitter between the gateway's clock and its own.
    with FakeChat(api_key="sk-vllm", max_concurrency=4, rpm=40, window=2, slack=0.2,
                  retry_after="0.2", hang_seconds=10) as server:
        yield server


# -- the whole flow ------------------------------------------------------------------------------


def test_every_line_once_within_limits_with_retries_and_failures(
    fake: FakeChat, database_url: str
) -> None:
    n = 60
    fake.fail(marker(3), 429, 500)  # then answered
    fake.fail(marker(5), "hang")  # times out once, then answered
    fake.fail(marker(7), "reset")  # connection dropped once, then answered
    fake.fail_always(marker(9), 400)  # refused: not retried
    fake.fail_always(marker(11), 503)  # down for this line: retried, then the error file
    cfg = run_config(fake, database_url, max_parallel_requests=4, rpm=40,
                     limit_window_seconds=2, timeout=1, max_retries=2)
    with RunningGateway(cfg, [GROUP]) as gw:
        batch = submit(gw.client, [line(i) for i in range(n)])
        assert batch.status == "in_progress" and batch.model == GROUP
        batch = wait(gw.client, batch.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed,
                batch.request_counts.failed) == (n, n - 2, 2)
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
        out = results(gw.client, batch.output_file_id)
        errors = results(gw.client, batch.error_file_id)
        admin = httpx.get(f"{gw.server.url}/usage", timeout=10,
                          headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()

    # Every custom_id once, in input order, answered by the endpoint.
    assert ids(out) == [f"req-{i}" for i in range(n) if i not in (9, 11)]
    assert ids(errors) == ["req-9", "req-11"]
    for x in out:
        i = int(x["custom_id"].split("-")[1])
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200
        assert x["response"]["request_id"].startswith("req_")
        body = x["response"]["body"]
        assert body["choices"][0]["message"]["content"] == f"echo:{marker(i)}"
        assert body["model"] == "meta-llama/Llama-3.1-8B-Instruct"  # the deployment's model
    refused, down = errors
    assert refused["response"]["status_code"] == 400 and refused["error"] is None
    assert refused["response"]["body"]["error"]["message"] == f"Fake failure 400 for {marker(9)}."
    assert down["response"]["status_code"] == 503
    # What the endpoint received: retries as configured, within its limits.
    assert fake.violations == {"concurrency": 0, "rpm": 0, "tpm": 0}
    counts = fake.counts()
    assert counts[marker(3)] == 3 and counts[marker(5)] == 2 and counts[marker(7)] == 2
    assert counts[marker(9)] == 1 and counts[marker(11)] == 3
    assert sum(counts.values()) == n + 2 + 1 + 1 + 2
    # Usage: the sum of the answers' usage, recorded once.
    assert batch.usage is not None and batch.usage.total_tokens > 0
    expected = sum(x["response"]["body"]["usage"]["total_tokens"] for x in out)
    assert batch.usage.total_tokens == expected
    [recorded] = [u for u in admin["data"] if u["batch_id"] == batch.id] if "data" in admin \
        else [u for u in admin if u["batch_id"] == batch.id]
    assert recorded["total_tokens"] == expected and recorded["requests_completed"] == n - 2


def test_tokens_per_minute_and_endpoint_forms(database_url: str) -> None:
    """tpm holds with token estimates corrected by usage; an api_base without /v1 works, and
    answers spread over several lines are compacted into one output line each."""
    with FakeChat(tpm=120, window=1, slack=0.1, pretty=True) as fake:
        cfg = run_config(fake, database_url, api_base=fake.url, tpm=120,
                         limit_window_seconds=1)
        with RunningGateway(cfg, [GROUP]) as gw:
            lines = [line(i, "/v1/embeddings") for i in range(12)]
            batch = wait(gw.client, submit(gw.client, lines, "/v1/embeddings").id)
            assert batch.status == "completed", batch
            out = results(gw.client, batch.output_file_id)
    assert ids(out) == [f"req-{i}" for i in range(12)]
    assert all(x["response"]["body"]["object"] == "list" for x in out)
    assert fake.violations["tpm"] == 0
    assert batch.error_file_id is None


def test_deleting_a_result_file_deletes_what_the_gateway_keeps_of_it(
    database_url: str, tmp_path: Path
) -> None:
    """A run's output and error files are kept by the gateway itself (`runs/<id>/`): deleting
    one as a client deletes that copy too, and only that one."""
    with FakeChat() as fake:
        fake.fail_always(marker(1), 400)
        cfg = run_config(fake, database_url, data_dir=str(tmp_path))
        with RunningGateway(cfg, [GROUP]) as gw:
            batch = wait(gw.client, submit(gw.client, [line(i) for i in range(3)]).id)
            assert batch.output_file_id and batch.error_file_id

            def kept() -> list[str]:
                return sorted(p.name for p in (tmp_path / "files" / "runs").rglob("*.jsonl"))

            assert kept() == ["errors.jsonl", "output.jsonl"]
            gw.client.files.delete(batch.output_file_id)
            assert kept() == ["errors.jsonl"]
            assert ids(results(gw.client, batch.error_file_id)) == ["req-1"]
            gw.client.files.delete(batch.error_file_id)
            assert kept() == []


def test_deleting_a_split_batchs_output_deletes_its_parts_results_too(
    database_url: str, tmp_path: Path
) -> None:
    with FakeChat() as fake:
        cfg = run_config(fake, database_url, data_dir=str(tmp_path))
        first = cfg["model_list"][0]
        cfg["model_list"] = [{**first, "model_info": {"mode": "batch", "id": dep}}
                             for dep in ("run-a", "run-b")]
        with RunningGateway(cfg, [GROUP]) as gw:
            f = gw.client.files.create(file=("in.jsonl", jsonl([line(i) for i in range(6)])),
                                       purpose="batch")
            batch = gw.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                             completion_window="24h", extra_body={"split": 2})
            batch = wait(gw.client, batch.id)
            assert batch.status == "completed" and batch.output_file_id, batch

            def outputs() -> list[str]:
                return sorted(str(p.relative_to(tmp_path / "files")).split("/")[0]
                              for p in (tmp_path / "files").rglob("output.jsonl"))

            assert len(outputs()) == 3  # each part's run, and the merged file
            gw.client.files.delete(batch.output_file_id)
            assert outputs() == []


def test_cancel_stops_new_requests_and_keeps_finished_lines(database_url: str) -> None:
    n = 100
    with FakeChat(max_concurrency=2, delay=0.1) as fake:
        cfg = run_config(fake, database_url, max_parallel_requests=2)
        with RunningGateway(cfg, [GROUP]) as gw:
            batch = submit(gw.client, [line(i) for i in range(n)])
            wait(gw.client, batch.id,
                 lambda b: b.request_counts is not None and b.request_counts.completed >= 4)
            cancelling = gw.client.batches.cancel(batch.id)
            assert cancelling.status in ("cancelling", "cancelled")
            batch = wait(gw.client, batch.id)
            out = results(gw.client, batch.output_file_id)
            errors = results(gw.client, batch.error_file_id)
            with pytest.raises(openai.ConflictError):
                gw.client.batches.cancel(batch.id)
    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    assert batch.request_counts is not None
    done = batch.request_counts.completed
    assert 4 <= done < n and len(out) == done
    # Lines in flight at the cancel finished; no line was sent after them.
    assert len(fake.received) == done
    assert sorted(ids(out) + ids(errors), key=lambda c: int(c[4:])) == \
        [f"req-{i}" for i in range(n)]
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    assert batch.request_counts.failed == n - done


def test_cancel_does_not_wait_for_the_rate_limit(database_url: str) -> None:
    """Lines waiting for their turn under `rpm` are not in flight: a cancel ends the batch
    without waiting for the window to roll (a minute here; the wait below is far shorter)."""
    with FakeChat() as fake:
        cfg = run_config(fake, database_url, rpm=5, limit_window_seconds=60)
        with RunningGateway(cfg, [GROUP]) as gw:
            batch = submit(gw.client, [line(i) for i in range(20)])
            wait(gw.client, batch.id,
                 lambda b: b.request_counts is not None and b.request_counts.completed == 5)
            gw.client.batches.cancel(batch.id)
            batch = wait(gw.client, batch.id, timeout=20)
    assert batch.status == "cancelled" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 15)
    assert len(fake.received) == 5


def test_completion_window_passing_ends_expired(database_url: str) -> None:
    n = 60
    with FakeChat(max_concurrency=2, delay=0.1) as fake:
        cfg = run_config(fake, database_url, max_parallel_requests=2)
        with RunningGateway(cfg, [GROUP]) as gw:
            batch = submit(gw.client, [line(i) for i in range(n)])
            wait(gw.client, batch.id,
                 lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
            asyncio.run(_expire_runs(database_url))  # the 24 hours are over
            batch = wait(gw.client, batch.id)
            out = results(gw.client, batch.output_file_id)
            errors = results(gw.client, batch.error_file_id)
    assert batch.status == "expired" and batch.expired_at
    assert batch.request_counts is not None
    assert len(out) == batch.request_counts.completed and 2 <= len(out) < n
    assert len(fake.received) == len(out)
    assert {x["error"]["code"] for x in errors} == {"batch_expired"}
    assert errors[0]["response"] is None
    assert sorted(ids(out) + ids(errors), key=lambda c: int(c[4:])) == \
        [f"req-{i}" for i in range(n)]


async def _expire_runs(database_url: str) -> None:
    store = Store(database_url)
    await store.db.connect()
    try:
        await store.db.execute("UPDATE gateway_runs SET expires_at = 1")
    finally:
        await store.db.disconnect()


def test_two_instances_keep_the_deployments_limits_together(
    database_url: str, tmp_path: Path
) -> None:
    """Batches created on two instances sharing the database: one instance at a time runs a
    deployment's batches, so its limits hold for the fleet, and both batches complete."""
    n = 40
    with FakeChat(max_concurrency=3, delay=0.02) as fake:
        cfg = run_config(fake, database_url, data_dir=str(tmp_path), max_parallel_requests=3)
        with RunningGateway(cfg, [GROUP]) as a, RunningGateway(cfg, [GROUP]) as b:
            first = submit(a.client, [line(i) for i in range(n)])
            second = submit(b.client, [line(i) for i in range(n, 2 * n)])
            done = [wait(a.client, first.id), wait(b.client, second.id)]
            outs = [results(a.client, done[0].output_file_id),
                    results(b.client, done[1].output_file_id)]
    assert [x.status for x in done] == ["completed", "completed"]
    assert ids(outs[0]) == [f"req-{i}" for i in range(n)]
    assert ids(outs[1]) == [f"req-{i}" for i in range(n, 2 * n)]
    assert fake.violations["concurrency"] == 0 and fake.max_in_flight == 3
    assert sorted(fake.counts().values()) == [1] * (2 * n)


# -- a gateway killed mid-run --------------------------------------------------------------------


class Process:
    """`gateway serve` as a process of its own, to be killed."""

    def __init__(self, config_path: Path, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path),
             "--port", self.url.rsplit(":", 1)[1], "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, env=dict(os.environ))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health/readiness", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()


async def _checkpointed(database_url: str) -> set[int]:
    store = Store(database_url)
    await store.db.connect()
    try:
        rows = await store.db.fetch_all("SELECT line FROM gateway_run_results")
    finally:
        await store.db.disconnect()
    return {int(r["line"]) for r in rows}


def test_killed_gateway_resumes_without_sending_a_finished_line_again(
    database_url: str, tmp_path: Path
) -> None:
    n = 800
    with FakeChat(max_concurrency=4, delay=0.02) as fake:
        cfg = run_config(fake, database_url, data_dir=str(tmp_path / "data"),
                         max_parallel_requests=4)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        first = Process(path, tmp_path / "stderr.log")
        try:
            key = httpx.post(first.url + "/key/generate", json={"models": [GROUP]}, timeout=10,
                             headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
            client = openai.OpenAI(base_url=first.url + "/v1", api_key=key, max_retries=0)
            batch = submit(client, [line(i) for i in range(n)])
            wait(client, batch.id, lambda b: b.request_counts.completed >= 100)
        finally:
            first.kill()  # kill -9: no shutdown, no lease given back
        recorded = {f"line {i - 1}" for i in asyncio.run(_checkpointed(database_url))}
        sent_before = len(fake.received)
        assert 100 <= len(recorded) < n

        second = Process(path, tmp_path / "stderr.log")
        try:
            client = openai.OpenAI(base_url=second.url + "/v1", api_key=key, max_retries=0)
            batch = wait(client, batch.id)
            out = results(client, batch.output_file_id)
        finally:
            second.stop()
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == n and batch.error_file_id is None
    assert ids(out) == [f"req-{i}" for i in range(n)]
    counts = fake.counts()
    # A line recorded before the kill was never sent again; at most the lines in flight or
    # not yet checkpointed then were.
    assert all(counts[m] == 1 for m in recorded)
    assert len(fake.received) - n <= sent_before - len(recorded)
    assert fake.violations["concurrency"] == 0


# -- 10,000 lines --------------------------------------------------------------------------------


def test_ten_thousand_lines(tmp_path: Path) -> None:
    """The issue's run (about 12 s here: not a slow test): 10,000 lines, 429s, 5xx, hangs,
    a refused line, the endpoint's limits never exceeded and all of its parallelism used."""
    n = 10_000
    # Answers take 20 ms, so the 32 requests allowed in flight are.
    with FakeChat(max_concurrency=32, rpm=12_000, window=6, slack=0.2, retry_after="0.1",
                  hang_seconds=5, delay=0.02) as fake:
        for i in range(0, n, 97):
            fake.fail(marker(i), 429)
        for i in range(50, n, 211):
            fake.fail(marker(i), 500, 502)
        for i in range(20, n, 1009):
            fake.fail(marker(i), "hang")
        fake.fail_always(marker(n - 1), 400)
        cfg = run_config(fake, f"sqlite:///{tmp_path / 'gw.db'}", max_parallel_requests=32,
                         rpm=12_000, limit_window_seconds=6, timeout=1, max_retries=3)
        with RunningGateway(cfg, [GROUP]) as gw:
            batch = wait(gw.client, submit(gw.client, [line(i) for i in range(n)]).id,
                         timeout=120)
            out = results(gw.client, batch.output_file_id)
            errors = results(gw.client, batch.error_file_id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == n - 1
    assert ids(out) == [f"req-{i}" for i in range(n - 1)] and ids(errors) == [f"req-{n - 1}"]
    assert fake.violations == {"concurrency": 0, "rpm": 0, "tpm": 0}
    # Within the limit, and in parallel (how close to it depends on the machine's load).
    assert 8 <= fake.max_in_flight <= 32


# -- pieces --------------------------------------------------------------------------------------


def test_limiter_counts_requests_and_tokens_in_a_rolling_window() -> None:
    async def check() -> None:
        lim = Limiter(parallel=2, rpm=3, tpm=100, window=60)
        assert lim.delay(10, now=0) == 0
        for t in (0, 1, 2):
            lim.take(10, now=t)
        assert lim.delay(10, now=3) == 57  # the 4th request waits for the first to leave
        assert lim.delay(10, now=60) == 0
        big = Limiter(parallel=1, rpm=None, tpm=100, window=60)
        spend = big.take(80, now=0)
        assert big.delay(30, now=1) == 59
        big.correct(spend, 20)  # the answer used fewer tokens than estimated
        assert big.delay(30, now=1) == 0
        assert big.delay(500, now=1) == 59  # too big for any window: alone, once it is empty
        assert big.delay(500, now=60) == 0

    asyncio.run(check())
    assert estimate_tokens("/v1/chat/completions", b'{"max_tokens": 100}') == 100 + 5
    assert estimate_tokens("/v1/embeddings", b'{"input": "abcdefgh"}') == 6


def test_output_lines_and_urls() -> None:
    assert endpoint_url("http://h:8000/v1", "/v1/chat/completions") == \
        "http://h:8000/v1/chat/completions"
    assert endpoint_url("http://h:8000/", "/v1/embeddings") == "http://h:8000/v1/embeddings"
    assert endpoint_url("https://h/api/v1/", "/v1/responses") == "https://h/api/v1/responses"
    out = json.loads(response_line("a\"b", 200, "req_1", b'{\n "x": 1\n}'))
    assert out["custom_id"] == "a\"b" and out["response"]["body"] == {"x": 1}
    assert out["error"] is None and out["id"].startswith("batch_req_")


def test_which_deployments_the_gateway_runs() -> None:
    providers = load_providers()
    vllm = {"model_name": "a", "model_info": {"mode": "batch"},
            "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://v:8000/v1",
                               "rpm": 10}}
    routed = {"model_name": "b", "model_info": {"mode": "batch", "batch_execution": "gateway"},
              "litellm_params": {"model": "openai/llama", "api_base": "https://h/api/v1"}}
    config = parse_config({"model_list": [vllm, routed]}, providers)
    Gateway(config, providers)  # no adapter for hosted_vllm is needed
    a, b = config.deployments
    assert isinstance(a.params, GatewayRunParams) and a.params.rpm == 10
    assert isinstance(b.params, GatewayRunParams) and b.params.max_retries == 5
    with pytest.raises(ConfigError, match=r"model_info.batch_execution"):
        parse_config({"model_list": [{**routed, "model_info": {
            "mode": "batch", "batch_execution": "yes"}}]}, providers)
    with pytest.raises(ConfigError, match=r"missing required field `api_base`"):
        parse_config({"model_list": [{**vllm, "litellm_params": {
            "model": "hosted_vllm/llama"}}]}, providers)
    with pytest.raises(ConfigError, match=r"max_parallel_requests must be at least 1"):
        parse_config({"model_list": [{**vllm, "litellm_params": {
            **vllm["litellm_params"], "max_parallel_requests": 0}}]}, providers)
