"""What a deployment charges per batch token, in USD.

LiteLLM's rules, per side (input, output): the deployment's `model_info.*_cost_per_token_batches`;
else its `model_info.*_cost_per_token` x 0.5 (LiteLLM's `batch_cost_calculator` does the same:
"batch cost is usually half of the regular token cost"); else the bundled table of public batch
prices (gateway/data/batch_prices.json, looked up by `model_info.base_model` or the upstream
model). A side with none of these leaves the deployment unpriced: its batches cost `null`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.provider import Deployment

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-4o-mini-2024-07-18 -> gpt-4o-mini


@dataclass(frozen=True)
class Prices:
    input: float  # USD per input token
    output: float  # USD per output token

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.input + output_tokens * self.output


@functools.cache
def _table() -> dict[str, dict[str, Any]]:
    raw = json.loads(resources.files("gateway").joinpath("data/batch_prices.json").read_text())
    models: dict[str, dict[str, Any]] = raw["models"]
    return models


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def _side(info: Any, listed: dict[str, Any] | None, side: str) -> float | None:
    batch = _number(info.get(f"{side}_cost_per_token_batches"))
    if batch is not None:
        return batch
    regular = _number(info.get(f"{side}_cost_per_token"))
    if regular is not None:
        return regular * 0.5
    return _number(listed.get(f"{side}_cost_per_token_batches")) if listed else None


def listed_prices(model: str) -> dict[str, Any] | None:
    """The bundled table's entry for `model` (exactly, or without a `-YYYY-MM-DD` suffix)."""
    table = _table()
    return table.get(model) or table.get(_DATED.sub("", model))


def prices_for(deployment: Deployment) -> Prices | None:
    """The deployment's batch prices, or None when a side has no price anywhere."""
    info = deployment.model_info
    base = info.get("base_model")
    listed = listed_prices(base if isinstance(base, str) and base else deployment.model)
    input_price = _side(info, listed, "input")
    output_price = _side(info, listed, "output")
    if input_price is None or output_price is None:
        return None
    return Prices(input_price, output_price)
