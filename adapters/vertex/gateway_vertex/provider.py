"""The Vertex AI provider: OpenAI batch files as Gemini JSONL objects on GCS, batches as
`batchPredictionJobs`, results turned back into OpenAI output and error lines.

Native ids: an input copy is its object URI (`gs://bucket/prefix/in/<file>-<hex>.jsonl`); a
batch is the job's resource name. A job's successes and failures are read from the prediction
files in its output directory (`outputInfo.gcsOutputDirectory`), split by status.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar

import aiohttp
import msgspec

from gateway import (
    CHAT_COMPLETIONS,
    Batch,
    BatchError,
    Capabilities,
    Deployment,
    MapLines,
    Provider,
    ProviderContext,
    ProviderParams,
    RequestCounts,
    ResultFile,
    ResultKind,
    Status,
    Submission,
    Unsuitable,
    UpstreamNotFound,
    UpstreamUnavailable,
    lines,
)
from gateway_vertex import gcs
from gateway_vertex.auth import TokenSource, load_service_account, signer_for
from gateway_vertex.gemini_output import convert, unix_seconds
from gateway_vertex.gemini_request import to_gemini
from gateway_vertex.transport import GoogleApi, scrub

log = logging.getLogger("gateway.vertex")

STATUS: dict[str, Status] = {
    "JOB_STATE_QUEUED": "validating",
    "JOB_STATE_PENDING": "validating",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_PAUSED": "in_progress",
    "JOB_STATE_UPDATING": "in_progress",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_UNSPECIFIED": "failed",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
_ENDED_AT = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at",
             "expired": "expired_at"}
DEFAULT_PREFIX = "batch-gateway"
# Bucket names: 3-63 characters of a-z 0-9 - _ (up to 222 with dots), starting and ending
# with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_FLUSH_AT = 256 << 10
_decode = msgspec.json.decode
_encode = msgspec.json.encode


class VertexParams(ProviderParams, kw_only=True):
    """`litellm_params` of a `vertex_ai/<model>` entry, checked when the config loads.

    After conversion `vertex_credentials` is the loaded service-account key (a mapping) and
    `vertex_project` is set: the key file is read and checked here, before anything opens.
    """

    # A path to, or the JSON of, a service-account key; default GOOGLE_APPLICATION_CREDENTIALS.
    vertex_credentials: str | dict[str, Any] | None = None
    vertex_project: str | None = None  # default: the key's project_id
    vertex_location: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]+$")] = "us-central1"
    # Not used by Vertex AI (its paths carry the version). Declared because it is part of
    # `identity`, in the position that keeps deployment ids what they were before v2.
    api_version: str | None = None
    gcs_bucket_name: str  # "bucket" or "bucket/some/path", `gs://` optional
    gcs_prefix: str = DEFAULT_PREFIX  # the gateway writes only under it
    gcs_api_base: str | None = None  # else STORAGE_EMULATOR_HOST, else GCS
    # Resumable-upload chunk; rounded down to a multiple of 256 KiB (at least 256 KiB).
    gcs_upload_chunk_size: Annotated[int, msgspec.Meta(gt=0)] = gcs.DEFAULT_CHUNK
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    max_requests_per_file: Annotated[int, msgspec.Meta(ge=1)] = 200_000

    def __post_init__(self) -> None:
        key = self.vertex_credentials or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if not key:
            raise ValueError("vertex_credentials: required, a service-account key (path or "
                             "JSON), or GOOGLE_APPLICATION_CREDENTIALS in the environment")
        try:
            info = load_service_account(key)
            signer_for(info)
        except ValueError as e:
            raise ValueError(f"vertex_credentials: {e}") from e
        self.vertex_credentials = info
        if not self.vertex_project:
            project = info.get("project_id")
            if not isinstance(project, str) or not project:
                raise ValueError("vertex_project: required (the service-account key names no "
                                 "project_id)")
            self.vertex_project = project
        bucket, _ = bucket_and_path(self.gcs_bucket_name)
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"gcs_bucket_name: {bucket!r} is not a GCS bucket name (required, "
                             "the bucket for batch files, optionally followed by /path)")


def bucket_and_path(value: str) -> tuple[str, str]:
    """`gs://bucket/some/path/` → ("bucket", "some/path")."""
    bucket, _, path = value.strip().removeprefix("gs://").strip("/").partition("/")
    return bucket, path.strip("/")


class VertexProvider(Provider):
    name = "vertex_ai"
    Params: ClassVar[type[ProviderParams]] = VertexParams
    identity: ClassVar[tuple[str, ...]] = (
        "model", "api_base", "api_version", "vertex_project", "vertex_location")

    def __init__(self, deployment: Deployment, ctx: ProviderContext) -> None:
        super().__init__(deployment, ctx)
        params = deployment.params
        assert isinstance(params, VertexParams)
        assert isinstance(params.vertex_credentials, dict)  # loaded by VertexParams
        self.params = params
        self.project = str(params.vertex_project)
        self.location = params.vertex_location
        self.bucket, path = bucket_and_path(params.gcs_bucket_name)
        self.prefix = "/".join(p for p in (path, params.gcs_prefix.strip("/")) if p)
        self.tokens = TokenSource(params.vertex_credentials, self.http,
                                  aiohttp.ClientTimeout(total=params.timeout))
        self.api = GoogleApi(self.http, self.tokens, params.timeout)
        base, auth = gcs.endpoint(params.gcs_api_base)
        self.gcs = gcs.Gcs(self.api, base, auth, params.gcs_upload_chunk_size)
        host = "aiplatform.googleapis.com" if self.location == "global" \
            else f"{self.location}-aiplatform.googleapis.com"
        api_base = (params.api_base or f"https://{host}").rstrip("/")
        self.api_base = api_base.removesuffix("/v1")  # paths below carry the version
        model = deployment.model
        self.model_path = model if "/" in model else f"publishers/google/models/{model}"

    def capabilities(self) -> Capabilities:
        return Capabilities(input="file", endpoints=frozenset({CHAT_COMPLETIONS}),
                            max_requests=self.params.max_requests_per_file)

    def rewrite(self) -> MapLines:
        return MapLines(functools.partial(to_gemini, model=self.deployment.model))

    # -- inputs --------------------------------------------------------------------------------

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        # Named after the gateway's file, plus a random part: deployments may share a bucket
        # and prefix, each with its own copy.
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name.removesuffix(".jsonl"))[:100]
        path = gcs.GcsPath(self.bucket, f"{self.prefix}/in/{stem}-{uuid.uuid4().hex}.jsonl")
        try:
            await self.gcs.upload(path, content)
        except UpstreamNotFound as e:
            # Only the bucket can be missing here: a deployment misconfigured, not a client error.
            raise UpstreamUnavailable(f"GCS bucket {self.bucket!r}: {e.detail}",
                                      status=404) from e
        return str(path)

    async def delete_input(self, input_id: str) -> None:
        await self.gcs.delete(gcs.GcsPath.parse(input_id))

    # -- batches -------------------------------------------------------------------------------

    def _job_url(self, batch_id: str) -> str:
        name = batch_id if batch_id.startswith("projects/") \
            else f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{batch_id}"
        return f"{self.api_base}/v1/{name}"

    async def _job(self, batch_id: str) -> dict[str, Any]:
        job = await self.api.call("GET", self._job_url(batch_id))
        return _checked(job)

    async def submit(self, job: Submission) -> Batch:
        if job.endpoint != CHAT_COMPLETIONS:
            raise Unsuitable(f"Vertex AI Gemini batches run only {CHAT_COMPLETIONS}.")
        if job.input_id is None:
            raise UpstreamNotFound("no input copy on this deployment")
        path = gcs.GcsPath.parse(job.input_id)
        await self.gcs.get(path)  # a missing copy fails here, before a job exists
        body = {
            "displayName": f"gateway-{job.batch_id}",
            "model": self.model_path,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [str(path)]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {
                    "outputUriPrefix": f"gs://{self.bucket}/{self.prefix}/out/{job.batch_id}"},
            },
        }
        url = f"{self.api_base}/v1/projects/{self.project}/locations/{self.location}" \
              "/batchPredictionJobs"
        return self._batch(_checked(await self.api.call("POST", url, json=body)))

    async def poll(self, batch_id: str) -> Batch:
        return self._batch(await self._job(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        await self.api.call("POST", self._job_url(batch_id) + ":cancel", json={})
        return await self.poll(batch_id)  # cancel answers `{}`, not the job

    def _batch(self, job: dict[str, Any]) -> Batch:
        status = STATUS.get(str(job.get("state")), "failed")
        stats = job.get("completionStats")
        done = _count(stats, "successfulCount")
        failed = _count(stats, "failedCount")
        batch = Batch(
            id=job["name"],
            status=status,
            # A job does not know how many requests it was given: the core fills the total.
            request_counts=RequestCounts(total=0, completed=done, failed=failed),
            in_progress_at=unix_seconds(job.get("startTime")),
        )
        if status in _ENDED_AT:
            ended = unix_seconds(job.get("endTime"))
            setattr(batch, _ENDED_AT[status], ended)
            if _output_directory(job) is not None:
                # Sizes are unknown without converting every prediction.
                if done or stats is None:
                    batch.output = ResultFile(bytes=None, created_at=ended)
                if failed:
                    batch.error = ResultFile(bytes=None, created_at=ended)
        problems = [job["error"]] if isinstance(job.get("error"), dict) else []
        problems += [p for p in job.get("partialFailures") or [] if isinstance(p, dict)]
        if status in ("failed", "expired") and problems:
            batch.errors = [BatchError(code="vertex_job_failed",
                                       message=scrub(str(p.get("message") or "")))
                            for p in problems]
        return batch

    # -- results -------------------------------------------------------------------------------

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        directory = _output_directory(await self._job(batch_id))
        if directory is None:
            raise UpstreamNotFound("the job has no output directory")
        objects = await self._predictions(directory)
        # Open the first file now so that a failure is raised before any chunk.
        first = await self.gcs.open(gcs.GcsPath(directory.bucket, objects[0]))
        return self._results(first, objects[1:], directory, which == "output")

    async def _predictions(self, directory: gcs.GcsPath) -> list[str]:
        """Every prediction file of a job (Gemini writes one; older models several)."""
        objects = await self.gcs.list(directory.bucket, directory.name.rstrip("/") + "/")
        found = sorted(str(o["name"]) for o in objects
                       if str(o.get("name", "")).endswith(".jsonl"))
        if not found:
            raise UpstreamNotFound(f"no prediction files under {directory}")
        return found

    async def _results(
        self, first: aiohttp.ClientResponse, rest: list[str], directory: gcs.GcsPath,
        successes: bool,
    ) -> AsyncIterator[bytes]:
        out = bytearray()
        resp: aiohttp.ClientResponse | None = first
        pending = list(rest)
        while resp is not None:
            async for raw in lines(gcs.read(resp)):
                try:
                    prediction = _decode(raw)
                except msgspec.DecodeError:
                    log.warning("skipping a prediction line that is not JSON in %s", directory)
                    continue
                if not isinstance(prediction, dict):
                    log.warning("skipping a prediction line that is not an object in %s",
                                directory)
                    continue
                ok, line = convert(prediction, str(directory))
                if ok == successes:
                    out += _encode(line) + b"\n"
                    if len(out) >= _FLUSH_AT:
                        yield bytes(out)
                        out.clear()
            resp = await self.gcs.open(gcs.GcsPath(directory.bucket, pending.pop(0))) \
                if pending else None
        if out:
            yield bytes(out)


def _checked(job: Any) -> dict[str, Any]:
    if not isinstance(job, dict) or not isinstance(job.get("name"), str):
        raise UpstreamUnavailable("Vertex AI answered without a job.")
    return job


def _count(stats: Any, key: str) -> int:
    value = stats.get(key) if isinstance(stats, dict) else None
    try:
        return max(int(value or 0), 0)  # int64 arrives as a string
    except (TypeError, ValueError):
        return 0


def _output_directory(job: dict[str, Any]) -> gcs.GcsPath | None:
    directory = (job.get("outputInfo") or {}).get("gcsOutputDirectory")
    if not isinstance(directory, str) or not directory.startswith("gs://"):
        return None
    bucket, _, name = directory.removeprefix("gs://").partition("/")
    return gcs.GcsPath(bucket, name.rstrip("/")) if bucket and name.strip("/") else None
