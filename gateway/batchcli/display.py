"""What the batch CLI shows while it works.

Three displays with one interface: `Bars` (rich progress bars, when stdout is a terminal),
`Lines` (plain lines, one per change: for logs and CI) and `Display` itself, which shows
nothing (with `--json`, where the command prints one JSON object at the end).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


def clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def size(n: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # not reached


class Counts:
    """The parts of a Batch the displays use."""

    def __init__(self, batch: Any) -> None:
        rc = batch.request_counts
        self.id: str = batch.id
        self.status: str = batch.status
        self.completed = int(rc.completed) if rc else 0
        self.failed = int(rc.failed) if rc else 0
        self.total = int(rc.total) if rc else 0
        self.created_at = float(batch.created_at)
        self.started_at = float(batch.in_progress_at or batch.created_at)

    @property
    def done(self) -> int:
        return self.completed + self.failed

    def timing(self, now: float) -> str:
        """`elapsed 0:01:05, about 0:02:10 left`: the estimate assumes the requests done so
        far are a fair sample of the rest."""
        text = f"elapsed {clock(now - self.created_at)}"
        if 0 < self.done < self.total and now > self.started_at:
            left = (now - self.started_at) * (self.total - self.done) / self.done
            text += f", about {clock(left)} left"
        return text


class Transfer:
    """One upload or download; `update(position)` as bytes move."""

    def update(self, position: int) -> None:
        pass

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass


class Watch:
    """One batch being waited on; `update(batch)` after every retrieve."""

    def update(self, batch: Any) -> None:
        pass

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass


class Display:
    """Shows nothing (`--json`)."""

    def say(self, text: str) -> None:
        pass

    def transfer(self, label: str, total: int | None) -> Transfer:
        return Transfer()

    def watch(self) -> Watch:
        return Watch()


# -- plain lines -------------------------------------------------------------------------------


class Lines(Display):
    def say(self, text: str) -> None:
        print(text, flush=True)

    def transfer(self, label: str, total: int | None) -> Transfer:
        return _LineTransfer(self, label, total)

    def watch(self) -> Watch:
        return _LineWatch(self)


class _LineTransfer(Transfer):
    """A line at the start, at every quarter and at the end."""

    def __init__(self, out: Lines, label: str, total: int | None) -> None:
        self.out, self.label, self.total = out, label, total
        self.position = 0
        self.quarter = 0

    def __enter__(self) -> Transfer:
        self.out.say(f"{self.label}: {size(self.total)}" if self.total is not None
                     else f"{self.label}...")
        return self

    def update(self, position: int) -> None:
        self.position = position
        if self.total:
            quarter = min(position * 4 // self.total, 4)
            if 0 < quarter < 4 and quarter > self.quarter:
                self.quarter = quarter
                self.out.say(f"{self.label}: {quarter * 25}% ({size(position)})")

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if t is None:
            self.out.say(f"{self.label}: 100% ({size(self.position)})")


class _LineWatch(Watch):
    """A line whenever the status or the counts change, and at least every `quiet` seconds
    (so a log shows the wait is alive)."""

    def __init__(self, out: Lines, quiet: float = 60.0) -> None:
        self.out = out
        self.quiet = quiet
        self.last: tuple[str, int, int, int] | None = None
        self.said = 0.0

    def update(self, batch: Any) -> None:
        c = Counts(batch)
        state = (c.status, c.completed, c.failed, c.total)
        now = time.monotonic()
        if state != self.last or now - self.said >= self.quiet:
            self.last, self.said = state, now
            self.out.say(f"{c.id} {c.status}: {c.done}/{c.total} requests "
                         f"({c.failed} failed), {c.timing(time.time())}")


# -- progress bars -----------------------------------------------------------------------------


class Bars(Display):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout)

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def transfer(self, label: str, total: int | None) -> Transfer:
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=self.console,
        )
        return _BarTransfer(progress, label, total)

    def watch(self) -> Watch:
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"), _BatchTime(),
            console=self.console, refresh_per_second=4,
        )
        return _BarWatch(progress)


class _BarTransfer(Transfer):
    def __init__(self, progress: Progress, label: str, total: int | None) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task(label, total=total)

    def __enter__(self) -> Transfer:
        self.progress.start()
        return self

    def update(self, position: int) -> None:
        self.progress.update(self.task, completed=position)

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()


class _BatchTime(ProgressColumn):
    """Elapsed since the batch was created and the time left, ticking between polls."""

    def render(self, task: Task) -> Text:
        counts: Counts | None = task.fields.get("batch")
        if counts is None:
            return Text("")
        return Text(counts.timing(time.time()), style="progress.elapsed")


class _BarWatch(Watch):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task("batch", total=None, counts="", batch=None)

    def __enter__(self) -> Watch:
        self.progress.start()
        return self

    def update(self, batch: Any) -> None:
        c = Counts(batch)
        self.progress.update(
            self.task,
            description=f"{c.id} {c.status}",
            total=c.total or None,
            completed=c.done,
            counts=f"{c.done}/{c.total} ({c.failed} failed)",
            batch=c,
        )

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()


def choose(json_mode: bool) -> Display:
    """Bars on a terminal, lines otherwise, nothing with --json."""
    if json_mode:
        return Display()
    console = Console(file=sys.stdout)
    return Bars(console) if console.is_terminal else Lines()
