"""The `anthropic/<model>` provider: OpenAI chat batches run as Anthropic Message Batches.

Inline input: nothing reaches Anthropic at upload (the gateway only checks that every line maps);
`submit` streams the kept input, rewritten line by line, into `POST /v1/messages/batches`.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import msgspec

from gateway import (
    CHAT_COMPLETIONS,
    Batch,
    Capabilities,
    Deployment,
    LineRewrite,
    MapLines,
    Provider,
    ProviderContext,
    ProviderParams,
    ResultKind,
    Submission,
    Unsuitable,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    Usage,
    lines,
    retry_after,
    safe_decode,
)

from .mapping import ORIGINAL_ID, ChatMapper
from .params import DEFAULT_API_BASE, AnthropicParams
from .wire import (
    MessageBatch,
    add_usage,
    decode_batch,
    decode_result,
    epoch,
    openai_line,
    to_batch,
)

BATCHES = "v1/messages/batches"
_PIECE = 64 << 10  # bytes per chunk of the create body and of converted results
_MARKER = f'"{ORIGINAL_ID}":'.encode()
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def ids_key(batch_id: str) -> str:
    """`ctx.state` key of a batch's re-keyed custom_ids (native -> client's)."""
    return f"custom-ids/{batch_id}"


def usage_key(batch_id: str) -> str:
    """`ctx.state` key of an ended batch's token usage, summed from its results once."""
    return f"usage/{batch_id}"


class CreateBody:
    """`{"requests": [<item>, ...]}`, streamed from `Submission.open_input` (each line one
    item, already mapped by `ChatMapper`); never held in memory. A line whose custom_id was
    re-keyed carries the client's id under a private key: it is taken out here and
    remembered in `rekeyed`. An exception raised by the input is kept in `error`."""

    def __init__(self, job: Submission) -> None:
        self.job = job
        self.error: Exception | None = None
        self.rekeyed: dict[str, str] = {}
        self.requests = 0

    async def stream(self) -> AsyncIterator[bytes]:
        piece = bytearray(b'{"requests":[')
        try:
            async for line in lines(self.job.open_input()):
                if self.requests:
                    piece += b","
                piece += self.item(line) if _MARKER in line else line
                self.requests += 1
                if len(piece) >= _PIECE:
                    yield bytes(piece)
                    piece.clear()
        except Exception as e:  # not GeneratorExit: aiohttp closing the body is no error here
            self.error = e
            raise
        piece += b"]}"
        yield bytes(piece)

    def item(self, line: bytes) -> bytes:
        item = _decode(line)
        original = item.pop(ORIGINAL_ID, None) if isinstance(item, dict) else None
        if not isinstance(original, str):
            return line  # the marker was text inside the request, not our key
        self.rekeyed[item["custom_id"]] = original
        return _encode(item)


def _pack(ids: dict[str, str]) -> bytes:
    return zlib.compress(_encode(ids))


def _unpack(raw: bytes) -> dict[str, str]:
    value = _decode(zlib.decompress(raw))
    assert isinstance(value, dict)
    return value


class AnthropicProvider(Provider):
    name = "anthropic"
    Params: ClassVar[type[ProviderParams]] = AnthropicParams
    identity: ClassVar[tuple[str, ...]] = ("model", "api_base")

    def __init__(self, deployment: Deployment, ctx: ProviderContext) -> None:
        super().__init__(deployment, ctx)  # no I/O: built at start-up
        params = deployment.params
        assert isinstance(params, AnthropicParams)
        self.params = params
        self.base = params.api_base or DEFAULT_API_BASE
        self.mapper = ChatMapper(
            model=deployment.model,
            max_tokens=params.max_tokens,
            version=params.anthropic_version,
            structured_outputs=params.structured_outputs,
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(
            input="inline",
            endpoints=frozenset({CHAT_COMPLETIONS}),
            max_requests=self.params.max_requests_per_batch,
            max_bytes=self.params.max_bytes,
            cancel=True,
            delete=True,  # nothing is stored upstream at upload: nothing to delete there
        )

    def rewrite(self) -> LineRewrite:
        return MapLines(self.mapper)

    # -- transport -------------------------------------------------------------------------

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        assert self.params.api_key is not None  # Params requires it
        headers = {
            "x-api-key": self.params.api_key,
            "anthropic-version": self.params.anthropic_version,
            "content-type": "application/json",
            "accept": accept,
        }
        if isinstance(self.params.anthropic_beta, str):
            headers["anthropic-beta"] = self.params.anthropic_beta
        return headers

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def error_for(self, status: int, body: Any, headers: Mapping[str, str]) -> UpstreamError:
        """Anthropic's error envelope `{"type": "error", "error": {"type", "message"}}` by
        status: a refused credential or billing is the administrator's problem (502)."""
        message = str(body)[:300] if body is not None else ""
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            message = f"{error.get('type', 'error')}: {error.get('message', '')}"
        if status == 404:
            return UpstreamNotFound(message, status=status)
        if status == 409:
            return UpstreamConflict(message, status=status)
        if status == 429:
            return UpstreamRateLimited(message, retry_after=retry_after(headers))
        if status in (401, 402, 403, 408) or status >= 500:  # 529: overloaded
            return UpstreamUnavailable(message, status=status)
        return UpstreamBadRequest(message, status=status)  # 400, 413 request_too_large, ...

    async def open(self, method: str, url: str, *, data: Any = None, streaming: bool = False,
                   accept: str = "application/json") -> aiohttp.ClientResponse:
        """One call; the open response on 200 (release it), else a typed error."""
        seconds = self.params.timeout
        timeout = (aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
                   if streaming else aiohttp.ClientTimeout(total=seconds))
        try:
            resp = await self.http.request(method, url, data=data, headers=self.headers(accept),
                                           timeout=timeout)
            if resp.status != 200:
                try:
                    raw = await resp.read()
                finally:
                    resp.release()
                raise self.error_for(resp.status, safe_decode(raw), resp.headers)
            return resp
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e

    async def call(self, method: str, path: str, *, data: Any = None,
                   streaming: bool = False) -> MessageBatch:
        resp = await self.open(method, self.url(path), data=data, streaming=streaming)
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e
        finally:
            resp.release()
        try:
            return decode_batch(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise UpstreamUnavailable(f"not a MessageBatch: {e}") from e

    def path(self, batch_id: str, *rest: str) -> str:
        return "/".join((BATCHES, quote(batch_id, safe=""), *rest))

    # -- batches ---------------------------------------------------------------------------

    async def submit(self, job: Submission) -> Batch:
        if job.endpoint != CHAT_COMPLETIONS:
            raise Unsuitable(f"Anthropic Message Batches run {CHAT_COMPLETIONS} only")
        body = CreateBody(job)
        try:
            wire = await self.call("POST", BATCHES, data=body.stream(), streaming=True)
        except Exception:
            # aiohttp reports an exception raised by a streamed body as a connection error:
            # the core's own (a line refused by the rewrite, an unreadable kept input) must
            # reach it unchanged.
            if body.error is not None:
                raise body.error from None
            raise
        if body.rekeyed:
            try:
                await self.ctx.state.put(ids_key(wire.id), _pack(body.rekeyed))
            except BaseException:
                # Without the map its results could not be given back under the client's
                # ids: do not leave the batch running.
                with contextlib.suppress(UpstreamError):
                    await self.call("POST", self.path(wire.id, "cancel"))
                raise
        return await self.answer(wire)

    async def poll(self, batch_id: str) -> Batch:
        return await self.answer(await self.call("GET", self.path(batch_id)))

    async def cancel(self, batch_id: str) -> Batch:
        return await self.answer(await self.call("POST", self.path(batch_id, "cancel")))

    async def delete_batch(self, batch_id: str) -> None:
        """Delete an ended batch and its results upstream (`DELETE /v1/messages/batches/{id}`,
        refused by Anthropic before it ends), and what this adapter kept for it. Not part of
        the gateway contract: the core never calls it (results stay readable until Anthropic
        archives them, 29 days after creation)."""
        resp = await self.open("DELETE", self.url(self.path(batch_id)))
        resp.release()
        for key in (ids_key(batch_id), usage_key(batch_id)):
            await self.ctx.state.delete(key)

    async def answer(self, wire: MessageBatch) -> Batch:
        batch = to_batch(wire)
        if wire.processing_status == "ended" and self.params.usage_from_results:
            batch.usage = await self.usage(wire)
        return batch

    async def usage(self, wire: MessageBatch) -> Usage | None:
        """Tokens of an ended batch. Anthropic's batch object has none, so the results are
        read once and the sum kept in `ctx.state`; None once the results are archived."""
        cached = await self.ctx.state.get(usage_key(wire.id))
        if cached is not None:
            return msgspec.json.decode(cached, type=Usage)
        if not wire.request_counts.succeeded:
            return Usage(input_tokens=0, output_tokens=0, total_tokens=0)  # nothing billed
        if wire.archived_at is not None or wire.results_url is None:
            return None
        total = Usage(input_tokens=0, output_tokens=0, total_tokens=0)
        resp = await self.open("GET", self.results_url(wire), streaming=True,
                               accept="application/binary")
        try:
            async for raw in lines(resp.content.iter_chunked(_PIECE)):
                add_usage(total, raw)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"reading results: {type(e).__name__}: {e}") from e
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise UpstreamUnavailable(f"not a result line: {e}") from e
        finally:
            resp.release()
        await self.ctx.state.put(usage_key(wire.id), msgspec.json.encode(total))
        return total

    def results_url(self, wire: MessageBatch) -> str:
        """The batch's `results_url` when it is on `api_base`'s origin (the API key is sent
        nowhere else), else the results path under `api_base`."""
        own = self.url(self.path(wire.id, "results"))
        if not wire.results_url:
            return own
        url = urljoin(self.base + "/", wire.results_url)
        there, here = urlsplit(url), urlsplit(self.base)
        return url if (there.scheme, there.netloc) == (here.scheme, here.netloc) else own

    # -- results -----------------------------------------------------------------------------

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        # Every failure raises here, before the first chunk.
        wire = await self.call("GET", self.path(batch_id))
        if wire.processing_status != "ended":
            raise UpstreamConflict("The batch has not ended: its results are not ready.")
        if wire.archived_at is not None:
            raise UpstreamNotFound("the results were archived (29 days after creation)")
        raw_ids = await self.ctx.state.get(ids_key(wire.id))
        ids = _unpack(raw_ids) if raw_ids is not None else {}
        resp = await self.open("GET", self.results_url(wire), streaming=True,
                               accept="application/binary")
        return self.converted(resp, wire, which, ids)

    async def converted(self, resp: aiohttp.ClientResponse, wire: MessageBatch,
                        which: ResultKind, ids: dict[str, str]) -> AsyncIterator[bytes]:
        created = epoch(wire.ended_at)
        piece = bytearray()
        try:
            async for raw in lines(resp.content.iter_chunked(_PIECE)):
                try:
                    item = decode_result(raw)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    raise UpstreamUnavailable(f"not a result line: {e}") from e
                if (item.result.type == "succeeded") != (which == "output"):
                    continue
                custom_id = ids.get(item.custom_id, item.custom_id)
                piece += _encode(openai_line(wire.id, custom_id, item.result, created)) + b"\n"
                if len(piece) >= _PIECE:
                    yield bytes(piece)
                    piece.clear()
            if piece:
                yield bytes(piece)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"reading results: {type(e).__name__}: {e}") from e
        finally:
            resp.release()
