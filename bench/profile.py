"""`--profile`: one extra gateway round per workload under py-spy, summarised as text.

The measured rounds are never profiled (py-spy pauses the process to sample it). Summaries go to
bench/results/profiles/<db>-<workload>.txt: share of the gateway's main-thread samples per
function (inclusive and self), with the event loop's idle wait (`EpollSelector.select`) shown
separately so "busy" time can be read off. py-spy comes from PyPI: `pip install py-spy`.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

RATE = 250  # samples per second
_LINE = re.compile(r":\d+\)$")
# Frames every request passes through; they would fill the top of the inclusive list.
_BORING = re.compile(
    r"runpy|threading\.py|base_events\.py|runners\.py|uvicorn/(main|server|_compat)|"
    r"gateway/cli\.py|events\.py|proxy_headers|starlette/(applications|routing|middleware|"
    r"_exception_handler)|h11_impl\.py\)$"
)


def py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, raw_path: str) -> None:
        self.pid, self.raw_path = pid, raw_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self.proc = subprocess.Popen(
            [exe, "record", "-p", str(self.pid), "-r", str(RATE), "-f", "raw", "-o",
             self.raw_path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # attach
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(2)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarise(raw_path: str, title: str, top: int = 40, main_only: bool = True) -> str:
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = other = 0
    try:
        with open(raw_path) as f:
            lines = f.read().splitlines()
    except OSError:
        return f"# {title}\n(no profile: {raw_path} missing)\n"
    for line in lines:
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        if main_only and not stack.startswith("_run_module_as_main"):
            other += n
            continue
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        for name in set(frames):
            incl[name] += n
        own[frames[-1]] += n
    if not total:
        return f"# {title}\n(no samples)\n"
    # asyncio's loop waits in EpollSelector.select; uvloop's C loop shows as Runner.run itself
    # (waiting, or doing socket I/O in C).
    idle = own.get("EpollSelector.select (selectors.py)", 0)
    in_uvloop = own.get("Runner.run (asyncio/runners.py)", 0)
    loop = (f"event loop idle (epoll wait) {100 * idle / total:.1f}%" if idle or not in_uvloop
            else f"in uvloop's C loop (waiting or socket I/O) {100 * in_uvloop / total:.1f}%")
    out = [f"# {title}",
           f"{total} main-thread samples at {RATE} Hz; {loop}, Python frames "
           f"{100 * (total - idle - in_uvloop) / total:.1f}%"
           + (f"; other threads' samples (mostly waiting) {other}" if other else ""),
           "", "## inclusive (% of main-thread samples)"]
    for name, n in incl.most_common():
        if len(out) > top + 4:
            break
        if not _BORING.search(name) and name != "EpollSelector.select (selectors.py)":
            out.append(f"{100 * n / total:5.1f}%  {name}")
    out += ["", "## self"]
    for name, n in own.most_common(20):
        out.append(f"{100 * n / total:5.1f}%  {name}")
    return "\n".join(out) + "\n" + (stage_table(raw_path) if main_only else "")


# Upload stages, for `stages()`: a sample counts for the stage of its innermost frame that
# matches one of these (so a line check called from the multipart parser is "validation").
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("validation: UTF-8 check", re.compile(r"^_valid_utf8 |\(codecs\.py\)$")),
    ("validation", re.compile(r"^(Spooler\.|_block_of |not_targeted |_validation_message )")),
    ("rename (copies)", re.compile(r"^(Rewriter\.|ModelSwap\.|rewrite_lines |_needs_parser )")),
    ("line cutting (spool, kept)", re.compile(r"^(_Cutter\.|spooled_blocks |blocks |iter_lines )")),
    # The local store writes through asyncio.to_thread (its own task): counted here too.
    ("kept copy (file store)", re.compile(r"\(gateway/filestore\.py\)$|^to_thread ")),
    ("writing upstream (aiohttp)", re.compile(r"\(aiohttp/|^_Copy\.")),
    ("multipart parsing", re.compile(r"\(python_multipart/|^receive_upload\.<locals>")),
    ("receiving (uvicorn, starlette)", re.compile(r"\(uvicorn/protocols/|\(starlette/requests")),
    ("database", re.compile(r"\(gateway/store/|\(aiosqlite/|\(asyncpg/|\(sqlalchemy/")),
]


def stages(raw_path: str) -> dict[str, float]:
    """Share of the gateway's main-thread samples per upload stage (see STAGES); the rest is
    "other Python" or the event loop's own time (uvloop's C loop, socket I/O, waiting)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, n_text = line.rstrip("\n").rpartition(" ")
            if not stack or not stack.startswith("_run_module_as_main"):
                continue
            n = int(n_text)
            total += n
            frames = [_LINE.sub(")", fr) for fr in stack.split(";")]
            stage = next((name for fr in reversed(frames) for name, rule in STAGES
                          if rule.search(fr)), None)
            if stage is None:
                leaf = frames[-1]
                stage = ("event loop (C: I/O, waiting)"
                         if leaf.startswith(("Runner.run ", "EpollSelector.select "))
                         else "other Python")
            counts[stage] += n
    return {name: n / total for name, n in counts.most_common()} if total else {}


def stage_table(raw_path: str) -> str:
    shares = stages(raw_path)
    if not any(name.startswith("validation") for name in shares):
        return ""
    rows = [f"{100 * share:5.1f}%  {name}" for name, share in shares.items()]
    return "\n## upload stages (% of main-thread samples; innermost matching frame)\n" + \
        "\n".join(rows) + "\n"


def profile_command(argv: list[str], raw_path: str) -> Any:
    """Run a command under py-spy (for the in-process validation micro-benchmark)."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    return subprocess.run([exe, "record", "-r", str(RATE), "-f", "raw", "-o", raw_path, "--",
                           *argv], capture_output=True, check=False)
