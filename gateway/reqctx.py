"""The request being served, for logs: its id, the caller's key id, the model group and how
many upstream calls it made.

The access-log middleware (`gateway.middleware`) opens a `RequestInfo` per request in a
context variable; code that learns something on the way (auth, the API modules, the OpenAI
wire transport) notes it there. Tasks started inside the request share the same object, so
calls made in an `asyncio.gather` are counted too. Outside a request (background jobs) there
is none and noting is a no-op.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass

# A request id from a client or a proxy is kept if it is short and plain; anything else is
# cut down to the characters below (so it cannot forge log lines or headers).
MAX_REQUEST_ID = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+=/-]")


@dataclass
class RequestInfo:
    request_id: str
    key: str | None = None  # the key's token id (`key_…`) or "master"; never the key itself
    model_group: str | None = None
    upstream_calls: int = 0


_current: ContextVar[RequestInfo | None] = ContextVar("gateway_request", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(raw: str | None) -> str:
    """The client's `x-request-id`, sanitised and bounded, or a new one."""
    if raw:
        cleaned = _UNSAFE.sub("", raw)[:MAX_REQUEST_ID]
        if cleaned:
            return cleaned
    return new_request_id()


def begin(request_id: str) -> tuple[RequestInfo, Token[RequestInfo | None]]:
    info = RequestInfo(request_id)
    return info, _current.set(info)


def end(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)


def current() -> RequestInfo | None:
    return _current.get()


def request_id() -> str | None:
    info = _current.get()
    return info.request_id if info is not None else None


def note(*, key: str | None = None, model_group: str | None = None) -> None:
    info = _current.get()
    if info is None:
        return
    if key is not None:
        info.key = key
    if model_group is not None:
        info.model_group = model_group


def count_upstream_call() -> None:
    info = _current.get()
    if info is not None:
        info.upstream_calls += 1
