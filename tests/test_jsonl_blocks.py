"""The block path (`Spooler._fast`, `ModelSwap.block`, `jsonl.blocks`) against the per-line
reference: same lines kept, same state, same error with the same line, same bytes per copy."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.jsonl import BATCH_BYTES, Block, LineError, ModelSwap, Spooler, blocks, spooled_blocks
from gateway.provider import RenameModel
from gateway.rewrite import Rewriter
from tests.helpers import request_line

G = "g"


class PerLine(Spooler):
    """The reference: every block through the per-line code."""

    def _fast(self, lines: list[bytes], data: bytes) -> Block | None:
        return None


def line(custom_id: str, model: str = G, **body: Any) -> bytes:
    return json.dumps(request_line(custom_id, model, **body)).encode()


def outcome(cls: type[Spooler], data: bytes, chunks: list[int], targets: list[str] | None = None,
            max_lines: int = 10_000, max_line: int = 1 << 20) -> tuple[Any, ...]:
    """Everything a caller can see after feeding `data` in pieces of the given sizes (cycled):
    the error (message, code, line) or the state and the lines handed over, line by line."""
    s = cls(max_bytes=1 << 30, max_line_bytes=max_line, max_lines=max_lines)
    if targets is not None:
        s.stream_to(targets, max_lines, 1 << 30)
    got: list[tuple[int, bytes]] = []
    try:
        start, i = 0, 0
        while start < len(data):
            size = chunks[i % len(chunks)]
            s.feed(data[start:start + size])
            start, i = start + size, i + 1
            got += [p for b in s.take_blocks()[0] for p in b.numbered()]
        s.finish()
        got += [p for b in s.take_blocks()[0] for p in b.numbered()]
    except LineError as e:
        return ("error", e.message, e.code, e.line_no)
    except Exception as e:  # the file-level 400s
        return ("error", str(e), getattr(e, "code", None))
    finally:
        s.close()
    return ("ok", s.lines, s.line_no, s.url, list(s.models.items()), s._custom_ids, got)


def same(data: bytes, targets: list[str] | None = None, **limits: int) -> tuple[Any, ...]:
    """Asserts both paths agree for several ways of cutting `data`; returns the outcome."""
    ref = outcome(PerLine, data, [1 << 30], targets, **limits)
    for chunks in ([1 << 30], [BATCH_BYTES], [7], [4096, 1], [65_536, 3, 200_000]):
        assert outcome(Spooler, data, chunks, targets, **limits) == ref, chunks
        assert outcome(PerLine, data, chunks, targets, **limits) == ref, chunks
    return ref


GOOD = [line(f"c-{i}") for i in range(40)]


def file(*lines: bytes, end: bytes = b"\n") -> bytes:
    return end.join(lines) + end


TRICKY = {
    "plain": file(*GOOD),
    "no final newline": file(*GOOD)[:-1],
    "bom": b"\xef\xbb\xbf" + file(*GOOD),
    "crlf": file(*GOOD, end=b"\r\n"),
    "crlf blank lines": file(GOOD[0], b"", b"\r", GOOD[1], end=b"\r\n"),
    "blank lines": file(GOOD[0], b"", b"   ", b"\t", *GOOD[1:]),
    "leading and trailing spaces": file(b"  " + GOOD[0], GOOD[1] + b"  ", *GOOD[2:]),
    "escaped model key": file(GOOD[0], b'{"custom_id":"e","method":"POST","url":'
                              b'"/v1/chat/completions","body":{"mod\\u0065l":"g"}}'),
    "escaped model value": file(GOOD[0], b'{"custom_id":"e","method":"POST","url":'
                                b'"/v1/chat/completions","body":{"model":"\\u0067"}}'),
    "duplicate model keys": file(GOOD[0], b'{"custom_id":"d","method":"POST","url":'
                                 b'"/v1/chat/completions","body":{"model":"x","model":"g"}}'),
    "quote before model": file(GOOD[0], b'{"custom_id":"q","method":"POST","url":'
                               b'"/v1/chat/completions","body":{"x\\"model":"g","model":"g"}}'),
    "bad utf-8 late in a block": file(*GOOD[:30], GOOD[30].replace(b"Say", b"S\xe9y"),
                                      *GOOD[31:]),
    "truncated utf-8 at a line end": file(*GOOD[:5], GOOD[5] + b"\xc3", *GOOD[6:]),
    "good utf-8": file(*GOOD[:5], line("é-ü", content="日本語 — «»"), *GOOD[6:]),
    "two values on a line": file(GOOD[0], b'{"custom_id":"a1","method":"POST","url":'
                                 b'"/v1/chat/completions","body":{"model":"g"}} '
                                 b'{"custom_id":"a2","method":"POST","url":'
                                 b'"/v1/chat/completions","body":{"model":"g"},"x":[{}',
                                 b'{}]}', *GOOD[1:]),
    "value over a line break": file(GOOD[0], GOOD[1][:-1] + b',"x":[1', b'2]}', *GOOD[2:]),
    "duplicate custom_id": file(*GOOD, GOOD[3]),
    "empty custom_id": file(*GOOD[:3], line("")),
    "wrong method": file(*GOOD[:3], GOOD[3].replace(b'"POST"', b'"GET"')),
    "unsupported url": file(*GOOD[:3], GOOD[3].replace(b"chat/completions", b"audio/speech")),
    "mixed urls": file(*GOOD[:3], GOOD[3].replace(b"chat/completions", b"embeddings")),
    "model not targeted": file(*GOOD[:3], line("m", "other")),
    "empty model": file(*GOOD[:3], line("m", "")),
    "two models": file(line("a", "h"), *GOOD[:3], line("b", "h"), line("c", "i")),
    "not an object": file(*GOOD[:3], b"[1, 2]"),
    "bad json": file(*GOOD[:3], b'{"custom_id": "x",'),
    "deep": file(GOOD[0], GOOD[1][:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "missing field": file(*GOOD[:3], b'{"custom_id":"x","method":"POST","body":{"model":"g"}}'),
    "only blank lines": b"\n \n\r\n",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(TRICKY))
@pytest.mark.parametrize("targets", [None, [G, "h", "i"]], ids=["spooled", "streamed"])
def test_block_path_agrees_with_the_per_line_path(name: str, targets: list[str] | None) -> None:
    same(TRICKY[name], targets)


def test_the_tricky_cases_do_what_they_say() -> None:
    assert same(TRICKY["two values on a line"])[:2] == (
        "error", "Line 2: not valid JSON (JSON is malformed: trailing characters (byte 86)).")
    assert same(TRICKY["value over a line break"])[3] == 2
    assert same(TRICKY["bad utf-8 late in a block"])[1:] == (
        "Line 31: not valid UTF-8 (byte 138).", "invalid_utf8", 31)
    ok = same(TRICKY["crlf blank lines"], [G])
    assert ok[0] == "ok" and [n for n, _ in ok[-1]] == [1, 4]
    assert all(not raw.endswith(b"\r") for _, raw in ok[-1])


@pytest.mark.parametrize("at", [-1, 0, 1])
def test_max_line_size_at_a_block_edge(at: int) -> None:
    limit = 4096
    first = line("a", pad="x" * 100)
    long = line("b", pad="")
    long = long[:-2] + b',"p":"' + b"y" * (limit + at - len(long) - 7) + b'"}}'
    assert len(long) == limit + at
    data = file(first, long, line("c"))
    for cut in (len(first) + 1, len(first) + 1 + limit // 2, len(first) + 1 + len(long)):
        for cls in (Spooler, PerLine):
            assert outcome(cls, data, [cut, 1 << 30], max_line=limit) == outcome(
                PerLine, data, [1 << 30], max_line=limit)
    result = same(data, max_line=limit)
    assert (result[0] == "ok") == (at <= 0)


def test_request_limit_at_a_block_edge() -> None:
    data = file(*GOOD)
    assert same(data, max_lines=39)[1:] == (
        "Line 40: the file has more than 39 requests.", "too_many_requests", 40)
    assert same(data, max_lines=40)[0] == "ok"


def test_a_line_spanning_blocks() -> None:
    big = line("big", content="z" * (3 * BATCH_BYTES))
    same(file(*GOOD[:10], big, *GOOD[10:]), [G])


def random_line(rng: random.Random, i: int) -> bytes:
    good = line(f"r-{i}", rng.choice([G, G, G, "h"]), temperature=0.5)
    kind = rng.randrange(40)
    if kind == 0:
        return b""
    if kind == 1:
        return good + b"\r"
    if kind == 2:
        return good.replace(b"hello", b"h\xe9llo")
    if kind == 3:
        return good.replace(b"hello", "héllo".encode())
    if kind == 4:
        return line(f"r-{rng.randrange(i + 1)}")  # maybe a duplicate
    if kind == 5:
        return good[: rng.randrange(len(good))]
    if kind == 6:
        return good.replace(b'"model"', b'"mod\\u0065l"')
    if kind == 7:
        return good.replace(b'"POST"', b'"PUT"')
    if kind == 8:
        return b" " + good
    if kind == 9:
        return line(f"r-{i}", "other")
    return good


@pytest.mark.parametrize("seed", range(30))
def test_random_files_agree(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 400)
    data = b"\n".join(random_line(rng, i) for i in range(n)) + rng.choice([b"", b"\n"])
    targets = rng.choice([None, [G, "h"]])
    ref = outcome(PerLine, data, [1 << 30], targets)
    chunks = [rng.choice([1, 50, 3000, 20_000, BATCH_BYTES]) for _ in range(5)]
    assert outcome(Spooler, data, chunks, targets) == ref


# -- the rename -------------------------------------------------------------------------------


def per_line(rewriter: Rewriter, block: Block) -> bytes:
    from gateway.jsonl import rewrite_lines

    return rewrite_lines(block.numbered(), rewriter.prepare, rewriter.swap)


RENAME = [
    b'{"custom_id":"a","body":{"model":"g"}}',
    b'{"custom_id":"a", "body": {"model" : "g", "messages": []}}',
    b'{"custom_id":"a","body":{"model":"g","messages":[{"content":"\\"model\\": \\"g\\""}]}}',
    b'{"custom_id":"a","body":{"tools":[{"model":"g"}],"model":"g"}}',
    b'{"model":"g","custom_id":"a","body":{"model":"g"}}',
    b'{"custom_id":"a","body":{"model":"\\u0067"}}',
    b'{"custom_id":"a","body":{"mod\\u0065l":"g","x":{"model":"g"}}}',
    b'{"custom_id":"a","body":{"x\\"model":"g","model":"\\u0067"}}',
    b'{"custom_id":"a","body":{"model":"h.2","x":"model"}}',
    b'{"custom_id":"a","body":{"model":"g","c":"\\u00e9 \\\\u"}}',
    b'{"custom_id":"a","body":{"model":"g","m":"model\\":\\"g"}}',
]


@pytest.mark.parametrize("raw", RENAME)
def test_block_rename_agrees_with_the_per_line_rename(raw: bytes) -> None:
    rewriter = Rewriter(RenameModel("deploy-1"), [G, "h.2"])
    plain = b'{"custom_id":"p","body":{"model":"g"}}'
    for lines in ([raw], [plain, raw, plain], [raw, raw], [plain] * 5):
        block = Block(b"".join(x + b"\n" for x in lines), range(3, 3 + len(lines)))
        assert rewriter(block) == per_line(rewriter, block)
    fast = ModelSwap([G, "h.2"], "deploy-1").block(raw + b"\n", 1)
    if fast is not None:
        expected = json.loads(raw)
        expected["body"]["model"] = "deploy-1"
        assert json.loads(fast) == expected


def test_block_rename_is_one_split_for_ordinary_blocks() -> None:
    data = file(*GOOD)
    swap = ModelSwap([G], "deploy-1")
    assert swap.block(data, len(GOOD)) == data.replace(b'"model": "g"', b'"model":"deploy-1"')
    # One line short of a match each: not for the block path.
    assert swap.block(data + line("x", "h") + b"\n", len(GOOD) + 1) is None


def test_a_missed_line_and_a_doubled_line_in_one_block_take_the_line_path() -> None:
    rewriter = Rewriter(RenameModel("dep"), [G, "h"])
    missed, doubled = RENAME[5], RENAME[3]  # "\u0067" (0 matches), tools + body (2 matches)
    block = Block(missed + b"\n" + doubled + b"\n", range(1, 3))
    assert rewriter.swap is not None and rewriter.swap.block(block.data, 2) is None
    assert rewriter(block) == per_line(rewriter, block)


@pytest.mark.parametrize("seed", range(30))
def test_random_blocks_rename_like_lines(seed: int) -> None:
    rng = random.Random(seed)
    rewriter = Rewriter(RenameModel("dep"), [G, "h"])
    # With the escaped spellings in the pool a block can hold a line the pattern misses and a
    # line it matches twice: the count of matches alone would look right.
    pool = [*RENAME, *(x.replace(b'"g"', b'"h"') for x in RENAME[:5]),
            line("a"), line("b", "h"), line("c", content='"model": "g"')]
    lines = [rng.choice(pool) for _ in range(rng.randrange(1, 60))]
    block = Block(b"".join(x + b"\n" for x in lines), range(1, len(lines) + 1))
    assert rewriter(block) == per_line(rewriter, block)


# -- reading validated bytes back as blocks ---------------------------------------------------


def test_spooled_and_kept_bytes_come_back_as_the_validated_blocks() -> None:
    import asyncio

    data = file(b"", GOOD[0], b"  ", *(g + b"\r" for g in GOOD[1:20]),
                line("big", content="z" * BATCH_BYTES), *GOOD[20:])[:-1]
    s = Spooler(max_bytes=1 << 30, max_line_bytes=1 << 20, max_lines=10_000)
    s.feed(data)
    s.finish()
    streamed = outcome(Spooler, data, [4096], [G])[-1]
    spooled = [p for b in spooled_blocks(s.spooled()) for p in b.numbered()]
    s.close()
    assert spooled == streamed and [n for n, _ in spooled][:2] == [2, 4]

    async def kept() -> list[tuple[int, bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 100_000):
                yield data[i:i + 100_000]

        return [p async for b in blocks(chunks()) for p in b.numbered()]

    assert asyncio.run(kept()) == streamed


@pytest.mark.parametrize("shift", range(4))
def test_utf8_across_the_check_pieces(shift: int) -> None:
    from gateway.jsonl import _UTF8_PIECE

    # A 4-byte character across the edge of the UTF-8 check's pieces, at every offset.
    pad = "a" * (_UTF8_PIECE - 120 + shift)
    good = line("u", content=pad + "\U0001F600" * 3)
    data = file(line("x", content=json.dumps("é")), good.replace(b"\\ud83d\\ude00", "😀".encode()))
    assert same(data)[0] == "ok"
    broken = data.replace("😀".encode(), b"\xf0\x9f\x98", 1)
    assert same(broken)[2:] == ("invalid_utf8", 2)
