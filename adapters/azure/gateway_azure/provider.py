"""`AzureProvider`: OpenAI's Files + Batches wire protocol with Azure's URLs, auth and quirks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp

from gateway import (
    ALL_ENDPOINTS,
    Batch,
    Capabilities,
    Deployment,
    DeploymentFull,
    LineRewrite,
    MapLines,
    OpenAIWireProvider,
    ProviderContext,
    ProviderParams,
    RenameModel,
    ResultFile,
    Submission,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    retry_after,
)
from gateway_azure.entra import EntraToken
from gateway_azure.params import AzureParams
from gateway_azure.shapes import azure_error, azure_url, epoch, normalise_batch

# Upload states that mean "not usable yet" (Azure says `uploaded` is never returned).
_NOT_READY = frozenset({"pending", "uploaded", "running"})
_CONFLICT_CODES = frozenset({"conflict", "unexpectedentitystate"})
_UNAVAILABLE_CODES = frozenset(
    {"serviceunavailable", "internalfailure", "unauthorized", "forbidden", "401", "403"}
)


class AzureProvider(OpenAIWireProvider):
    name = "azure"
    Params: ClassVar[type[ProviderParams]] = AzureParams
    identity: ClassVar[tuple[str, ...]] = ("model", "api_base", "api_version")

    def __init__(self, deployment: Deployment, ctx: ProviderContext) -> None:
        super().__init__(deployment, ctx)
        settings = deployment.params
        assert isinstance(settings, AzureParams), "deployment.params must be AzureParams"
        self.settings = settings
        self.api_base = settings.resource
        self.entra: EntraToken | None = None
        if settings.entra:
            self.entra = EntraToken(
                ctx.http,
                f"{settings.azure_authority_host.rstrip('/')}/{settings.tenant_id}"
                "/oauth2/v2.0/token",
                {
                    "grant_type": "client_credentials",
                    "client_id": str(settings.client_id),
                    "client_secret": str(settings.client_secret),
                    "scope": settings.azure_scope,
                },
                settings.token_refresh_margin,
            )

    def capabilities(self) -> Capabilities:
        return Capabilities(input="file", endpoints=ALL_ENDPOINTS,
                            max_requests=self.settings.max_requests_per_file)

    # -- wire ------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.api_base}/openai/{'v1/' if self.settings.v1 else ''}{path}"

    def params(self) -> dict[str, str]:
        version = self.settings.api_version
        return {} if version == "v1" else {"api-version": version}

    async def headers(self) -> dict[str, str]:
        if self.settings.api_key:
            return {"api-key": self.settings.api_key}
        if self.entra is not None:
            return {"Authorization": f"Bearer {await self.entra.get()}"}
        return {"Authorization": f"Bearer {self.settings.azure_ad_token}"}

    def scrub(self, text: str) -> str:
        # Clients learn the model group, never the deployment or the resource behind it.
        return text.replace(self.deployment.model, self.deployment.model_name) \
            .replace(self.api_base, "")

    def error_for(self, status: int, body: Any, headers: Mapping[str, str]) -> UpstreamError:
        codes, message = azure_error(body)
        message = self.scrub(message)
        lowered = message.lower()
        if "token_limit_exceeded" in codes or "token_limit_exceeded" in lowered \
                or "quotaexceeded" in codes:
            return DeploymentFull(message, status=status)
        if status == 429 or "toomanyrequests" in codes:
            return UpstreamRateLimited(message, retry_after=retry_after(headers))
        if status == 404 or "notfound" in codes:
            return UpstreamNotFound(message, status=status)
        if status == 409 or any(c in codes for c in _CONFLICT_CODES):
            return UpstreamConflict(message, status=status)
        if status in (401, 403) or status >= 500 or any(c in codes for c in _UNAVAILABLE_CODES) \
                or "api version" in lowered or "api-version" in lowered:
            # Refused credentials and a wrong api_version are the admin's problem: 502.
            return UpstreamUnavailable(message, status=status)
        return UpstreamBadRequest(message, status=status)

    async def call(self, method: str, path: str, **options: Any) -> Any:
        try:
            return await super().call(method, path, **options)
        except UpstreamUnavailable as e:
            # A cached Entra token can be revoked before it expires: fetch a new one, once.
            if e.upstream_status != 401 or self.entra is None or options.get("data") is not None:
                raise
            self.entra.invalidate()
            return await super().call(method, path, **options)

    def normalise_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        return normalise_batch(body, self.scrub)

    # -- request lines -----------------------------------------------------------------------

    def rewrite(self) -> LineRewrite:
        # Azure takes only the deployment name as `body.model`. The v1 surface takes OpenAI's
        # `/v1/...` urls as they are; the versioned one documents them without `/v1`.
        if self.settings.v1:
            return RenameModel(self.deployment.model)
        return MapLines(self._versioned_line)

    def _versioned_line(self, line: dict[str, Any]) -> dict[str, Any]:
        line["body"]["model"] = self.deployment.model
        line["url"] = azure_url(line["url"], v1=False)
        return line

    # -- inputs ------------------------------------------------------------------------------

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        with aiohttp.MultipartWriter("form-data") as form:
            form.append("batch").set_content_disposition("form-data", name="purpose")
            expires = self.settings.file_expires_after
            if expires:
                for field, value in (("anchor", "created_at"), ("seconds", str(expires))):
                    form.append(value).set_content_disposition(
                        "form-data", name=f"expires_after.{field}"
                    )
            part = form.append(content, {"Content-Type": "application/jsonl"})
            part.set_content_disposition("form-data", name="file", filename=name)
            body, headers = await self.send(
                "POST", "files", data=form, timeout=self.transfer_timeout, ok=(200, 201)
            )
        body = body if isinstance(body, dict) else {}
        location = headers.get("Location")
        if not body.get("id") and location:  # Azure answers 201 + Location
            body = {**body, "id": location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]}
        file_id = self.native_id(body)
        try:
            await self._wait_until_processed(file_id, body)
        except UpstreamError:
            # The core never learns this id: do not leave it taking one of the resource's slots.
            with contextlib.suppress(UpstreamError):
                await self.delete_input(file_id)
            raise
        return file_id

    async def _wait_until_processed(self, file_id: str, body: dict[str, Any]) -> None:
        """Azure refuses batches on a file still `pending`: wait, bounded, with backoff."""
        limit = self.settings.file_ready_timeout
        delay = self.settings.file_poll_interval
        deadline = time.monotonic() + limit
        status = str(body.get("status") or "pending").lower()  # unknown yet: look
        while True:
            if status in ("deleted", "deleting"):
                raise UpstreamNotFound(f"input file is {status}")
            if status == "error":
                details = self.scrub(str(body.get("status_details") or "no details given"))
                raise UpstreamBadRequest(f"the input file failed processing upstream: {details}")
            if status not in _NOT_READY:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamUnavailable(f"input file still {status!r} after {limit:g}s")
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.settings.file_poll_max_interval)
            body = await self.call_object("GET", f"files/{file_id}")
            status = str(body.get("status") or "processed").lower()

    async def delete_input(self, input_id: str) -> None:
        await self.call("DELETE", f"files/{input_id}", ok=(200, 204))

    async def file_info(self, file_id: str) -> ResultFile:
        body = await self.call_object("GET", f"files/{file_id}")
        size = body.get("bytes")
        return ResultFile(bytes=size if isinstance(size, int) else None,
                          created_at=epoch(body.get("created_at")))

    # -- batches -----------------------------------------------------------------------------

    async def submit(self, job: Submission) -> Batch:
        # The batch endpoint must be written like the lines' url on this surface.
        endpoint = azure_url(job.endpoint, self.settings.v1)
        return await super().submit(dataclasses.replace(job, endpoint=endpoint))
