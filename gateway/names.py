"""`target_model_names` as users send it: one module, used by the API and the upload service."""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest


def model_names(*values: Any) -> list[str]:
    """`target_model_names` as users send it: "a,b", ["a", "b"], repeated fields. Order kept."""
    out: list[str] = []
    for value in values:
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if item is None:
                continue
            if not isinstance(item, str):
                raise BadRequest("target_model_names must be strings.", param="target_model_names")
            for name in item.split(","):
                name = name.strip()
                if name and name not in out:
                    out.append(name)
    return out
