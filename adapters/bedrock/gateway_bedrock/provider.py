"""The Bedrock provider: OpenAI batch files as Claude batch records on S3, batches as model
invocation jobs, results turned back into OpenAI output and error lines.

Native ids: an input copy is its object URI (`s3://bucket/<prefix>/in/<file>-<hex>.jsonl`); a
batch is the job's ARN. A job writes `<input name>.out` and `manifest.json.out` under
`<prefix>/out/<gateway batch id>/<job id>/`; results are read from there, split by outcome.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

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
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamUnavailable,
    Usage,
    lines,
)
from gateway_bedrock import s3
from gateway_bedrock.aws import Aws, AwsCredentials
from gateway_bedrock.claude_output import convert, missing, scrub
from gateway_bedrock.claude_request import to_record
from gateway_bedrock.params import BedrockParams, model_id

log = logging.getLogger("gateway.bedrock")

STATUS: dict[str, Status] = {
    "Submitted": "validating",
    "Validating": "validating",
    "Scheduled": "validating",
    "InProgress": "in_progress",
    "Stopping": "cancelling",
    "Completed": "completed",
    "PartiallyCompleted": "completed",
    "Failed": "failed",
    "Stopped": "cancelled",
    "Expired": "expired",
}
# Jobs that end with records they never processed: those become error lines with this code.
_UNFINISHED = {"Stopped": "batch_cancelled", "PartiallyCompleted": "batch_expired",
               "Expired": "batch_expired"}
_ENDED_AT = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at",
             "expired": "expired_at"}
_WITH_RESULTS = frozenset({"completed", "cancelled", "expired"})
# Bedrock's quota "Batch inference input file size" (1 GB).
MAX_INPUT_BYTES = 1 << 30
_MANIFEST = "manifest.json.out"
_FLUSH_AT = 256 << 10
_decode = msgspec.json.decode
_encode = msgspec.json.encode


def _name_part(value: str) -> str:
    """Letters and digits, runs of anything else as one `-` (Bedrock's jobName and
    clientRequestToken patterns)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", value).strip("-") or "batch"


def _unix(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        return None


def _count(job: dict[str, Any], key: str) -> int | None:
    value = job.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(int(value), 0)


class BedrockProvider(Provider):
    name = "bedrock"
    Params: ClassVar[type[ProviderParams]] = BedrockParams
    identity: ClassVar[tuple[str, ...]] = ("model", "aws_region_name", "api_base")

    def __init__(self, deployment: Deployment, ctx: ProviderContext) -> None:
        super().__init__(deployment, ctx)
        params = deployment.params
        assert isinstance(params, BedrockParams)
        self.params = params
        self.model_id = model_id(params.model)
        self.region = params.aws_region_name
        self.api_base = (params.api_base
                         or f"https://bedrock.{self.region}.amazonaws.com").rstrip("/")
        credentials = AwsCredentials(params.aws_access_key_id, params.aws_secret_access_key,
                                     params.aws_session_token)
        self.aws = Aws(self.http, credentials, params.timeout)
        self.s3 = s3.S3(self.aws, params.s3_region_name or self.region, params.s3_endpoint_url,
                        params.s3_upload_part_size)
        self.bucket = params.s3_bucket_name
        self.prefix = params.s3_prefix
        # Tells this deployment's job names and idempotency tokens from another's that ran the
        # same gateway batch (failover within one account).
        self.tag = hashlib.sha256(deployment.id.encode()).hexdigest()[:8]

    def capabilities(self) -> Capabilities:
        return Capabilities(input="file", endpoints=frozenset({CHAT_COMPLETIONS}),
                            min_requests=self.params.min_requests_per_job,
                            max_requests=self.params.max_requests_per_job,
                            max_bytes=MAX_INPUT_BYTES, cancel=True, delete=True)

    def rewrite(self) -> MapLines:
        return MapLines(functools.partial(to_record, max_tokens=self.params.max_tokens))

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    # -- inputs --------------------------------------------------------------------------------

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        # Named after the gateway's file, plus a random part: deployments may share a bucket
        # and prefix, each with its own copy. Bedrock names the output `<this name>.out`.
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name.removesuffix(".jsonl"))[:100]
        path = s3.S3Path(self.bucket, self._key("in", f"{stem}-{uuid.uuid4().hex}.jsonl"))
        await self.s3.upload(path, content)
        return str(path)

    async def delete_input(self, input_id: str) -> None:
        path = s3.S3Path.parse(input_id)
        await self.s3.head(path)  # S3 deletes a missing key without complaint
        await self.s3.delete(path)

    # -- batches -------------------------------------------------------------------------------

    async def submit(self, job: Submission) -> Batch:
        if job.endpoint != CHAT_COMPLETIONS:
            raise Unsuitable(f"Bedrock Claude batches run only {CHAT_COMPLETIONS}.")
        least = self.params.min_requests_per_job
        if job.request_count < least:
            raise Unsuitable(f"Bedrock needs at least {least} records per job; this batch has "
                             f"{job.request_count}.")
        if job.input_id is None:
            raise UpstreamNotFound("no input copy on this deployment")
        source = s3.S3Path.parse(job.input_id)
        await self.s3.head(source)  # a missing copy fails here, before a job exists
        name = f"{_name_part(job.batch_id)[:54]}-{self.tag}"
        body: dict[str, Any] = {
            "jobName": name,
            "roleArn": self.params.aws_batch_role_arn,
            # The same gateway batch on the same deployment is one job, however often sent.
            "clientRequestToken": name,
            "modelId": self.model_id,
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": str(source),
                                                      "s3InputFormat": "JSONL"}},
            "outputDataConfig": {"s3OutputDataConfig": {
                "s3Uri": f"s3://{self.bucket}/{self._key('out', _out_name(job.batch_id))}/"}},
        }
        if self.params.timeout_hours is not None:
            body["timeoutDurationInHours"] = self.params.timeout_hours
        answer = await self._call("POST", "/model-invocation-job", body)
        arn = answer.get("jobArn") if isinstance(answer, dict) else None
        if not isinstance(arn, str) or not arn:
            raise UpstreamUnavailable("Bedrock answered CreateModelInvocationJob without a jobArn")
        # A new job is Submitted; counts and times come with the first poll.
        return Batch(id=arn, status="validating")

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        _, raw = await self.aws.read(
            "bedrock", self.region, method, self.api_base + path,
            body=_encode(body) if body is not None else b"",
            headers={"Content-Type": "application/json"} if body is not None else None)
        try:
            return _decode(raw) if raw else None
        except msgspec.DecodeError as e:
            raise UpstreamUnavailable(f"Bedrock answered {method} {path} with no JSON") from e

    def _job_path(self, batch_id: str) -> str:
        # The ARN travels percent-encoded (its `:` and `/` too), as botocore sends it; the
        # signature then encodes the path once more, as SigV4 does for every service but S3.
        return f"/model-invocation-job/{quote(batch_id, safe='')}"

    async def _job(self, batch_id: str) -> dict[str, Any]:
        job = await self._call("GET", self._job_path(batch_id))
        if not isinstance(job, dict) or not isinstance(job.get("jobArn"), str):
            raise UpstreamUnavailable("Bedrock answered GetModelInvocationJob without a job")
        return job

    async def poll(self, batch_id: str) -> Batch:
        return await self._batch(await self._job(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        try:
            await self._call("POST", self._job_path(batch_id) + "/stop")
        except (UpstreamBadRequest, UpstreamConflict):
            # Stopping a job that has ended is refused; say so in the contract's terms.
            raw = str((await self._job(batch_id)).get("status"))
            if _status(raw) in _ENDED_AT:
                raise UpstreamConflict(f"The batch has already ended ({raw}).") from None
            raise
        return await self.poll(batch_id)

    async def _batch(self, job: dict[str, Any]) -> Batch:
        raw = str(job.get("status"))
        status = _status(raw)
        manifest = await self._manifest(job) if status in _WITH_RESULTS else None

        def pick(key: str) -> int | None:  # the manifest's, else the job's
            found = _count(manifest, key) if manifest is not None else None
            return found if found is not None else _count(job, key)

        total = pick("totalRecordCount")
        success = pick("successRecordCount") or 0
        errors = pick("errorRecordCount") or 0
        if status in _WITH_RESULTS and total:
            # Records never processed (stopped, partial, expired) are failed lines too.
            errors = max(total - success, errors)
        batch = Batch(
            id=job["jobArn"],
            status=status,
            request_counts=RequestCounts(total=total or 0, completed=success, failed=errors),
            expires_at=_unix(job.get("jobExpirationTime")),
        )
        if status == "cancelling":
            batch.cancelling_at = _unix(job.get("lastModifiedTime"))
        if status in _ENDED_AT:
            ended = _unix(job.get("endTime")) or _unix(job.get("lastModifiedTime"))
            setattr(batch, _ENDED_AT[status], ended)
            if status in _WITH_RESULTS:
                # Without counts: a completed job may have either; a stopped or expired one
                # without a manifest ran nothing, and every record is an error line.
                known = total is not None
                ran = status == "completed" or manifest is not None
                if success or (not known and ran):
                    batch.output = ResultFile(bytes=None, created_at=ended)
                if errors or not known:
                    batch.error = ResultFile(bytes=None, created_at=ended)
        if manifest is not None:
            tokens_in = _count(manifest, "inputTokenCount")
            tokens_out = _count(manifest, "outputTokenCount")
            if tokens_in is not None or tokens_out is not None:
                batch.usage = Usage(input_tokens=tokens_in or 0, output_tokens=tokens_out or 0,
                                    total_tokens=(tokens_in or 0) + (tokens_out or 0))
        if status in ("failed", "expired"):
            message = scrub(str(job.get("message") or ""))
            if message or status == "failed":
                batch.errors = [BatchError(code=f"bedrock_job_{raw.lower()}",
                                           message=message or "The Bedrock job failed.")]
        return batch

    def _output_dir(self, job: dict[str, Any]) -> s3.S3Path:
        """`<outputDataConfig s3Uri>/<job id>/`: where Bedrock writes a job's files."""
        uri = ((job.get("outputDataConfig") or {}).get("s3OutputDataConfig") or {}).get("s3Uri")
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise UpstreamUnavailable("the job has no S3 output location")
        bucket, _, key = uri[5:].partition("/")
        job_id = str(job["jobArn"]).rsplit("/", 1)[-1]
        key = key.strip("/")
        return s3.S3Path(bucket, f"{key}/{job_id}/" if key else f"{job_id}/")

    async def _manifest(self, job: dict[str, Any]) -> dict[str, Any] | None:
        directory = self._output_dir(job)
        try:
            raw = await self.s3.get(s3.S3Path(directory.bucket, directory.key + _MANIFEST))
        except UpstreamNotFound:
            return None  # stopped before it started, or not written yet
        try:
            manifest = _decode(raw)
        except msgspec.DecodeError:
            log.warning("ignoring a manifest that is not JSON in %s", directory)
            return None
        return manifest if isinstance(manifest, dict) else None

    # -- results -------------------------------------------------------------------------------

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        job = await self._job(batch_id)
        raw = str(job.get("status"))
        if _status(raw) not in _WITH_RESULTS:
            raise UpstreamNotFound(f"the job has no results ({raw})")
        directory = self._output_dir(job)
        keys = sorted(k for k in await self.s3.list(directory.bucket, directory.key)
                      if k.endswith(".out") and not k.endswith("/" + _MANIFEST))
        sources = [s3.S3Path(directory.bucket, k) for k in keys]
        successes = which == "output"
        processed, total = _count(job, "processedRecordCount"), _count(job, "totalRecordCount")
        unfinished = raw in _UNFINISHED or (
            processed is not None and total is not None and processed < total)
        if not successes and unfinished:
            # The input says which records never ran: read after the outputs.
            uri = ((job.get("inputDataConfig") or {}).get("s3InputDataConfig") or {}).get("s3Uri")
            source = s3.S3Path.parse(str(uri))
            await self.s3.head(source)
            sources.append(source)
        if not sources:
            return _nothing()
        # Open the first file now so that a failure is raised before any chunk.
        first = await self.s3.open(sources[0])
        ended = _unix(job.get("endTime")) or _unix(job.get("lastModifiedTime")) or 0
        read_input = not successes and unfinished
        return self._results(first, sources, read_input, successes, str(job["jobArn"]),
                             ended, _UNFINISHED.get(raw, "batch_expired"))

    async def _results(
        self, first: aiohttp.ClientResponse, sources: list[s3.S3Path], read_input: bool,
        successes: bool, source: str, created: int, missing_code: str,
    ) -> AsyncIterator[bytes]:
        out = bytearray()
        seen: set[str] = set()  # recordIds with an output line, when the input is read after
        resp: aiohttp.ClientResponse | None = first
        try:
            for i, path in enumerate(sources):
                if resp is None:
                    resp = await self.s3.open(path)
                is_input = read_input and i == len(sources) - 1
                async for raw in lines(s3.read(resp)):
                    try:
                        record = _decode(raw)
                    except msgspec.DecodeError:
                        log.warning("skipping a line that is not JSON in %s", path)
                        continue
                    if not isinstance(record, dict):
                        continue
                    if is_input:
                        rid = record.get("recordId")
                        if isinstance(rid, str) and rid not in seen:
                            out += _encode(missing(source, rid, missing_code)) + b"\n"
                    else:
                        ok, rid, line = convert(record, source, created, self.model_id)
                        if read_input and rid is not None:
                            seen.add(rid)
                        if ok == successes:
                            out += _encode(line) + b"\n"
                    if len(out) >= _FLUSH_AT:
                        yield bytes(out)
                        out.clear()
                resp = None
        finally:
            if resp is not None:  # closed before this file was read
                resp.release()
        if out:
            yield bytes(out)


def _status(raw: str) -> Status:
    status = STATUS.get(raw)
    if status is None:
        log.warning("unknown Bedrock job status %r, taken as in progress", raw)
        return "in_progress"
    return status


def _out_name(batch_id: str) -> str:
    return re.sub(r"[^-_.a-zA-Z0-9]", "-", batch_id)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator
