"""One batch run as parts on several deployments of its group at once (split batches).

`plan` (how many parts, which lines each), `inputs` (a part's lines), `submit` (a part onto a
deployment: its own upstream copy, intents, failover once), `create` (the batch and its parts),
`track` (polling the parts, retrying a failed one, cancel, the end rule, the admin view) and
`merge` (one output and one error file from every part, in input order).

A split batch's row names `SPLIT` as its provider batch id and its first part's deployment (so
the background refresh of an instance with that deployment keeps it fresh); its parts live in
`gateway_batch_parts`.
"""

from __future__ import annotations

from gateway.store import BatchRow
from gateway.tracking import SPLIT
from gateway.types import ResultKind

__all__ = ["SPLIT", "is_split", "result_key"]


def is_split(row: BatchRow) -> bool:
    return row.provider_batch_id == SPLIT


def result_key(batch_id: str, which: ResultKind) -> str:
    """Where a split batch's merged output or error file is kept."""
    return f"splits/{batch_id}/{'output' if which == 'output' else 'errors'}.jsonl"
