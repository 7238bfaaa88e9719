"""A part's lines: the kept input's lines `first` to `first + count - 1`, as one deployment
takes them (its rewrite), streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from gateway.jsonl import lines
from gateway.provider import Provider
from gateway.rewrite import Rewriter, rewritten
from gateway.runtime import Gateway
from gateway.store import FileRow

_PIECE = 256 << 10


async def part_lines(gw: Gateway, file: FileRow, provider: Provider, first: int,
                     count: int) -> AsyncIterator[bytes]:
    """The part's lines for `provider`, newline-terminated, in pieces of ~256 KiB."""
    content = await gw.files.open(file.kept_key or "")
    rewriter = Rewriter(provider.rewrite(), file.model_groups)
    last = first + count - 1
    n = 0
    piece: list[bytes] = []
    size = 0
    try:
        # Numbered as everywhere else: the n-th non-blank line of the input.
        async for raw in lines(rewritten(content, rewriter)):
            n += 1
            if n < first:
                continue
            if n > last:
                break
            piece.append(raw + b"\n")
            size += len(raw) + 1
            if size >= _PIECE:
                yield b"".join(piece)
                piece.clear()
                size = 0
        if piece:
            yield b"".join(piece)
    finally:
        close = getattr(content, "aclose", None)
        if close is not None:
            await close()


class _CustomId(msgspec.Struct):
    custom_id: str


_custom_id = msgspec.json.Decoder(_CustomId).decode


def custom_id(raw: bytes) -> str | None:
    """A request or result line's custom_id, or None when it has none."""
    try:
        return _custom_id(raw).custom_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def custom_ids(gw: Gateway, file: FileRow) -> AsyncIterator[str]:
    """The custom_id of every line of the kept input, in order (line n is the n-th)."""
    content = await gw.files.open(file.kept_key or "")
    try:
        async for raw in lines(content):
            yield custom_id(raw) or ""
    finally:
        close = getattr(content, "aclose", None)
        if close is not None:
            await close()
