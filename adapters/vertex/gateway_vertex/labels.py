"""Carrying arbitrary strings through GCP labels.

Vertex has no `custom_id`, and does not keep the input order, but every prediction line echoes
its request, `labels` included. Label keys and values allow only lowercase letters, digits, `_`
and `-`, at most 63 characters, 64 labels per request: so strings are stored as lowercase
base32 (alphabet a-z2-7, no padding), split over numbered keys. The encoding is exact for any
Unicode string, unlike sanitising, so two custom_ids can never collide.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

MAX_LABELS = 64
MAX_VALUE = 63
# The readable first label of a chunked value; more chunks follow as `<key>_1`, `<key>_2`, ...
_CHUNK = MAX_VALUE
_INVALID = re.compile(r"[^a-z0-9_-]+")


def encode(key: str, text: str) -> dict[str, str]:
    """`text` as one or more labels under `key`, `key_1`, ... (`key` alone if it fits)."""
    b32 = base64.b32encode(text.encode()).decode().rstrip("=").lower()
    chunks = [b32[i : i + _CHUNK] for i in range(0, len(b32), _CHUNK)] or [""]
    return {(key if n == 0 else f"{key}_{n}"): chunk for n, chunk in enumerate(chunks)}


def decode(key: str, labels: Mapping[str, object]) -> str | None:
    """The string `encode(key, ...)` stored, or None when `labels` does not carry one."""
    first = labels.get(key)
    if not isinstance(first, str):
        return None
    parts = [first]
    n = 1
    while isinstance(labels.get(f"{key}_{n}"), str):
        parts.append(str(labels[f"{key}_{n}"]))
        n += 1
    b32 = "".join(parts).upper()
    try:
        return base64.b32decode(b32 + "=" * (-len(b32) % 8)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def sanitise_key(key: str) -> str:
    """A best-effort readable label key (lossy; for user-facing tags such as `metadata`)."""
    key = _INVALID.sub("_", key.lower()).strip("_")[:MAX_VALUE]
    return key if key[:1].isalpha() else f"k_{key}"[:MAX_VALUE]


def sanitise_value(value: str) -> str:
    return _INVALID.sub("_", value.lower())[:MAX_VALUE]
