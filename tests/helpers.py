"""Building batch request files for tests."""

from __future__ import annotations

import io
import json
from typing import Any


def request_line(custom_id: str, model: str = "gpt-4o-batch", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"Say hello to {custom_id}"}],
            **body,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def batch_file(n: int = 3, model: str = "gpt-4o-batch", prefix: str = "req") -> io.BytesIO:
    data = io.BytesIO(jsonl([request_line(f"{prefix}-{i}", model) for i in range(n)]))
    data.name = "batch.jsonl"
    return data
