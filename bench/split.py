"""A split batch against the same batch unsplit: wall time on deployments that each process
at a fixed rate.

Three gateway-run deployments of one group, each in front of its own fake OpenAI-compatible
server (`FakeChat`) that takes `DELAY` seconds per request, `PARALLEL` requests at a time: a
fixed rate per deployment. The same file runs whole (one deployment does every line) and with
`split: auto` (a third on each), alternating; the time is from `batches.create` to the client
seeing the batch ended (retrieving every 50 ms), so the split run includes its merge. The goal
is about 1/3 of the unsplit time.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

GROUP = "bench-split"
DEPLOYMENTS = 3
DELAY = 0.02  # seconds per request at each fake server
PARALLEL = 4  # requests in flight per deployment (the gateway keeps to it)
ENDED = ("completed", "failed", "expired", "cancelled")


def _entry(i: int, url: str) -> str:
    return (f"  - model_name: {GROUP}\n    litellm_params:\n"
            "      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct\n"
            f"      api_base: {url}/v1\n      max_parallel_requests: {PARALLEL}\n"
            f"    model_info:\n      mode: batch\n      id: split-{i}\n")


def _lines(n: int) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": GROUP, "messages": [{"role": "user", "content": f"line {i}"}],
                 "max_tokens": 8}}).encode() + b"\n" for i in range(n))


def _timed(client: Any, file_id: str, split: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h",
                                  extra_body={"split": split} if split else None)
    while batch.status not in ENDED:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - t0
    counts = batch.request_counts
    return {"seconds": seconds, "status": batch.status,
            "completed": counts.completed if counts else 0}


def wl_split(ctx: Any) -> list[dict[str, Any]]:
    import httpx
    import openai

    from bench import run, seeding
    from gateway.testing.fake_chat import FakeChat

    n = 1_000 if ctx.sizes.rounds < 3 else 4_000
    rounds = 1 if ctx.sizes.rounds < 3 else 2
    fakes = [FakeChat(delay=DELAY) for _ in range(DEPLOYMENTS)]
    for fake in fakes:
        fake.__enter__()
    gw = None
    try:
        entries = [_entry(i, f.url) for i, f in enumerate(fakes)]
        gw = seeding.own_gateway(ctx.tmp, f"split-{ctx.db}", ctx.database_url, run.MASTER,
                                 entries, {"batch_poll_interval": 0})
        key = httpx.post(gw.url + "/key/generate", json={"models": [GROUP]}, timeout=30,
                         headers={"Authorization": f"Bearer {run.MASTER}"}).json()["key"]
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        file_id = client.files.create(file=("split.jsonl", _lines(n)), purpose="batch").id
        whole: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for _ in range(rounds):
            whole.append(_timed(client, file_id, None))
            parts.append(_timed(client, file_id, "auto"))
        client.close()
    finally:
        if gw is not None:
            gw.stop()
        for fake in fakes:
            fake.__exit__(None, None, None)
    w = statistics.median(r["seconds"] for r in whole)
    s = statistics.median(r["seconds"] for r in parts)
    ratio = s / w
    ok = all(r["status"] == "completed" and r["completed"] == n for r in whole + parts)
    rate = PARALLEL / DELAY
    return [{
        "id": "split", "title": f"split batch, {n:,} lines over {DEPLOYMENTS} gateway-run "
                                f"deployments at {rate:.0f} requests/s each",
        "goal": f"about 1/{DEPLOYMENTS} of the unsplit wall time (≤ 0.5)",
        "direct": {"seconds": w, "what": "the same batch unsplit, on one deployment",
                   "text": f"unsplit {w:.2f} s"},
        "gateway": {"seconds": s, "text": f"split {s:.2f} s"},
        "ratio": ratio, "ratio_of": "wall time, split / unsplit",
        "pass": ok and ratio <= 0.5,
        "summary": f"{n:,} lines: unsplit {w:.2f} s, split in {DEPLOYMENTS} {s:.2f} s "
                   f"(ratio {ratio:.2f}, ideal {1 / DEPLOYMENTS:.2f})",
        "rounds": {"direct": whole, "gateway": parts},
    }]
