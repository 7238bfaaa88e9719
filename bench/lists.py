"""`batches.list` of 100: latency and the upstream calls it causes, with the page all unfinished
and all finished, against a list of 100 on the upstream itself.

Its own gateway process (`batch_poll_interval: 0`, a deployment no other gateway of the run
polls), so every upstream call counted at the bench upstream during a measurement is the list's.
"""

from __future__ import annotations

from typing import Any

from bench import procs, seeding

GROUP = "bench-list"
DEPLOYMENT = "list-a"


def wl_list(ctx: Any) -> list[dict[str, Any]]:
    from bench import run

    s = ctx.sizes
    calls = 200 if s.rounds < 3 else 500
    gw = seeding.own_gateway(ctx.tmp, f"list-{ctx.db}", ctx.database_url, run.MASTER,
                             [seeding.deployment(GROUP, ctx.up.url, run.UP_KEYS[0], DEPLOYMENT)],
                             {"batch_poll_interval": 0})
    main, ctx.gateway = ctx.gateway, gw  # `alternate` watches this process
    try:
        status, key = procs.http("POST", gw.url + "/key/generate", run.MASTER,
                                 {"models": [GROUP], "key_alias": f"bench-list-{ctx.db}"})
        assert status == 200, key
        natives = seeding.seed_upstream(ctx.up, 100)
        rows = [(key["token"], DEPLOYMENT, GROUP, "batch_done", "completed")] * 100
        rows += [(key["token"], DEPLOYMENT, GROUP, n, "in_progress") for n in natives]
        ids = seeding.insert_batches(ctx.database_url, rows)
        newest_finished = ids[99]
        direct = {"kind": "get", "url": f"{ctx.up.url}/v1/batches?limit=100",
                  "headers": run.auth(run.UP_KEYS[0]), "n": calls, "concurrency": 1,
                  "warmup": 10}
        out = []
        for wid, title, query in (
            ("list_unfinished", "batches.list, 100 unfinished batches", "limit=100"),
            ("list_finished", "batches.list, 100 finished batches",
             f"limit=100&after={ids[100]}"),
        ):
            through = {**direct, "url": f"{gw.url}/v1/batches?{query}",
                       "headers": run.auth(key["key"])}
            upstream: list[int] = []

            def via_gateway(spec: dict[str, Any] = through,
                            upstream: list[int] = upstream) -> dict[str, Any]:
                before = run.up_stats(ctx)
                r = procs.client(spec)
                upstream.append(run.up_stats(ctx) - before)
                return r

            status, page = procs.http("GET", through["url"], key["key"])
            assert status == 200 and len(page["data"]) == 100, page
            assert (page["data"][0]["id"] == newest_finished) == (wid == "list_finished")
            d, g = run.alternate(ctx, wid, s.rounds, lambda: procs.client(direct), via_gateway)
            dp50, gp50 = run.median([r["p50_ms"] for r in d]), run.median([r["p50_ms"] for r in g])
            gp99 = run.median([r["p99_ms"] for r in g])
            per_call = sum(upstream) / sum(r["calls"] + 10 for r in g)  # warm-up calls too
            errors = sum(r["errors"] for r in g)
            out.append({
                "id": wid, "title": title, "goal": "p50 ≤ 5 ms, 0 upstream calls",
                "direct": {"p50_ms": dp50, "p99_ms": run.median([r["p99_ms"] for r in d]),
                           "what": "GET /v1/batches?limit=100 on the upstream",
                           "text": f"p50 {dp50:.2f} ms, p99 "
                                   f"{run.median([r['p99_ms'] for r in d]):.2f} ms"},
                "gateway": {"p50_ms": gp50, "p99_ms": gp99, "errors": errors,
                            "upstream_calls_per_list": per_call,
                            "cpu_ms_per_call": run.cpu_ms_per_call(g),
                            "text": f"p50 {gp50:.2f} ms, p99 {gp99:.2f} ms, "
                                    f"{per_call:.0f} upstream calls per list"},
                "ratio": gp50 / dp50, "ratio_of": "p50 latency",
                "pass": gp50 <= 5 and sum(upstream) == 0 and errors == 0,
                "summary": f"p50 {gp50:.2f} ms, p99 {gp99:.2f} ms (direct {dp50:.2f} ms), "
                           f"{per_call:.0f} upstream calls per list",
                "rounds": {"direct": d, "gateway": g},
            })
        return out
    finally:
        ctx.gateway = main
        gw.stop()
