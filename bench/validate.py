"""Micro-benchmark: the core's `gateway.jsonl.Spooler` (validate + spool) on a generated file.

    python -m bench.validate FILE [ROUNDS]   → JSON on stdout

The file is read into memory first (chunks of 256 KiB, asyncio's socket read size), so only
`feed()`/`finish()` are timed. The "direct" figure is the same chunks written to a temporary
file: the spooling I/O alone, the floor for any validating spooler.

For the upload workloads it also times the other per-byte step of an upload, making one
deployment's copy from the spool with a `RenameModel` rewrite (parsing every line, and with the
core's byte-level model swap where it has one), and `iter_lines` alone.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import statistics
import sys
import tempfile
import time
from typing import Any

from gateway.jsonl import Spooler

# The copy-making helpers have changed shape as the core evolved: look them up by name.
jsonl: Any = importlib.import_module("gateway.jsonl")
MODEL, DEPLOYMENT_MODEL = "bench-batch", "gpt-4o-mini"


def _prepare(line: dict[str, Any]) -> dict[str, Any]:
    line["body"]["model"] = DEPLOYMENT_MODEL
    return line


def _spooled_fd(sp: Spooler) -> int:
    finish: Any = sp.finish
    done = finish()  # older cores returned the spool file
    spooled: Any = getattr(sp, "spooled", None)
    return int(spooled()) if spooled is not None else int(done.fileno())


def rewrite_one_copy(fd: int, swap: bool) -> int | None:
    """Bytes of one deployment's copy made from the spool as the core does; None if this
    version of the core has no helper to time."""
    prepare = _prepare
    n = 0
    if hasattr(jsonl, "spooled_blocks"):  # blocks: the rename as one split per block
        from gateway.provider import RenameModel
        from gateway.rewrite import Rewriter

        rewriter = Rewriter(RenameModel(DEPLOYMENT_MODEL), [MODEL])
        if not swap:
            rewriter.swap = None
        for block in jsonl.spooled_blocks(fd):
            n += len(rewriter(block))
        return n
    if hasattr(jsonl, "rewrite_lines"):
        swapper = jsonl.ModelSwap([MODEL], DEPLOYMENT_MODEL) if swap else None
        for batch in jsonl.line_batches(fd):
            n += len(jsonl.rewrite_lines(batch, prepare, swapper))
        return n
    if hasattr(jsonl, "rewritten") and not swap:
        async def drain() -> int:
            total = 0
            async for chunk in jsonl.rewritten(fd, prepare):
                total += len(chunk)
            return total
        return asyncio.run(drain())
    return None


CHUNK = 256 << 10


def main() -> None:
    path = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with open(path, "rb") as f:
        chunks = list(iter(lambda: f.read(CHUNK), b""))
    size = sum(map(len, chunks))
    raw, spool = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out:
            for c in chunks:
                out.write(c)
            out.flush()
        raw.append(time.perf_counter() - t0)

        sp = Spooler(max_bytes=1 << 40, max_line_bytes=10 << 20, max_lines=10**9)
        t0 = time.perf_counter()
        for c in chunks:
            sp.feed(c)
        sp.finish()
        spool.append(time.perf_counter() - t0)
        sp.close()
    # One deployment's copy from a spooled file (parsing every line, and with the byte-level
    # model swap where the core has one), and line splitting alone.
    sp = Spooler(max_bytes=1 << 40, max_line_bytes=10 << 20, max_lines=10**9)
    for c in chunks:
        sp.feed(c)
    fd = _spooled_fd(sp)
    timings: dict[str, list[float]] = {"iter_lines": [], "rewrite": [], "rewrite_swap": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _n, _line in jsonl.iter_lines(fd):
            pass
        timings["iter_lines"].append(time.perf_counter() - t0)
        for name, swap in (("rewrite", False), ("rewrite_swap", True)):
            t0 = time.perf_counter()
            if rewrite_one_copy(fd, swap) is not None:
                timings[name].append(time.perf_counter() - t0)
    sp.close()
    extra: dict[str, float | None] = {}
    for name, runs in timings.items():
        t = statistics.median(runs) if runs else None
        extra[f"{name}_seconds"] = t
        extra[f"{name}_mb_s"] = size / t / 1e6 if t else None
    r, s = statistics.median(raw), statistics.median(spool)
    print(json.dumps({
        **extra,
        "bytes": size, "lines": sp.lines, "chunk": CHUNK,
        "raw_seconds": r, "raw_mb_s": size / r / 1e6,
        "spooler_seconds": s, "spooler_mb_s": size / s / 1e6,
        "raw_runs": raw, "spooler_runs": spool,
    }))


if __name__ == "__main__":
    main()
