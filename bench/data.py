"""Generated batch input files: realistic chat request lines with unique custom_ids.

Made by the benchmark at run time into a temporary directory, never committed.
"""

from __future__ import annotations

import json
import os

_CORPUS = (
    "Summarise the following customer message and classify its sentiment as positive, neutral "
    "or negative. Keep the summary under fifty words and mention the product by name. "
    "The parcel arrived two days late, the box was dented, but the headphones themselves sound "
    "great and the battery easily lasts a long flight. Support answered within an hour. "
    "Translate the answer into French as well: « Le colis est arrivé en retard, mais le son est "
    "excellent » — naïve café résumé. Then list three follow-up questions an agent could ask. "
    "Extract every date, amount and order number you can find and return them as JSON. "
)
_SYSTEM = "You are a careful assistant for a consumer electronics shop. Answer concisely."


_CORPUS_BYTES = _CORPUS.encode()


def request_line(i: int, model: str, size: int) -> bytes:
    """One request line of about `size` bytes (at least ~350). The corpus has no characters
    JSON escapes, so its UTF-8 bytes go into the string as they are."""
    head = (
        f'{{"custom_id":"req-{i:08d}","method":"POST","url":"/v1/chat/completions",'
        f'"body":{{"model":{json.dumps(model)},"messages":[{{"role":"system","content":'
        f'{json.dumps(_SYSTEM)}}},{{"role":"user","content":"Ticket {i}: '
    ).encode()
    tail = (
        f'"}}],"max_tokens":256,"temperature":0.2,"metadata":{{"ticket":"{100_000 + i}"}}}}}}\n'
    ).encode()
    want = max(16, size - len(head) - len(tail))
    n = len(_CORPUS_BYTES)
    start = (i * 37) % n
    reps = (start + want) // n + 1
    text = (_CORPUS_BYTES * reps)[start : start + want].decode("utf-8", "ignore").encode()
    return head + text + tail


def make_file(path: str, lines: int, total_bytes: int, model: str) -> dict[str, int]:
    """Write `lines` request lines adding up to about `total_bytes`."""
    per_line = max(350, total_bytes // lines)
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb", buffering=1 << 20) as f:
            for i in range(lines):
                f.write(request_line(i, model, per_line))
        os.replace(tmp, path)
    return {"lines": lines, "bytes": os.path.getsize(path)}
