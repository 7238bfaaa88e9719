"""Unified ids: opaque, unguessable, prefixed. 128 random bits in base62; nothing encoded."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LENGTH = 22  # 62**22 > 2**128


def _base62(bits: int) -> str:
    n = secrets.randbits(bits)
    out = []
    for _ in range(_LENGTH):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def new_file_id() -> str:
    return "file-" + _base62(128)


def new_batch_id() -> str:
    return "batch_" + _base62(128)


def new_event_id() -> str:
    return "evt_" + _base62(128)


def new_key() -> str:
    # Virtual keys carry more entropy than ids: they are the credential.
    return "sk-" + _base62(128) + _base62(128)


def looks_like(prefix: str, value: str) -> bool:
    """Cheap shape check so that garbage ids answer 404 without a database round trip."""
    body = value[len(prefix):]
    return (
        value.startswith(prefix)
        and len(body) == _LENGTH
        and all(c in _ALPHABET for c in body)
    )
