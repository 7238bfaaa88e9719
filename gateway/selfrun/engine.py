"""The background engine of gateway-run batches, one per instance.

Each round it looks for deployments that have unfinished runs and takes the lease on each it
can (renewing the ones it holds). The holder of a deployment runs all its runs, through one
`Limiter`: the limits are the deployment's, so one holder is what keeps the whole fleet within
them, while different deployments run on different instances. A holder that dies stops
renewing; once its lease runs out another instance takes the deployment and resumes every run
from its checkpoint. Shutting down gives the leases back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from gateway import metrics
from gateway.runtime import Gateway
from gateway.selfrun.limits import Limiter
from gateway.selfrun.provider import GatewayRunProvider
from gateway.selfrun.run import Run
from gateway.selfrun.sender import Sender

log = logging.getLogger("gateway.selfrun")

DEFAULT_LEASE_SECONDS = 30.0


class DeploymentRunner:
    """The runs of one deployment this instance holds."""

    def __init__(self, gw: Gateway, provider: GatewayRunProvider, holder: str,
                 ttl: float) -> None:
        self.gw = gw
        self.provider = provider
        self.holder = holder
        self.ttl = ttl
        p = provider.params
        self.sender = Sender(provider.http, p,
                             Limiter(p.max_parallel_requests, p.rpm, p.tpm,
                                     p.limit_window_seconds))
        self.running: dict[str, tuple[Run, asyncio.Task[None]]] = {}

    async def refresh(self) -> None:
        """Start the runs not running yet; tell the running ones their status."""
        for run_id, (_, task) in list(self.running.items()):
            if task.done():
                del self.running[run_id]
                if not task.cancelled() and task.exception() is not None:
                    log.error("run %s stopped; it resumes from its checkpoint",
                              run_id, exc_info=task.exception())
        for row in await self.gw.store.runs.unfinished(self.provider.deployment.id):
            if row.id in self.running:
                self.running[row.id][0].notice(row.status, row.expires_at)
                continue
            run = Run(self.gw, self.provider, self.sender, row, self.holder, self.ttl)
            self.running[row.id] = (run, asyncio.create_task(run()))

    def idle(self) -> bool:
        return all(task.done() for _, task in self.running.values())

    async def stop(self) -> None:
        tasks = [task for _, task in self.running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()


class Engine:
    def __init__(self, gw: Gateway, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.gw = gw
        self.ttl = lease_seconds
        # Renewed a few times per lease; at most a second apart, so new runs start soon.
        self.interval = min(lease_seconds / 3, 1.0)
        self.holder = secrets.token_hex(8)
        self.wake = asyncio.Event()
        self.runners: dict[str, DeploymentRunner] = {}
        self.providers = {d: p for d, p in gw.providers.items()
                          if isinstance(p, GatewayRunProvider)}
        for p in self.providers.values():
            p.on_change = self.wake.set

    async def round(self) -> None:
        runs = self.gw.store.runs
        busy = await runs.deployments_with_work(list(self.providers))
        for dep_id, provider in self.providers.items():
            runner = self.runners.get(dep_id)
            if dep_id not in busy and (runner is None or runner.idle()):
                if runner is not None:
                    del self.runners[dep_id]
                    await runs.release(dep_id, self.holder)
                continue
            if not await runs.claim(dep_id, self.holder, self.ttl):
                if runner is not None:
                    log.warning("deployment %s: lease lost, its runs move on", dep_id)
                    del self.runners[dep_id]
                    await runner.stop()
                continue
            if runner is None:
                runner = self.runners[dep_id] = DeploymentRunner(self.gw, provider,
                                                                 self.holder, self.ttl)
            await runner.refresh()

    async def run(self) -> None:
        try:
            while True:
                self.wake.clear()
                try:
                    await self.round()
                except Exception:
                    log.exception("gateway-run batches: round failed")
                else:
                    metrics.background_succeeded("gateway-run batches")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.interval)
        finally:
            await self.close()

    async def close(self) -> None:
        for dep_id, runner in list(self.runners.items()):
            await runner.stop()
            with contextlib.suppress(Exception):
                await self.gw.store.runs.release(dep_id, self.holder)
        self.runners.clear()
