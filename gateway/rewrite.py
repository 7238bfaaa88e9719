"""Turning validated OpenAI request lines into one deployment's lines (`Provider.rewrite()`).

`RenameModel` is done on the raw bytes where that is provably safe, a whole block at a time
(see `jsonl.ModelSwap`); `MapLines` parses each line and encodes what the adapter returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from gateway.jsonl import Block, ModelSwap, blocks, rewrite_lines
from gateway.provider import LineRewrite, MapLines, RenameModel


def _rename(model: str) -> Any:
    def prepare(line: dict[str, Any]) -> dict[str, Any]:
        line["body"]["model"] = model
        return line

    return prepare


class Rewriter:
    """One deployment's rewrite, for lines whose `body.model` is one of `names`."""

    def __init__(self, rewrite: LineRewrite, names: Iterable[str]) -> None:
        if isinstance(rewrite, RenameModel):
            self.swap: ModelSwap | None = ModelSwap(names, rewrite.model)
            self.prepare = _rename(rewrite.model)
        elif isinstance(rewrite, MapLines):
            self.swap = None
            self.prepare = rewrite.to_native
        else:
            raise TypeError(f"rewrite() must return RenameModel or MapLines, not {rewrite!r}")
        # Copies made by the same rename are identical: the fan-out makes them once.
        self.shared_as = rewrite if isinstance(rewrite, RenameModel) else None

    def __call__(self, block: Block) -> bytes:
        if self.swap is not None:
            whole = self.swap.block(block.data, len(block.numbers))
            if whole is not None:
                return whole
        # Line by line: a MapLines rewrite, or a block with a line the swap must not touch.
        return rewrite_lines(block.numbered(), self.prepare, self.swap)


async def rewritten(content: AsyncIterator[bytes], rewriter: Rewriter) -> AsyncIterator[bytes]:
    """A kept input file, as one deployment's lines, in pieces of about BATCH_BYTES."""
    async for block in blocks(content):
        yield rewriter(block)
