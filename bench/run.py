"""`make bench` / `python -m bench.run`: the gateway against the direct upstream, same run.

Separate processes on loopback: fake OpenAI upstreams (`bench.upstream`), the gateway
(`gateway serve`, uvicorn, one worker) and a load client (`bench.load`) per measurement. Every
workload runs direct (client → upstream: the physical limit) and through the gateway, alternating
round by round; the report gives both and their ratio. Gateway memory comes from
/proc/PID/status (VmHWM reset through clear_refs before each measurement, VmRSS sampled too).

    python -m bench.run                      # full run, SQLite and PostgreSQL (~10 min)
    python -m bench.run --quick              # small sizes, ~1-2 minutes
    python -m bench.run --db sqlite --only retrieve,upload_10
    python -m bench.run --compare litellm    # also LiteLLM's proxy (own venv, see bench/litellm)

Results: bench/results/<db>[-quick].json, BENCHMARKS.md (table between markers), and
bench/results/ratios.png.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import data, lists, procs, profile, refresh, report, split

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PROFILES = os.path.join(RESULTS, "profiles")
MASTER = "sk-bench-master"
UP_KEYS = ("sk-bench-upstream-a", "sk-bench-upstream-b")
GROUP, FANOUT = "bench-batch", "bench-fanout"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MIB = 1 << 20


@dataclass
class Sizes:
    rounds: int
    big_rounds: int
    retrieve_1: int
    retrieve_32: int
    completed_32: int
    uploads: tuple[int, ...]  # MiB
    fanout: int
    content: int
    flow_lines: int
    validation: tuple[int, int]  # lines, MiB
    startups: int


FULL = Sizes(rounds=3, big_rounds=2, retrieve_1=1000, retrieve_32=2000, completed_32=4000,
             uploads=(10, 100, 200), fanout=200, content=100, flow_lines=10_000,
             validation=(50_000, 200), startups=3)
# LiteLLM's proxy answers tens of requests a second: fewer calls, or one run takes an hour.
LITELLM_FULL = Sizes(rounds=2, big_rounds=1, retrieve_1=200, retrieve_32=400, completed_32=300,
                     uploads=(10, 100, 200), fanout=200, content=100, flow_lines=10_000,
                     validation=(50_000, 200), startups=1)
LITELLM_QUICK = Sizes(rounds=1, big_rounds=1, retrieve_1=100, retrieve_32=200,
                      completed_32=200, uploads=(2, 10, 20), fanout=20, content=10,
                      flow_lines=1000, validation=(5000, 20), startups=1)
# Not measurable on LiteLLM's proxy in passthrough mode.
LITELLM_SKIP = {
    "fanout": "one file to several deployments needs its managed-files mode (a database)",
    "validation": "it does not validate batch lines",
    "list": "its batches live on the provider (no database in passthrough mode)",
    "refresh": "it has no background refresh",
    "split": "it cannot split a batch over deployments",
}
QUICK = Sizes(rounds=2, big_rounds=1, retrieve_1=300, retrieve_32=1000, completed_32=1000,
              uploads=(2, 10, 20), fanout=20, content=10, flow_lines=1000,
              validation=(5000, 20), startups=1)


def lines_for(mib: int) -> int:
    """~1 KB lines, but never more than OpenAI's 50,000 per file (bigger lines instead)."""
    return min(50_000, mib * 1024)


@dataclass
class Ctx:
    sizes: Sizes
    tmp: str
    db: str
    database_url: str = ""
    upstreams: list[procs.Proc] = field(default_factory=list)
    gateway: procs.Proc | None = None
    key: str = ""
    config_path: str = ""
    files: dict[str, str] = field(default_factory=dict)
    gw_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False
    target: str = "gateway"  # or "litellm": its proxy in passthrough mode

    @property
    def litellm(self) -> bool:
        return self.target == "litellm"

    def fields(self, group: str) -> dict[str, str]:
        """Upload form fields: the gateway's target groups; LiteLLM passthrough takes none."""
        return {} if self.litellm else {"target_model_names": group}

    @property
    def up(self) -> procs.Proc:
        return self.upstreams[0]

    @property
    def gw(self) -> procs.Proc:
        assert self.gateway is not None
        return self.gateway

    def file(self, name: str, lines: int, mib: int, model: str = GROUP) -> str:
        path = os.path.join(self.tmp, f"{name}.jsonl")
        if path not in self.files:
            data.make_file(path, lines, mib * MIB - 4096, model)
            self.files[path] = name
        return path


# -- helpers ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def alternate(ctx: Ctx, name: str, rounds: int, direct: Callable[[], dict[str, Any]],
              through: Callable[[], dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                               list[dict[str, Any]]]:
    """Run direct and gateway measurements alternately; the gateway ones with memory and CPU.
    With --profile, one more gateway round runs under py-spy (not counted)."""
    d_runs, g_runs = [], []
    for _ in range(rounds):
        d_runs.append(checked(direct()))
        with procs.MemoryWatch(ctx.gw.pid) as mem:
            g = checked(through())
        g["memory"] = mem.result()
        g_runs.append(g)
    if ctx.profile:
        raw = os.path.join(ctx.tmp, f"profile-{ctx.db}-{name}.txt")
        with profile.Profiler(ctx.gw.pid, raw):
            checked(through())
        os.makedirs(PROFILES, exist_ok=True)
        with open(os.path.join(PROFILES, f"{ctx.db}-{name}.txt"), "w") as f:
            f.write(profile.summarise(raw, f"gateway ({ctx.db}): {name}"))
    return d_runs, g_runs


def checked(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def up_stats(ctx: Ctx, up: procs.Proc | None = None) -> int:
    _, body = procs.http("GET", (up or ctx.up).url + "/_bench/stats")
    return int(body["requests"])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def max_growth(runs: list[dict[str, Any]]) -> float:
    return max(r["memory"]["growth_mib"] for r in runs)


def max_peak(runs: list[dict[str, Any]]) -> float:
    return max(r["memory"]["rss_peak_mib"] for r in runs)


def cpu_ms_per_call(runs: list[dict[str, Any]]) -> float:
    """Gateway process CPU (all threads) per call."""
    return median([r["memory"]["cpu_seconds"] / r["calls"] * 1000 for r in runs])


def cpu_s(runs: list[dict[str, Any]]) -> float:
    return median([r["memory"]["cpu_seconds"] for r in runs])


# -- setup -----------------------------------------------------------------------------------


def write_config(ctx: Ctx) -> None:
    a, b = (u.url + "/v1" for u in ctx.upstreams)

    def dep(group: str, base: str, key: str, dep_id: str) -> str:
        return (f"  - model_name: {group}\n    litellm_params:\n      model: openai/gpt-4o-mini\n"
                f"      api_base: {base}\n      api_key: {key}\n      timeout: 300\n"
                f"    model_info:\n      mode: batch\n      id: {dep_id}\n")

    ctx.config_path = os.path.join(ctx.tmp, f"gateway-{ctx.db}.yaml")
    with open(ctx.config_path, "w") as f:
        f.write("model_list:\n")
        f.write(dep(GROUP, a, UP_KEYS[0], "bench-a"))
        f.write(dep(FANOUT, a, UP_KEYS[0], "fanout-a"))
        f.write(dep(FANOUT, b, UP_KEYS[1], "fanout-b"))
        f.write(f"general_settings:\n  master_key: {MASTER}\n"
                f"  database_url: {ctx.database_url}\n  max_file_size_mb: 200\n")


def make_database(ctx: Ctx) -> Callable[[], None]:
    if ctx.db == "none":
        return lambda: None
    if ctx.db == "sqlite":
        path = os.path.join(ctx.tmp, "gateway.db")
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        ctx.database_url = f"sqlite:///{path}"
        return lambda: None
    name = f"bench_gateway_{os.getpid()}"

    async def admin(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name}"))
    asyncio.run(admin(f"CREATE DATABASE {name}"))
    ctx.database_url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    return lambda: asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def start_gateway(ctx: Ctx) -> float:
    if ctx.litellm:
        from bench import litellm

        return litellm.start(ctx)
    ctx.gateway = procs.gateway(procs.free_port(), ctx.config_path, ctx.tmp, ctx.gw_env).start()
    return ctx.gw.wait_ready("/v1/batches?limit=1", MASTER)


def mint_key(ctx: Ctx) -> None:
    if ctx.litellm:
        ctx.key = MASTER  # no database in passthrough mode: no virtual keys
        return
    status, body = procs.http("POST", ctx.gw.url + "/key/generate", MASTER,
                              {"models": [GROUP, FANOUT], "key_alias": "bench"})
    assert status == 200, body
    ctx.key = body["key"]


def gateway_batch(ctx: Ctx, complete: bool) -> tuple[str, str]:
    """A batch made through the gateway: (gateway id, native id), in progress or completed."""
    path = ctx.file("small", 10, 1)
    up = procs.client({"kind": "upload", "base": ctx.gw.url + "/v1", "key": ctx.key,
                       "file": path, "fields": ctx.fields(GROUP)})
    status, batch = procs.http("POST", ctx.gw.url + "/v1/batches", ctx.key, {
        "input_file_id": checked(up)["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    assert status == 200, batch
    _, native = procs.http("GET", ctx.up.url + "/_bench/last_batch")
    if complete:
        procs.http("POST", f"{ctx.up.url}/_bench/complete/{native['id']}")
    else:
        procs.http("POST", f"{ctx.up.url}/_bench/advance/{native['id']}?status=in_progress")
    status, seen = procs.http("GET", f"{ctx.gw.url}/v1/batches/{batch['id']}", ctx.key)
    assert status == 200 and seen["status"] == ("completed" if complete else "in_progress"), seen
    return batch["id"], native["id"]


# -- workloads -------------------------------------------------------------------------------


def wl_retrieve(ctx: Ctx) -> list[dict[str, Any]]:
    s = ctx.sizes
    gw_id, native = gateway_batch(ctx, complete=False)
    direct = {"kind": "get", "url": f"{ctx.up.url}/v1/batches/{native}",
              "headers": auth(UP_KEYS[0])}
    through = {"kind": "get", "url": f"{ctx.gw.url}/v1/batches/{gw_id}", "headers": auth(ctx.key)}
    out = []

    one = {"n": s.retrieve_1, "concurrency": 1, "warmup": 50}
    d, g = alternate(ctx, "retrieve_1", s.rounds, lambda: procs.client({**direct, **one}),
                     lambda: procs.client({**through, **one}))
    dp50, gp50 = median([r["p50_ms"] for r in d]), median([r["p50_ms"] for r in g])
    out.append({
        "id": "retrieve_1", "title": "batches.retrieve, in progress, 1 client",
        "goal": "p50 ≤ direct p50 + 0.8 ms",
        "direct": {"p50_ms": dp50, "p99_ms": median([r["p99_ms"] for r in d]),
                   "rps": median([r["rps"] for r in d])},
        "gateway": {"p50_ms": gp50, "p99_ms": median([r["p99_ms"] for r in g]),
                    "rps": median([r["rps"] for r in g]), "growth_mib": max_growth(g),
                    "cpu_ms_per_call": cpu_ms_per_call(g)},
        "ratio": gp50 / dp50, "ratio_of": "p50 latency",
        "pass": gp50 <= dp50 + 0.8 and all(r["errors"] == 0 for r in g),
        "summary": f"p50 {gp50:.2f} ms vs {dp50:.2f} ms (+{gp50 - dp50:.2f} ms)",
        "rounds": {"direct": d, "gateway": g},
    })

    many = {"n": s.retrieve_32, "concurrency": 32, "warmup": 200}
    d, g = alternate(ctx, "retrieve_32", s.rounds, lambda: procs.client({**direct, **many}),
                     lambda: procs.client({**through, **many}))
    drps, grps = median([r["rps"] for r in d]), median([r["rps"] for r in g])
    gp99 = median([r["p99_ms"] for r in g])
    errors = sum(r["errors"] for r in g)
    out.append({
        "id": "retrieve_32", "title": f"batches.retrieve, in progress, 32 clients, "
                                      f"{s.retrieve_32:,} calls",
        "goal": "≥ 1,500 req/s, p99 ≤ 50 ms, no errors",
        "direct": {"rps": drps, "p50_ms": median([r["p50_ms"] for r in d]),
                   "p99_ms": median([r["p99_ms"] for r in d])},
        "gateway": {"rps": grps, "p50_ms": median([r["p50_ms"] for r in g]), "p99_ms": gp99,
                    "errors": errors, "growth_mib": max_growth(g),
                    "cpu_ms_per_call": cpu_ms_per_call(g)},
        "ratio": drps / grps, "ratio_of": "throughput (direct / gateway)",
        "pass": grps >= 1500 and gp99 <= 50 and errors == 0,
        "summary": f"{grps:,.0f} req/s (direct {drps:,.0f}), p99 {gp99:.1f} ms, {errors} errors",
        "rounds": {"direct": d, "gateway": g},
    })
    return out


def wl_completed(ctx: Ctx) -> list[dict[str, Any]]:
    s = ctx.sizes
    gw_id, native = gateway_batch(ctx, complete=True)
    direct = {"kind": "get", "url": f"{ctx.up.url}/v1/batches/{native}",
              "headers": auth(UP_KEYS[0]), "n": s.completed_32, "concurrency": 32,
              "warmup": 200}
    through = {**direct, "url": f"{ctx.gw.url}/v1/batches/{gw_id}", "headers": auth(ctx.key)}
    upstream_calls = []

    def via_gateway() -> dict[str, Any]:
        before = up_stats(ctx)
        r = procs.client(through)
        upstream_calls.append(up_stats(ctx) - before)
        return r

    d, g = alternate(ctx, "retrieve_completed_32", s.rounds, lambda: procs.client(direct),
                     via_gateway)
    drps, grps = median([r["rps"] for r in d]), median([r["rps"] for r in g])
    errors = sum(r["errors"] for r in g)
    calls = sum(upstream_calls)
    return [{
        "id": "retrieve_completed_32", "title": "batches.retrieve, completed, 32 clients",
        "goal": "≥ 2,500 req/s, no upstream call",
        "direct": {"rps": drps, "p50_ms": median([r["p50_ms"] for r in d]),
                   "p99_ms": median([r["p99_ms"] for r in d])},
        "gateway": {"rps": grps, "p50_ms": median([r["p50_ms"] for r in g]),
                    "p99_ms": median([r["p99_ms"] for r in g]), "errors": errors,
                    "upstream_calls": calls, "growth_mib": max_growth(g),
                    "cpu_ms_per_call": cpu_ms_per_call(g)},
        "ratio": drps / grps, "ratio_of": "throughput (direct / gateway)",
        "pass": grps >= 2500 and calls == 0 and errors == 0,
        "summary": f"{grps:,.0f} req/s (direct {drps:,.0f}), {calls} upstream calls",
        "rounds": {"direct": d, "gateway": g},
    }]


def _upload_specs(ctx: Ctx, path: str, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
    direct = {"kind": "upload", "base": ctx.up.url + "/v1", "key": UP_KEYS[0], "file": path}
    through = {"kind": "upload", "base": ctx.gw.url + "/v1", "key": ctx.key, "file": path,
               "fields": ctx.fields(group)}
    return direct, through


def _delete(base: str, key: str, file_id: str) -> None:
    procs.http("DELETE", f"{base}/files/{file_id}", key, timeout=120)


def _run_upload(ctx: Ctx, spec: dict[str, Any], base: str, key: str) -> dict[str, Any]:
    r = checked(procs.client(spec))
    if ctx.litellm:  # passthrough ids are the upstream's
        base, key = ctx.up.url + "/v1", UP_KEYS[0]
    _delete(base, key, r["id"])  # keep the upstreams' disks small; not timed
    return r


def wl_uploads(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for mib in ctx.sizes.uploads:
        lines = lines_for(mib)
        path = ctx.file(f"upload-{mib}", lines, mib)
        direct, through = _upload_specs(ctx, path, GROUP)
        rounds = ctx.sizes.rounds if mib < 150 else ctx.sizes.big_rounds
        d, g = alternate(
            ctx, f"upload_{mib}", rounds,
            functools.partial(_run_upload, ctx, direct, ctx.up.url + "/v1", UP_KEYS[0]),
            functools.partial(_run_upload, ctx, through, ctx.gw.url + "/v1", ctx.key))
        result = _upload_goal(_transfer_result(
            f"upload_{mib}", f"upload {mib} MiB ({lines:,} lines) to 1 deployment",
            os.path.getsize(path), d, g,
        ), UPLOAD_RATIO)
        if mib == max(ctx.sizes.uploads) and not ctx.litellm:
            result["gateway"]["floor"] = relay_floor(ctx, path, rounds, result["direct"]["seconds"])
        out.append(result)
    return out


def relay_floor(ctx: Ctx, path: str, rounds: int, direct_s: float) -> dict[str, float]:
    """The same upload through `bench.relay` (no gateway logic): its ratios to direct."""
    port = procs.free_port()
    relay = procs.Proc("relay", [procs.PY, "-m", "bench.relay", "--port", str(port),
                                 "--upstream", ctx.up.url], port, log_dir=ctx.tmp).start()
    try:
        relay.wait_ready("/")
        floor = {}
        for mode in ("bytes", "multipart"):
            spec = {"kind": "upload", "base": f"{relay.url}/{mode}/v1", "key": UP_KEYS[0],
                    "file": path}
            runs = [_run_upload(ctx, spec, ctx.up.url + "/v1", UP_KEYS[0])
                    for _ in range(rounds)]
            floor[mode] = median([r["seconds"] for r in runs]) / direct_s
    finally:
        relay.stop()
    return floor


# Issue 15's upload goals (stretch: 2.0x); an upload's bytes are checked and copied by the
# gateway (and kept in its file store), so it cannot reach the relay floor (`relay_floor`).
UPLOAD_RATIO, FANOUT_RATIO, UPLOAD_GROWTH_MIB = 2.5, 3.0, 32


def _upload_goal(r: dict[str, Any], ratio: float) -> dict[str, Any]:
    growth = r["gateway"]["growth_mib"]
    versus = "a single direct upload" if ratio == FANOUT_RATIO else "direct"
    r["goal"] = f"time ≤ {ratio:g}x {versus}; RSS growth ≤ {UPLOAD_GROWTH_MIB} MiB"
    r["pass"] = r["ratio"] <= ratio and growth <= UPLOAD_GROWTH_MIB
    return r


def _transfer_result(
    wid: str, title: str, size: int, d: list[dict[str, Any]], g: list[dict[str, Any]]
) -> dict[str, Any]:
    """A transfer workload's result: time against direct, and the gateway's memory growth."""
    dt, gt = median([r["seconds"] for r in d]), median([r["seconds"] for r in g])
    growth = max_growth(g)
    return {
        "id": wid, "title": title,
        "goal": "time ≤ 1.5x direct; RSS growth ≤ 64 MiB",
        "direct": {"seconds": dt, "mb_s": size / dt / 1e6},
        "gateway": {"seconds": gt, "mb_s": size / gt / 1e6, "growth_mib": growth,
                    "peak_mib": max_peak(g), "cpu_seconds": cpu_s(g),
                    "cpu_s_per_mib": cpu_s(g) / (size / MIB)},
        "ratio": gt / dt, "ratio_of": "time",
        "pass": gt <= 1.5 * dt and growth <= 64,
        "summary": f"{gt:.2f} s vs {dt:.2f} s, +{growth:.0f} MiB",
        "rounds": {"direct": d, "gateway": g},
    }


def wl_fanout(ctx: Ctx) -> list[dict[str, Any]]:
    mib = ctx.sizes.fanout
    lines = lines_for(mib)
    path = ctx.file(f"fanout-{mib}", lines, mib, model=FANOUT)
    direct, through = _upload_specs(ctx, path, FANOUT)
    d, g = alternate(
        ctx, f"upload_fanout_{mib}", ctx.sizes.big_rounds,
        lambda: _run_upload(ctx, direct, ctx.up.url + "/v1", UP_KEYS[0]),
        lambda: _run_upload(ctx, through, ctx.gw.url + "/v1", ctx.key))
    dt, gt = median([r["seconds"] for r in d]), median([r["seconds"] for r in g])
    growth = max_growth(g)
    return [_upload_goal({
        "id": f"upload_fanout_{mib}", "title": f"upload {mib} MiB to 2 deployments (fan-out)",
        "direct": {"seconds": dt},
        "gateway": {"seconds": gt, "growth_mib": growth, "peak_mib": max_peak(g),
                    "cpu_seconds": cpu_s(g),
                    "cpu_s_per_mib": cpu_s(g) / (os.path.getsize(path) / MIB)},
        "ratio": gt / dt, "ratio_of": "time (vs one direct upload)",
        "summary": f"{gt:.2f} s vs {dt:.2f} s, +{growth:.0f} MiB",
        "rounds": {"direct": d, "gateway": g},
    }, FANOUT_RATIO)]


def wl_content(ctx: Ctx) -> list[dict[str, Any]]:
    mib = ctx.sizes.content
    gw_id, native = gateway_batch(ctx, complete=False)
    _, batch = procs.http("POST", f"{ctx.up.url}/_bench/complete/{native}?output_bytes={mib * MIB}",
                          timeout=300)
    status, seen = procs.http("GET", f"{ctx.gw.url}/v1/batches/{gw_id}", ctx.key)
    assert status == 200 and seen["output_file_id"], seen
    direct = {"kind": "download", "base": ctx.up.url + "/v1", "key": UP_KEYS[0],
              "file_id": batch["output_file_id"]}
    through = {"kind": "download", "base": ctx.gw.url + "/v1", "key": ctx.key,
               "file_id": seen["output_file_id"]}
    d, g = alternate(ctx, f"content_{mib}", ctx.sizes.rounds, lambda: procs.client(direct),
                     lambda: procs.client(through))
    assert all(r["bytes"] == d[0]["bytes"] for r in d + g), (d, g)
    return [_transfer_result(
        f"content_{mib}", f"files.content of a {mib} MiB batch output", d[0]["bytes"], d, g,
    )]


def wl_flow(ctx: Ctx) -> list[dict[str, Any]]:
    n = ctx.sizes.flow_lines
    path = ctx.file(f"flow-{n}", n, max(1, n // 1024))
    direct = {"kind": "flow", "base": ctx.up.url + "/v1", "key": UP_KEYS[0], "file": path,
              "admin": ctx.up.url}
    through = {"kind": "flow", "base": ctx.gw.url + "/v1", "key": ctx.key, "file": path,
               "admin": ctx.up.url, "fields": ctx.fields(GROUP)}
    d, g = alternate(ctx, f"flow_{n}", ctx.sizes.rounds, lambda: procs.client(direct),
                     lambda: procs.client(through))
    dt, gt = median([r["seconds"] for r in d]), median([r["seconds"] for r in g])
    steps = {k: round(median([r["steps"][k] for r in g]) * 1000, 1) for k in g[0]["steps"]}
    dsteps = {k: round(median([r["steps"][k] for r in d]) * 1000, 1) for k in d[0]["steps"]}
    return [{
        "id": f"flow_{n}", "title": f"upload → create → poll → download, {n:,} lines",
        "goal": "gateway work ≤ 3x direct",
        "direct": {"seconds": dt, "steps_ms": dsteps},
        "gateway": {"seconds": gt, "steps_ms": steps, "growth_mib": max_growth(g),
                    "cpu_seconds": cpu_s(g)},
        "ratio": gt / dt, "ratio_of": "time (provider's wait excluded)",
        "pass": gt <= 3 * dt,
        "summary": f"{gt * 1000:.0f} ms vs {dt * 1000:.0f} ms",
        "rounds": {"direct": d, "gateway": g},
    }]


def wl_validation(ctx: Ctx) -> list[dict[str, Any]]:
    lines, mib = ctx.sizes.validation
    path = ctx.file(f"validation-{lines}", lines, mib)
    out = subprocess.run([procs.PY, "-m", "bench.validate", path, str(ctx.sizes.rounds)],
                         cwd=procs.ROOT, capture_output=True, check=True)
    r = json.loads(out.stdout)
    if ctx.profile:
        raw = os.path.join(ctx.tmp, "profile-validation.txt")
        profile.profile_command([procs.PY, "-m", "bench.validate", path, "1"], raw)
        os.makedirs(PROFILES, exist_ok=True)
        with open(os.path.join(PROFILES, "validation.txt"), "w") as f:
            f.write(profile.summarise(raw, "validation (Spooler, in-process)", main_only=False))
    return [{
        "id": "validation", "title": f"validation alone (Spooler), {lines:,} lines / {mib} MiB",
        "goal": "≥ 300 MB/s",
        "direct": {"mb_s": r["raw_mb_s"], "what": "the same chunks written to the spool file"},
        "gateway": {"mb_s": r["spooler_mb_s"], "seconds": r["spooler_seconds"],
                    # not part of the goal: the other per-byte step of an upload (one copy)
                    "rewrite_mb_s": r.get("rewrite_swap_mb_s") or r.get("rewrite_mb_s"),
                    "rewrite_parsing_mb_s": r.get("rewrite_mb_s")},
        "ratio": r["raw_mb_s"] / r["spooler_mb_s"], "ratio_of": "time (vs spooling alone)",
        "pass": r["spooler_mb_s"] >= 300,
        "summary": f"{r['spooler_mb_s']:.0f} MB/s (spool write alone {r['raw_mb_s']:.0f} MB/s)",
        "rounds": r,
    }]


def wl_startup(ctx: Ctx) -> list[dict[str, Any]]:
    """Stops the benchmark's gateway; restarts it on the same (migrated) database."""
    ctx.gw.stop()
    d_runs, g_runs = [], []
    for _ in range(ctx.sizes.startups):
        up = procs.upstream(procs.free_port(), UP_KEYS[0], ctx.tmp).start()
        try:
            t = up.wait_ready("/v1/batches?limit=1", UP_KEYS[0])
            time.sleep(1.0)
            d_runs.append({"seconds": t, "idle_rss_mib": procs.status(up.pid)["VmRSS"] / 1024})
        finally:
            up.stop()
        t = start_gateway(ctx)
        try:
            status, _ = procs.http("GET", ctx.gw.url + "/v1/batches?limit=1", ctx.key)
            assert status == 200
            time.sleep(1.0)
            g_runs.append({"seconds": t, "idle_rss_mib": procs.status(ctx.gw.pid)["VmRSS"] / 1024})
        finally:
            ctx.gw.stop()
    dt, gt = median([r["seconds"] for r in d_runs]), median([r["seconds"] for r in g_runs])
    drss, grss = (median([r["idle_rss_mib"] for r in d_runs]),
                  median([r["idle_rss_mib"] for r in g_runs]))
    ctx.gateway = None
    return [{
        "id": "startup", "title": "start-up to first answered request / idle RSS",
        "goal": "≤ 1.5 s / ≤ 80 MiB",
        "direct": {"seconds": dt, "idle_rss_mib": drss, "what": "the fake upstream's process"},
        "gateway": {"seconds": gt, "idle_rss_mib": grss},
        "ratio": gt / dt, "ratio_of": "start-up time",
        "pass": gt <= 1.5 and grss <= 80,
        "summary": f"{gt:.2f} s / {grss:.0f} MiB (upstream {dt:.2f} s / {drss:.0f} MiB)",
        "rounds": {"direct": d_runs, "gateway": g_runs},
    }]


WORKLOADS: list[tuple[str, Callable[[Ctx], list[dict[str, Any]]]]] = [
    ("retrieve", wl_retrieve),
    ("completed", wl_completed),
    ("upload", wl_uploads),
    ("fanout", wl_fanout),
    ("content", wl_content),
    ("flow", wl_flow),
    ("list", lambda ctx: lists.wl_list(ctx)),
    ("refresh", lambda ctx: refresh.wl_refresh(ctx)),
    ("split", lambda ctx: split.wl_split(ctx)),
    ("validation", wl_validation),
    ("startup", wl_startup),  # last: it stops the gateway
]


FRESH = {"upload"}  # workloads that start on a freshly started gateway (or LiteLLM)


# -- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
    mem = next((ln.split()[1] for ln in free.splitlines() if ln.startswith("Mem:")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg": loadavg()}


def code_version() -> dict[str, Any]:
    """The commit measured, and which core/adapter files differed from it."""
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=procs.ROOT, capture_output=True, text=True,
                             check=False)
        return out.stdout

    dirty = [ln[3:] for ln in git("status", "--porcelain", "gateway", "adapters").splitlines()
             if ln.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "modified": dirty}


def server_stack() -> dict[str, str | None]:
    """Versions of what uvicorn picks up when present (loop="auto", http="auto")."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "asyncpg", "aiosqlite"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def loadavg() -> float:
    """1-minute load average: other work on the machine skews every figure."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_db(args: argparse.Namespace, db: str, tmp: str, upstreams: list[procs.Proc],
           target: str = "gateway") -> dict[str, Any]:
    if target == "litellm":
        sizes = LITELLM_QUICK if args.quick else LITELLM_FULL
    else:
        sizes = QUICK if args.quick else FULL
    ctx = Ctx(sizes=sizes, tmp=tmp, db=db, upstreams=upstreams, profile=args.profile,
              target=target)
    drop = make_database(ctx)
    if not ctx.litellm:
        write_config(ctx)
    results: list[dict[str, Any]] = []
    label = target if ctx.litellm else db
    load_before = loadavg()
    if load_before > 1.0:
        print(f"[{label}] warning: load average {load_before:.1f} before the run; other work "
              "on this machine will skew the figures", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        start_gateway(ctx)
        mint_key(ctx)
        for name, fn in WORKLOADS:
            if args.only and not any(name.startswith(o) or o.startswith(name)
                                     for o in args.only):
                continue
            if ctx.litellm and name in LITELLM_SKIP:
                continue
            if name in FRESH and ctx.gateway is not None:
                # Memory-bound workloads start on a fresh process: a heap grown by earlier
                # workloads would absorb their growth and hide it.
                ctx.gateway.stop()
                ctx.gateway = None
            if ctx.gateway is None:
                start_gateway(ctx)
            w0 = time.monotonic()
            print(f"[{label}] {name} ...", file=sys.stderr, flush=True)
            for r in fn(ctx):
                r["wall_seconds"] = round(time.monotonic() - w0, 1)
                results.append(r)
                mark = "PASS" if r["pass"] else "FAIL"
                print(f"[{label}]   {mark} {r['id']}: {r['summary']} (ratio {r['ratio']:.2f})",
                      file=sys.stderr, flush=True)
    finally:
        if ctx.gateway is not None:
            ctx.gateway.stop()
        drop()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "db": db, "quick": args.quick, "target": target,
        "seconds": round(time.monotonic() - t0, 1),
        "loadavg_before": load_before, "loadavg_after": loadavg(), "code": code_version(),
        "stack": server_stack(),
        "client": "bench.load (asyncio streams, keep-alive; aiohttp for transfers)",
        "workloads": results,
    }


def save(name: str, res: dict[str, Any], merge: bool) -> str:
    """Write bench/results/<name>.json; with --only, replace just the workloads measured."""
    path = os.path.join(RESULTS, f"{name}.json")
    for w in res["workloads"]:
        w["date"] = res["date"]
    if merge and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        fresh = {w["id"] for w in res["workloads"]}
        match = ["retrieve_1", "retrieve_32", "retrieve_completed", "upload_fanout", "upload",
                 "content", "flow", "validation", "startup"]
        shown = [*match[:3], "upload", "upload_fanout", *match[5:]]

        def rank(w: dict[str, Any]) -> tuple[int, int]:
            prefix = next((p for p in match if w["id"].startswith(p)), None)
            digits = "".join(c for c in w["id"] if c.isdigit())
            return (shown.index(prefix) if prefix else len(shown), int(digits or 0))

        kept = [w for w in old["workloads"] if w["id"] not in fresh]
        res = {**res, "workloads": sorted(kept + res["workloads"], key=rank),
               "partial_update": True}
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    return os.path.relpath(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1-2 minute smoke")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both", "none"), default="both",
                        help="gateway storage; 'none' with --compare runs only LiteLLM")
    parser.add_argument("--only", default="", help="comma-separated workload names: "
                        + ", ".join(n for n, _ in WORKLOADS))
    parser.add_argument("--compare", choices=("litellm",), help="also measure LiteLLM's proxy")
    parser.add_argument("--profile", action="store_true",
                        help="one extra gateway round per workload under py-spy; summaries in "
                        "bench/results/profiles/")
    parser.add_argument("--no-save", action="store_true", help="print, write no results")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    args.only = [o.strip() for o in args.only.split(",") if o.strip()]
    dbs = {"both": ["sqlite", "postgresql"], "none": []}.get(args.db, [args.db])

    t0 = time.monotonic()
    if args.profile and not args.only and os.path.isdir(PROFILES):
        for name in os.listdir(PROFILES):
            if name.endswith(".txt"):
                os.remove(os.path.join(PROFILES, name))
    tmp = tempfile.mkdtemp(prefix="gateway-bench-")
    os.makedirs(RESULTS, exist_ok=True)
    upstreams = [procs.upstream(procs.free_port(), k, tmp).start() for k in UP_KEYS]
    results: list[tuple[str, dict[str, Any]]] = []
    try:
        for up, key in zip(upstreams, UP_KEYS, strict=True):
            up.wait_ready("/v1/batches?limit=1", key)
        for db in dbs:
            results.append((db, run_db(args, db, tmp, upstreams)))
        if args.compare == "litellm":
            from bench import litellm

            res = run_db(args, "none", tmp, upstreams, target="litellm")
            res["skipped"] = LITELLM_SKIP
            res["litellm_version"] = litellm.version()
            results.append(("litellm", res))
    finally:
        for up in upstreams:
            up.stop()
        if args.keep_temp:
            print(f"temp data kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"benchmark took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    for _, res in results:
        print(report.table(res))
    if args.no_save:
        return 0
    written = [save(name + ("-quick" if args.quick else ""), res, merge=bool(args.only))
               for name, res in results]
    if args.quick:
        # Smoke runs never replace the published table and chart.
        print("wrote " + ", ".join(written), file=sys.stderr)
    elif written:
        report.update()
        print("wrote " + ", ".join(written) + ", BENCHMARKS.md, bench/results/ratios.png",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
