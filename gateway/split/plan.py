"""How a batch is cut: the number of parts asked for, and each part's lines by weight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import BadRequest

AUTO = "auto"


def wanted_parts(value: Any, split_over: float | None,
                 request_count: int | None) -> int | str:
    """What the client asked for: "auto", a number of parts (1: not split), or what
    `general_settings.split_batches_over` says for a file of `request_count` lines."""
    if value is None:
        if split_over is not None and request_count is not None and request_count > split_over:
            return AUTO
        return 1
    if value == AUTO:
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        return value
    raise BadRequest("split must be 'auto' or a number of parts from 1 to 1000.",
                     param="split", code="invalid_split")


def weight(model_info: Mapping[str, Any]) -> float:
    """A deployment's `model_info.weight` (LiteLLM's name), 1 when absent or unusable."""
    value = model_info.get("weight")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 1.0


def sizes(total: int, weights: Sequence[float]) -> list[int]:
    """`total` lines over parts in proportion to `weights`, each at least one line (largest
    remainders first); `total` must be at least the number of parts."""
    n = len(weights)
    assert 0 < n <= total
    spare = total - n  # every part has one line; the rest by weight
    whole = sum(weights)
    exact = [spare * w / whole for w in weights]
    out = [1 + int(x) for x in exact]
    left = total - sum(out)
    for i in sorted(range(n), key=lambda i: (int(exact[i]) - exact[i], i))[:left]:
        out[i] += 1
    return out


def ranges(total: int, weights: Sequence[float]) -> list[tuple[int, int]]:
    """(first line, line count) of each part, contiguous, in part order."""
    out = []
    first = 1
    for count in sizes(total, weights):
        out.append((first, count))
        first += count
    return out
