"""The Vertex AI provider: OpenAI batch files as Gemini JSONL objects on GCS, batches as
`batchPredictionJobs`, results turned back into OpenAI output and error lines.

Native ids: an input file is its object URI (`gs://bucket/prefix/in/<hex>.jsonl`); a batch is
the job's resource name; a batch's output and error files are its prediction directory with a
`#output` / `#errors` suffix: both are views of the same prediction files, split by status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import msgspec

from gateway import (
    ConfigError,
    Deployment,
    Provider,
    ProviderBatch,
    ProviderFile,
    UpstreamBadRequest,
    UpstreamNotFound,
    UpstreamUnavailable,
)
from gateway_vertex import gcs, labels
from gateway_vertex.auth import TokenSource, load_service_account
from gateway_vertex.gemini_output import convert, unix_seconds
from gateway_vertex.gemini_request import CHAT_URL, to_gemini, to_openai
from gateway_vertex.transport import GoogleApi, scrub

log = logging.getLogger("gateway.vertex")

STATUS = {
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
OUTPUT, ERRORS = "#output", "#errors"
TOTAL_LABEL, METADATA_LABEL = "gw_total", "gw_meta"
DEFAULT_PREFIX = "batch-gateway"
_FLUSH_AT = 256 << 10
_decode = msgspec.json.decode
_encode = msgspec.json.encode


class VertexProvider(Provider):
    name = "vertex_ai"
    max_requests_per_file: ClassVar[int] = 200_000

    def __init__(self, deployment: Deployment, http: aiohttp.ClientSession) -> None:
        super().__init__(deployment, http)
        where = f"model_list entry {deployment.model_name!r}: litellm_params"
        key = deployment.param("vertex_credentials") or os.environ.get(
            "GOOGLE_APPLICATION_CREDENTIALS")
        if not key:
            raise ConfigError(f"{where}.vertex_credentials: required, a service-account key "
                              "(path or JSON)")
        info = load_service_account(key, f"{where}.vertex_credentials")
        self.project = str(deployment.param("vertex_project") or info.get("project_id") or "")
        if not self.project:
            raise ConfigError(f"{where}.vertex_project: required (the key names no project)")
        self.location = str(deployment.param("vertex_location", "us-central1"))
        bucket = str(deployment.param("gcs_bucket_name") or "").removeprefix("gs://").strip("/")
        if not bucket:
            raise ConfigError(f"{where}.gcs_bucket_name: required, the bucket for batch files")
        self.bucket, _, path = bucket.partition("/")
        own = str(deployment.param("gcs_prefix", DEFAULT_PREFIX)).strip("/")
        self.prefix = "/".join(p for p in (path, own) if p)
        seconds = float(deployment.param("timeout", 60))
        self.tokens = TokenSource(info, http, aiohttp.ClientTimeout(total=seconds))
        self.api = GoogleApi(http, self.tokens, seconds)
        base, auth = gcs.endpoint(deployment.param("gcs_api_base"))
        self.gcs = gcs.Gcs(self.api, base, auth,
                           int(deployment.param("gcs_upload_chunk_size", gcs.DEFAULT_CHUNK)))
        host = "aiplatform.googleapis.com" if self.location == "global" \
            else f"{self.location}-aiplatform.googleapis.com"
        api_base = str(deployment.param("api_base") or f"https://{host}").rstrip("/")
        self.api_base = api_base.removesuffix("/v1")  # paths below carry the version
        model = deployment.model
        self.model_path = model if "/" in model else f"publishers/google/models/{model}"

    # -- request lines -------------------------------------------------------------------------

    def prepare_line(self, line: dict[str, Any]) -> dict[str, Any]:
        return to_gemini(line, self.deployment.model)

    # -- files ---------------------------------------------------------------------------------

    async def upload_file(self, content: AsyncIterator[bytes], filename: str) -> ProviderFile:
        path = gcs.GcsPath(self.bucket, f"{self.prefix}/in/{uuid.uuid4().hex}.jsonl")
        try:
            obj = await self.gcs.upload(path, content, {"filename": filename})
        except UpstreamNotFound as e:
            # Only the bucket can be missing here: a deployment misconfigured, not a client error.
            raise UpstreamUnavailable(f"GCS bucket {self.bucket!r}: {e.detail}",
                                      status=404) from e
        return _file(str(path), obj)

    async def retrieve_file(self, file_id: str) -> ProviderFile:
        path, view = _parse(file_id)
        if view is None:
            return _file(file_id, await self.gcs.get(path))
        objects = await self._predictions(path)
        created = [t for t in (unix_seconds(o.get("timeCreated")) for o in objects) if t]
        # The size of the converted lines is unknown without converting them all.
        return ProviderFile(id=file_id, bytes=None, purpose="batch_output",
                            created_at=min(created) if created else None)

    async def delete_file(self, file_id: str) -> None:
        path, view = _parse(file_id)
        if view is None:
            await self.gcs.delete(path)
            return
        # Output and error files are views of one directory: deleting either removes it.
        objects = await self.gcs.list(path.bucket, path.name.rstrip("/") + "/")
        if not objects:
            raise UpstreamNotFound(f"no objects under {path}")
        for obj in objects:
            with contextlib.suppress(UpstreamNotFound):  # gone already: fine
                await self.gcs.delete(gcs.GcsPath(path.bucket, obj["name"]))

    async def file_content(self, file_id: str) -> AsyncIterator[bytes]:
        path, view = _parse(file_id)
        if view is None:
            return self._requests(await self.gcs.open(path))
        objects = await self._predictions(path)
        # Open the first file now so that a failure is raised before any chunk.
        first = await self.gcs.open(gcs.GcsPath(path.bucket, objects[0]["name"]))
        return self._results(first, [o["name"] for o in objects[1:]], path, view == OUTPUT)

    async def _predictions(self, directory: gcs.GcsPath) -> list[dict[str, Any]]:
        """Every prediction file of a job (Gemini writes one; older models several)."""
        objects = await self.gcs.list(directory.bucket, directory.name.rstrip("/") + "/")
        found = sorted((o for o in objects if str(o.get("name", "")).endswith(".jsonl")),
                       key=lambda o: str(o["name"]))
        if not found:
            raise UpstreamNotFound(f"no prediction files under {directory}")
        return found

    async def _requests(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        out = bytearray()
        async for raw in _lines(gcs.read(resp)):
            try:
                line = _decode(raw)
            except msgspec.DecodeError:
                continue
            out += _encode(to_openai(line, self.deployment.model)) + b"\n"
            if len(out) >= _FLUSH_AT:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)

    async def _results(
        self, first: aiohttp.ClientResponse, rest: list[str], directory: gcs.GcsPath,
        successes: bool,
    ) -> AsyncIterator[bytes]:
        out = bytearray()
        resp: aiohttp.ClientResponse | None = first
        pending = list(rest)
        while resp is not None:
            async for raw in _lines(gcs.read(resp)):
                try:
                    prediction = _decode(raw)
                except msgspec.DecodeError:
                    log.warning("skipping a prediction line that is not JSON in %s", directory)
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

    # -- batches -------------------------------------------------------------------------------

    def _job_url(self, batch_id: str) -> str:
        name = batch_id if batch_id.startswith("projects/") \
            else f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{batch_id}"
        return f"{self.api_base}/v1/{name}"

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None,
    ) -> ProviderBatch:
        if endpoint != CHAT_URL:
            raise UpstreamBadRequest(f"Vertex AI Gemini batches run only {CHAT_URL}.")
        path, view = _parse(input_file_id)
        if view is not None:
            raise UpstreamBadRequest("a batch output file cannot be a batch's input.")
        obj = await self.gcs.get(path)  # a missing copy fails here, before a job exists
        tags = {}
        lines = (obj.get("metadata") or {}).get("lines")
        if isinstance(lines, str) and lines.isdigit():
            tags[TOTAL_LABEL] = lines
        if metadata:
            # The job is the only place a batch's metadata can live: its labels, encoded.
            tags.update(labels.encode(METADATA_LABEL, json.dumps(dict(metadata),
                                                                separators=(",", ":"))))
            if len(tags) > labels.MAX_LABELS:
                raise UpstreamBadRequest("metadata is too large for Vertex AI job labels "
                                         "(keep it under about 2 KB).")
        run = uuid.uuid4().hex
        job = {
            "displayName": f"gateway-{run}",
            "model": self.model_path,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [str(path)]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {
                    "outputUriPrefix": f"gs://{self.bucket}/{self.prefix}/out/{run}"},
            },
            "labels": tags,
        }
        url = f"{self.api_base}/v1/projects/{self.project}/locations/{self.location}" \
              "/batchPredictionJobs"
        return self._batch(await self.api.call("POST", url, json=job))

    async def retrieve_batch(self, batch_id: str) -> ProviderBatch:
        return self._batch(await self.api.call("GET", self._job_url(batch_id)))

    async def cancel_batch(self, batch_id: str) -> ProviderBatch:
        await self.api.call("POST", self._job_url(batch_id) + ":cancel", json={})
        return await self.retrieve_batch(batch_id)  # cancel answers `{}`, not the job

    def _batch(self, job: Any) -> ProviderBatch:
        if not isinstance(job, dict) or not isinstance(job.get("name"), str):
            raise UpstreamBadRequest("Vertex AI answered without a job.")
        status = STATUS.get(str(job.get("state")), "failed")
        tags = job.get("labels") or {}
        stats = job.get("completionStats")
        done = int((stats or {}).get("successfulCount") or 0)
        failed = int((stats or {}).get("failedCount") or 0)
        incomplete = max(int((stats or {}).get("incompleteCount") or 0), 0)
        total = tags.get(TOTAL_LABEL)
        total = int(total) if isinstance(total, str) and total.isdigit() else 0
        created = unix_seconds(job.get("createTime"))
        batch: dict[str, Any] = {
            "id": job["name"],
            "object": "batch",
            "endpoint": CHAT_URL,
            "model": self.deployment.model,
            "errors": None,
            "input_file_id": ((job.get("inputConfig") or {}).get("gcsSource") or {})
            .get("uris", [None])[0],
            "completion_window": "24h",
            "status": status,
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": unix_seconds(job.get("startTime")),
            "expires_at": None,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": max(total, done + failed + incomplete),
                               "completed": done, "failed": failed},
            "metadata": _metadata(tags),
        }
        if status in _ENDED_AT:
            batch[_ENDED_AT[status]] = unix_seconds(job.get("endTime"))
            directory = (job.get("outputInfo") or {}).get("gcsOutputDirectory")
            if isinstance(directory, str) and directory.startswith("gs://"):
                if done or stats is None:
                    batch["output_file_id"] = directory + OUTPUT
                if failed:
                    batch["error_file_id"] = directory + ERRORS
        problems = [job["error"]] if isinstance(job.get("error"), dict) else []
        problems += [p for p in job.get("partialFailures") or [] if isinstance(p, dict)]
        if status in ("failed", "expired") and problems:
            batch["errors"] = {"object": "list", "data": [
                {"code": "vertex_job_failed", "message": scrub(str(p.get("message") or "")),
                 "param": None, "line": None} for p in problems]}
        return batch


def _parse(file_id: str) -> tuple[gcs.GcsPath, str | None]:
    base, hash_, view = file_id.partition("#")
    if hash_ and f"#{view}" not in (OUTPUT, ERRORS):
        raise UpstreamNotFound(f"unknown file view {file_id[:100]!r}")
    return gcs.GcsPath.parse(base), (f"#{view}" if hash_ else None)


def _file(file_id: str, obj: dict[str, Any]) -> ProviderFile:
    size = obj.get("size")
    return ProviderFile(
        id=file_id,
        bytes=int(size) if isinstance(size, str | int) and str(size).isdigit() else None,
        created_at=unix_seconds(obj.get("timeCreated")),
        filename=(obj.get("metadata") or {}).get("filename"),
        purpose="batch",
    )


def _metadata(tags: Mapping[str, Any]) -> dict[str, str] | None:
    text = labels.decode(METADATA_LABEL, tags)
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Non-blank lines of a stream, however the chunks cut them."""
    partial = b""
    async for chunk in chunks:
        pieces = (partial + chunk).split(b"\n")
        partial = pieces.pop()
        for piece in pieces:
            if piece.strip():
                yield piece
    if partial.strip():
        yield partial
