"""The commands of `gateway batch` and `gateway files`, as clients of the public API through
the OpenAI SDK. Each returns its exit code and the JSON object `--json` prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import openai

from gateway.batchcli.display import Counts, Display, choose, clock, size
from gateway.batchcli.exits import (
    INTERRUPTED,
    OK,
    RUNNING,
    TERMINAL,
    USAGE,
    CliError,
    from_api,
    outcome,
)
from gateway.batchcli.transfer import ProgressReader, download

DEFAULT_BASE_URL = "http://127.0.0.1:4000/v1"
DEFAULT_ENDPOINT = "/v1/chat/completions"
# Consecutive failed retrieves (gateway restarting, upstream briefly down) tolerated while
# waiting, each after the SDK's own retries.
WAIT_ERRORS = 5

Result = tuple[int, dict[str, Any]]


class Context:
    def __init__(self, args: argparse.Namespace, display: Display) -> None:
        key = args.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise CliError("No API key: set OPENAI_API_KEY or pass --api-key.", USAGE)
        self.base_url: str = (args.base_url or os.environ.get("OPENAI_BASE_URL")
                              or DEFAULT_BASE_URL)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=2)
        self.display = display
        self.args = args


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json")
    return out


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def ended_at(batch: Any) -> int | None:
    stamps = (batch.completed_at, batch.failed_at, batch.expired_at, batch.cancelled_at)
    return next((t for t in stamps if t), None)


# -- submit and follow -------------------------------------------------------------------------


def metadata_of(pairs: list[str] | None) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata wants key=value, got {pair!r}.", USAGE)
        out[key] = value
    return out or None


def endpoint_of(path: Path) -> str:
    """The `url` of the file's first request: every line must have the same one."""
    with path.open("rb") as f:
        for raw in iter(lambda: f.readline(1 << 20), b""):
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    break  # the upload will name the line and the problem
                return url if isinstance(url, str) and url else DEFAULT_ENDPOINT
    return DEFAULT_ENDPOINT


def submit(ctx: Context, args: argparse.Namespace) -> Result:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"No such file: {path}", USAGE)
    metadata = metadata_of(args.metadata)
    endpoint = args.endpoint or endpoint_of(path)
    client, display = ctx.client, ctx.display
    try:
        with path.open("rb") as raw, \
                display.transfer(f"upload {path.name}", path.stat().st_size) as bar:
            file = client.files.create(
                file=(path.name, cast(IO[bytes], ProgressReader(raw, bar)),
                      "application/jsonl"),
                purpose="batch",
                extra_body={"target_model_names": args.model},
            )
    except KeyboardInterrupt:
        raise CliError("Interrupted during the upload: nothing was submitted.",
                       INTERRUPTED) from None
    display.say(f"uploaded {path.name} as {file.id}")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=cast(Any, endpoint),
        completion_window="24h",
        metadata=metadata,
        extra_body={"target_model_names": args.model,
                    **({"split": args.split} if args.split is not None else {})},
    )
    total = batch.request_counts.total if batch.request_counts else 0
    display.say(f"created {batch.id} on {args.model} ({total} requests, {endpoint})")
    extra = {"input_file": dump(file)}
    if not (args.wait or args.output or args.errors):
        display.say(f"follow it with: gateway batch status {batch.id} --wait")
        return OK, {"batch": dump(batch), **extra}
    return follow(ctx, args, batch, extra)


def status(ctx: Context, args: argparse.Namespace) -> Result:
    batch = ctx.client.batches.retrieve(args.id)
    if args.wait or args.output or args.errors:
        return follow(ctx, args, batch, {})
    describe(ctx.display, batch)
    return outcome(batch.status, _failed(batch)), {"batch": dump(batch)}


def follow(ctx: Context, args: argparse.Namespace, batch: Any, extra: dict[str, Any]) -> Result:
    """Wait for the batch to end, download what was asked for, say how it went."""
    batch = wait(ctx, batch, args.poll_interval)
    downloads = fetch_results(ctx, batch, args.output, args.errors)
    describe(ctx.display, batch)
    return outcome(batch.status, _failed(batch)), {"batch": dump(batch), **extra,
                                                   "downloads": downloads}


def wait(ctx: Context, batch: Any, interval: float) -> Any:
    errors = 0
    with ctx.display.watch() as watch:
        try:
            watch.update(batch)
            while batch.status not in TERMINAL:
                time.sleep(interval)
                try:
                    batch = ctx.client.batches.retrieve(batch.id)
                    errors = 0
                except (openai.APIConnectionError, openai.InternalServerError,
                        openai.RateLimitError) as e:
                    errors += 1
                    if errors >= WAIT_ERRORS:
                        raise
                    ctx.display.say(f"{from_api(e, ctx.base_url).message}; still waiting")
                    continue
                watch.update(batch)
        except KeyboardInterrupt:
            raise CliError(
                f"Interrupted. Batch {batch.id} is {batch.status} and keeps running on the "
                f"gateway. Check it with: gateway batch status {batch.id}  (add --wait to "
                "wait again)", INTERRUPTED,
                {"message": "interrupted", "batch_id": batch.id, "status": batch.status},
            ) from None
    return batch


def fetch_results(ctx: Context, batch: Any, output: str | None,
                  errors: str | None) -> dict[str, str]:
    done: dict[str, str] = {}
    for kind, file_id, where in (("output", batch.output_file_id, output),
                                 ("errors", batch.error_file_id, errors)):
        if where is None:
            continue
        if not file_id:
            ctx.display.say(f"no {kind} file for {batch.id}"
                            + (" (no request succeeded)" if kind == "output" else
                               " (no request failed)"))
            continue
        path = Path(where)
        try:
            n = download(ctx.client, ctx.display, file_id, path, f"download {kind} to")
        except KeyboardInterrupt:
            raise CliError(f"Interrupted during the download; run again: gateway batch "
                           f"download {batch.id}", INTERRUPTED) from None
        ctx.display.say(f"saved {kind} of {batch.id} to {path} ({size(n)})")
        done[kind] = str(path)
    return done


def _failed(batch: Any) -> int:
    return int(batch.request_counts.failed) if batch.request_counts else 0


def describe(display: Display, batch: Any) -> None:
    c = Counts(batch)
    end = ended_at(batch)
    took = clock((end or time.time()) - batch.created_at)
    display.say(f"{batch.id} {batch.status}: {c.completed} completed, {c.failed} failed of "
                f"{c.total} requests ({batch.model or '-'}, created {when(batch.created_at)}, "
                f"{'took' if end else 'running for'} {took})")
    if batch.usage:
        u = batch.usage
        display.say(f"tokens: {u.input_tokens} in, {u.output_tokens} out, "
                    f"{u.total_tokens} total")
    for e in (batch.errors.data if batch.errors and batch.errors.data else [])[:20]:
        where = f"Line {e.line}: " if e.line else ""
        display.say(f"error {e.code or ''}: {where}{e.message or ''}")
    files = [f"{k} {v}" for k, v in (("output", batch.output_file_id),
                                      ("errors", batch.error_file_id)) if v]
    if files and c.status in TERMINAL:
        display.say("files: " + ", ".join(files)
                    + f"  (gateway batch download {batch.id})")


# -- the rest ----------------------------------------------------------------------------------


def download_cmd(ctx: Context, args: argparse.Namespace) -> Result:
    batch = ctx.client.batches.retrieve(args.id)
    if batch.status not in TERMINAL:
        raise CliError(f"Batch {batch.id} is {batch.status}: nothing to download yet. Wait "
                       f"for it with: gateway batch status {batch.id} --wait --output "
                       f"{args.output or 'out.jsonl'}", RUNNING,
                       {"message": "not finished", "batch_id": batch.id,
                        "status": batch.status})
    output = args.output or f"{batch.id}_output.jsonl"
    errors = args.errors or (f"{batch.id}_errors.jsonl" if batch.error_file_id else None)
    downloads = fetch_results(ctx, batch, output, errors)
    return outcome(batch.status, _failed(batch)), {"batch": dump(batch),
                                                   "downloads": downloads}


def cancel(ctx: Context, args: argparse.Namespace) -> Result:
    batch = ctx.client.batches.cancel(args.id)
    ctx.display.say(f"{batch.id} {batch.status}")
    return OK, {"batch": dump(batch)}


def list_batches(ctx: Context, args: argparse.Namespace) -> Result:
    extra = {"target_model_names": args.model} if args.model else None
    page = ctx.client.batches.list(limit=args.limit, after=args.after or openai.omit,
                                   extra_query=extra)
    rows = [dump(b) for b in page.data]
    for b in page.data:
        c = Counts(b)
        ctx.display.say(f"{b.id:<32} {b.status:<11} {c.done:>6}/{c.total:<6} "
                        f"{c.failed:>5} failed  {b.model or '-':<20} {when(b.created_at)}")
    if not rows:
        ctx.display.say("no batches")
    elif page.has_more:
        ctx.display.say(f"more: gateway batch list --after {page.data[-1].id}")
    return OK, {"object": "list", "data": rows, "has_more": bool(page.has_more)}


def list_files(ctx: Context, args: argparse.Namespace) -> Result:
    page = ctx.client.files.list(limit=args.limit, purpose=args.purpose or openai.omit)
    rows = [dump(f) for f in page.data]
    for f in page.data:
        ctx.display.say(f"{f.id:<32} {f.purpose:<13} {size(f.bytes):>10}  "
                        f"{when(f.created_at)}  {f.filename}")
    if not rows:
        ctx.display.say("no files")
    return OK, {"object": "list", "data": rows, "has_more": bool(page.has_more)}


Command = Callable[[Context, argparse.Namespace], Result]


def run(command: Command, args: argparse.Namespace) -> int:
    """Run one command: errors become a message on stderr (and the JSON answer)."""
    display = choose(args.json)
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    ctx: Context | None = None
    try:
        try:
            ctx = Context(args, display)
            code, obj = command(ctx, args)
        except openai.OpenAIError as e:
            raise from_api(e, base_url) from e
        except KeyboardInterrupt:
            raise CliError("Interrupted.", INTERRUPTED) from None
        finally:
            if ctx is not None:
                ctx.client.close()
    except CliError as e:
        print(f"gateway: {e.message}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"error": e.error or {"message": e.message},
                              "exit_code": e.code}), flush=True)
        return e.code
    if args.json:
        print(json.dumps({**obj, "exit_code": code}), flush=True)
    return code
