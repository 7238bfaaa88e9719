"""The background refresh at scale: N unfinished batches on 20 deployments (over the two bench
upstreams), all due at once, refreshed by one gateway's poller for a few `batch_poll_interval`s.

Measured at the upstreams (every GET of a batch is timed there): how many batches were polled
in the first interval and in each after, the most calls one batch got in one interval, the
longest a batch went unpolled (lag), how even the calls are over the interval (the busiest
tenth of the interval holds what share: 10 % is perfectly even), and the gateway's CPU seconds.
Direct: the same N GETs sent by a minimal client, 32 at a time (the work the polls are).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

from bench import procs, seeding

GROUP = "bench-refresh"
DEPLOYMENTS = 20
OBSERVED = 3  # intervals


def _direct(ups: list[procs.Proc], natives: list[list[str]],
            keys: tuple[str, ...]) -> dict[str, Any]:
    from bench.load import Conn

    async def go() -> dict[str, Any]:
        todo = [list(ids) for ids in natives]  # per upstream
        conns = []
        for i in range(32):
            url = urlsplit(ups[i % 2].url)
            conns.append((i % 2, Conn(url.hostname or "127.0.0.1", url.port or 80)))
        cpu0, t0 = time.process_time(), time.perf_counter()
        errors = 0

        async def worker(side: int, conn: Conn) -> None:
            nonlocal errors
            host = ups[side].url.split("//")[1]
            while todo[side]:
                native = todo[side].pop()
                raw = (f"GET /v1/batches/{native} HTTP/1.1\r\nHost: {host}\r\n"
                       f"Authorization: Bearer {keys[side]}\r\n\r\n").encode()
                status, _ = await conn.request(raw)
                errors += status != 200

        await asyncio.gather(*(worker(side, c) for side, c in conns))
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
                "errors": errors}

    return asyncio.run(go())


def _analyse(polls: dict[str, list[float]], natives: set[str], interval: float,
             start: float) -> dict[str, Any]:
    times = {n: sorted(t for t in polls.get(n, []) if t >= start) for n in natives}
    first = min((ts[0] for ts in times.values() if ts), default=start)
    end = first + OBSERVED * interval
    windows = [[t for t in ts if t < end] for ts in times.values()]
    per_interval = [sum(1 for ts in windows for t in ts if first + k * interval <= t
                        < first + (k + 1) * interval) for k in range(OBSERVED)]
    most = max((sum(1 for t in ts if first + k * interval <= t < first + (k + 1) * interval)
                for ts in windows for k in range(OBSERVED)), default=0)
    gaps = [b - a for ts in windows for a, b in itertools.pairwise(ts)]
    unpolled = sum(1 for ts in windows if not ts)
    # Lag: from the first poll of the run to each batch's first, and between its polls.
    lag = max([ts[0] - first for ts in windows if ts] + gaps, default=float("nan"))
    tenths = [0] * 10
    for ts in windows:
        for t in ts:
            tenths[min(int((t - first) % interval / interval * 10), 9)] += 1
    total = sum(tenths)
    if os.environ.get("BENCH_REFRESH_DUMP"):
        with open(os.environ["BENCH_REFRESH_DUMP"], "w") as f:
            json.dump({"first": first, "times": times}, f)
    return {
        "batches_polled_per_interval": per_interval,
        "most_calls_one_batch_one_interval": most,
        "never_polled": unpolled,
        "max_lag_s": round(lag, 2),
        "min_gap_s": round(min(gaps), 3) if gaps else None,
        "busiest_tenth_share": round(max(tenths) / total, 3) if total else None,
        "calls": total,
    }


def wl_refresh(ctx: Any) -> list[dict[str, Any]]:
    from bench import run

    n, interval = (2_000, 5.0) if ctx.sizes.rounds < 3 else (10_000, 30.0)
    ups = ctx.upstreams
    entries = [seeding.deployment(GROUP, ups[i % 2].url, run.UP_KEYS[i % 2], f"refresh-{i:02d}")
               for i in range(DEPLOYMENTS)]
    natives = [seeding.seed_upstream(up, n // 2) for up in ups]
    rows = [("key_bench_refresh", f"refresh-{i % DEPLOYMENTS:02d}", GROUP, natives[i % 2][i // 2],
             "in_progress") for i in range(n)]
    seeding.insert_batches(ctx.database_url, rows)
    direct = _direct(ups, natives, run.UP_KEYS)
    for up in ups:
        procs.http("GET", up.url + "/_bench/polls?reset=1", timeout=60)
    start = time.time()
    gw = seeding.own_gateway(ctx.tmp, f"refresh-{ctx.db}", ctx.database_url, run.MASTER,
                             entries, {"batch_poll_interval": interval})
    try:
        with procs.MemoryWatch(gw.pid) as watch:
            time.sleep((OBSERVED + 1) * interval + 2)  # first pass one interval after start
        polls: dict[str, list[float]] = {}
        for up in ups:
            _, got = procs.http("GET", up.url + "/_bench/polls?reset=1", timeout=60)
            polls.update(got)
    finally:
        gw.stop()
    a = _analyse(polls, {x for ids in natives for x in ids}, interval, start)
    mem = watch.result()
    # CPU over the observed intervals (the first, idle one included: it is small).
    cpu_per_interval = mem["cpu_seconds"] / OBSERVED
    per_poll_ms = mem["cpu_seconds"] / max(a["calls"], 1) * 1000
    direct_ms = direct["cpu_seconds"] / n * 1000
    return [{
        "id": "refresh", "title": f"background refresh, {n:,} unfinished batches on "
                                  f"{DEPLOYMENTS} deployments, interval {interval:.0f} s",
        "goal": "every batch polled once per interval (+10 %), never twice within one, "
                "spread out",
        "direct": {"seconds": direct["seconds"], "cpu_ms_per_get": direct_ms,
                   "what": f"{n:,} GETs, 32 at a time, by a minimal client",
                   "text": f"{n:,} GETs in {direct['seconds']:.2f} s, "
                           f"{direct_ms:.3f} ms CPU each"},
        "gateway": {**a, "cpu_seconds_per_interval": round(cpu_per_interval, 2),
                    "cpu_ms_per_poll": round(per_poll_ms, 3), "growth_mib": mem["growth_mib"],
                    "text": f"polled per interval {a['batches_polled_per_interval']} "
                            f"({a['never_polled']} never), "
                            f"≤ {a['most_calls_one_batch_one_interval']} call/batch/interval, "
                            f"max lag {a['max_lag_s']} s, min gap {a['min_gap_s']} s, "
                            "busiest tenth "
                            f"{a['busiest_tenth_share']}, {cpu_per_interval:.1f} CPU s/interval "
                            f"({per_poll_ms:.2f} ms/poll)"},
        "ratio": per_poll_ms / direct_ms, "ratio_of": "CPU per poll (vs a minimal client GET)",
        # Polls at least an interval apart (10 ms of clock slack), each batch polled at least
        # every interval and a tenth (the poller's ticks), none left out, and even.
        "pass": a["never_polled"] == 0 and (a["min_gap_s"] or 0) >= interval - 0.01
                and a["max_lag_s"] <= interval * 1.1
                and (a["busiest_tenth_share"] or 1) <= 0.2,
        "summary": f"polled per interval {a['batches_polled_per_interval']} of {n:,}, "
                   f"max {a['most_calls_one_batch_one_interval']} call/batch/interval, "
                   f"max lag {a['max_lag_s']} s, busiest tenth {a['busiest_tenth_share']}, "
                   f"{cpu_per_interval:.1f} CPU s/interval",
        "rounds": {"direct": [direct], "gateway": [mem]},
    }]
