"""The provider of a deployment whose batches the gateway runs itself.

It keeps the ordinary contract, so placement, failover, tracking, result files, usage, webhooks
and content work as for any provider: `submit` records a run (the engine in this or another
instance sends its lines), `poll` reads it, `cancel` marks it, `results` opens the result files
the engine wrote to the gateway's file store. Built by the core with the store and the file
store, which an adapter never gets.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable

from gateway.errors import UpstreamNotFound
from gateway.filestore import FileStore, KeptFileMissing
from gateway.provider import Capabilities, Deployment, Provider, ProviderContext, Submission
from gateway.selfrun.params import GatewayRunParams
from gateway.store.runs import RunRow, Runs
from gateway.types import TIMES, Batch, BatchError, RequestCounts, ResultFile, ResultKind, Usage

_WINDOW = re.compile(r"(\d+)h")


def window_seconds(window: str) -> int:
    """`completion_window` ("24h") in seconds."""
    m = _WINDOW.fullmatch(window)
    return int(m.group(1)) * 3600 if m else 86_400


def result_key(run_id: str, which: ResultKind) -> str:
    """Where a run's output or error file is kept."""
    return f"runs/{run_id}/{'output' if which == 'output' else 'errors'}.jsonl"


def snapshot(run: RunRow) -> Batch:
    """A run as the contract's Batch."""
    usage = None
    if run.total_tokens is not None:
        usage = Usage(input_tokens=run.input_tokens, output_tokens=run.output_tokens,
                      total_tokens=run.total_tokens)
    ended = run.completed_at or run.cancelled_at or run.expired_at or run.failed_at
    return Batch(
        id=run.id,
        status=run.status,  # type: ignore[arg-type]  # written from types.Status only
        request_counts=RequestCounts(total=run.total, completed=run.completed,
                                     failed=run.failed),
        usage=usage,
        errors=[BatchError(code=run.error_code, message=run.error_message)]
        if run.error_code else None,
        output=ResultFile(bytes=run.output_bytes, created_at=ended)
        if run.output_bytes is not None else None,
        error=ResultFile(bytes=run.error_bytes, created_at=ended)
        if run.error_bytes is not None else None,
        **{name: getattr(run, name) for name in TIMES},
    )


class GatewayRunProvider(Provider):
    name = "gateway_run"  # never a config prefix: chosen by `runs_in_gateway`
    Params = GatewayRunParams

    def __init__(self, deployment: Deployment, ctx: ProviderContext, runs: Runs,
                 files: FileStore) -> None:
        super().__init__(deployment, ctx)
        assert isinstance(deployment.params, GatewayRunParams)
        self.params: GatewayRunParams = deployment.params
        self.runs = runs
        self.files = files
        # Set by the engine: a new or cancelled run is looked at now, not at its next round.
        self.on_change: Callable[[], None] = lambda: None

    def capabilities(self) -> Capabilities:
        # The gateway's own limits (max_requests_per_file, max_file_size_mb) are the bounds.
        return Capabilities(input="inline", max_requests=10_000_000, max_bytes=1 << 40)

    async def submit(self, job: Submission) -> Batch:
        now = int(time.time())
        run = RunRow(
            id="run_" + secrets.token_hex(12),
            batch_id=job.batch_id,
            deployment_id=self.deployment.id,
            file_id=job.file_id,
            endpoint=job.endpoint,
            first_line=1,
            total=job.request_count,
            status="in_progress",  # validated at upload: nothing left to validate
            created_at=now,
            in_progress_at=now,
            expires_at=now + window_seconds(job.completion_window),
        )
        await self.runs.insert(run)
        self.on_change()
        return snapshot(run)

    async def _run(self, run_id: str) -> RunRow:
        run = await self.runs.get(run_id)
        if run is None or run.deployment_id != self.deployment.id:
            raise UpstreamNotFound(f"no run {run_id}")
        return run

    async def poll(self, batch_id: str) -> Batch:
        return snapshot(await self._run(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        await self._run(batch_id)
        run = await self.runs.cancel(batch_id)
        self.on_change()
        return snapshot(run or await self._run(batch_id))

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        run = await self._run(batch_id)
        size = run.output_bytes if which == "output" else run.error_bytes
        if size is None:
            raise UpstreamNotFound(f"run {batch_id} has no {which} file")
        try:
            return await self.files.open(result_key(batch_id, which))
        except KeptFileMissing as e:
            raise UpstreamNotFound(f"the {which} file of run {batch_id} is missing") from e

    async def delete_results(self, batch_id: str, which: ResultKind) -> None:
        await self.files.delete(result_key(batch_id, which))
