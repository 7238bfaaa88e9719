"""Batches written straight into the gateway's database, and a gateway process of a workload's
own: what the list and refresh workloads need that the API would take minutes to build.

The rows are what `batches.create` writes (a gateway batch on a deployment, with its provider
batch id) plus their place in the background refresh's schedule, for batches the bench
upstream made with `/_bench/seed`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

from bench import procs

BATCH_COLUMNS = ("id", "owner", "deployment_id", "model_group", "provider_batch_id",
                 "input_file_id", "created_at", "status", "terminal", "object", "updated_at")


def seed_upstream(up: procs.Proc, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:  # in slices: one answer stays small
        _, body = procs.http("POST", f"{up.url}/_bench/seed?n={min(2000, n - len(ids))}",
                             timeout=120)
        ids += body["ids"]
    return ids


def batch_object(batch_id: str, group: str, status: str) -> dict[str, Any]:
    now = int(time.time())
    done = status == "completed"
    return {
        "id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "model": group,
        "errors": None, "input_file_id": "file-" + secrets.token_hex(11),
        "completion_window": "24h", "status": status,
        "output_file_id": "file-" + secrets.token_hex(11) if done else None,
        "error_file_id": None, "created_at": now, "in_progress_at": now,
        "expires_at": now + 86_400, "finalizing_at": now if done else None,
        "completed_at": now if done else None, "failed_at": None, "expired_at": None,
        "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 10, "completed": 10 if done else 3, "failed": 0},
        "metadata": {"bench": "yes"}, "usage": None,
    }


def insert_batches(database_url: str, rows: list[tuple[str, str, str, str, str]]) -> list[str]:
    """Rows of (owner, deployment id, model group, provider batch id, status), oldest first;
    returns their gateway ids. Unfinished ones are due for the background refresh now."""
    import msgspec
    import sqlalchemy as sa

    from gateway.store import Store
    from gateway.store.schema import batches, leases

    ids = ["batch_" + secrets.token_hex(11) for _ in rows]

    async def write() -> None:
        store = Store(database_url)
        await store.db.connect()  # the gateway migrated it already
        try:
            now = time.time()
            values = [{
                "id": bid, "owner": owner, "deployment_id": dep, "model_group": group,
                "provider_batch_id": native, "input_file_id": "file-bench",
                "created_at": int(now), "status": status, "terminal": status == "completed",
                "object": msgspec.json.encode(batch_object(bid, group, status)).decode(),
                "updated_at": now,
            } for bid, (owner, dep, group, native, status) in zip(ids, rows, strict=True)]
            stmt = batches.insert().values({c: sa.bindparam(c) for c in BATCH_COLUMNS})
            lease = leases.insert().values(batch_id=sa.bindparam("batch_id"), holder="",
                                           lease_until=sa.bindparam("lease_until"))
            for i in range(0, len(values), 1000):
                async with store.db.transaction():
                    await store.db.execute_many(stmt, values[i:i + 1000])
                    await store.db.execute_many(lease, [
                        {"batch_id": v["id"], "lease_until": now}
                        for v in values[i:i + 1000] if not v["terminal"]])
        finally:
            await store.disconnect()

    asyncio.run(write())
    return ids


def deployment(group: str, base: str, key: str, dep_id: str) -> str:
    return (f"  - model_name: {group}\n    litellm_params:\n      model: openai/gpt-4o-mini\n"
            f"      api_base: {base}/v1\n      api_key: {key}\n      timeout: 300\n"
            f"    model_info:\n      mode: batch\n      id: {dep_id}\n")


def own_gateway(tmp: str, name: str, database_url: str, master: str, entries: list[str],
                settings: dict[str, Any]) -> procs.Proc:
    """A gateway process of the workload's own (its deployments, its poll interval), on the
    run's database; started and ready."""
    path = os.path.join(tmp, f"gateway-{name}.yaml")
    with open(path, "w") as f:
        f.write("model_list:\n" + "".join(entries))
        f.write(f"general_settings:\n  master_key: {master}\n  database_url: {database_url}\n")
        for k, v in settings.items():
            f.write(f"  {k}: {v}\n")
    gw = procs.gateway(procs.free_port(), path, tmp, {}).start()
    gw.wait_ready("/v1/batches?limit=1", master)
    return gw
