"""`gateway batch ...` and `gateway files list`: submit and follow batches on a gateway.

A client of the gateway's public API through the OpenAI SDK, configured as OpenAI users
already are: `OPENAI_BASE_URL` and `OPENAI_API_KEY` (`--base-url` / `--api-key` override).
Progress bars on a terminal, plain lines otherwise, one JSON object with `--json`; the exit
codes are listed in `gateway.batchcli.exits`. This module only declares the arguments, so
`gateway serve` does not import the SDK.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

USAGE_EXIT = 1  # exits.USAGE, without importing the SDK


def _split(value: str) -> str | int:
    """`--split`: "auto" or a number of parts."""
    if value == "auto":
        return value
    try:
        parts = int(value)
    except ValueError:
        parts = 0
    if parts < 1:
        raise argparse.ArgumentTypeError("must be 'auto' or a number of parts (1 or more)")
    return parts


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors exiting 1 (2 means "the gateway answered an error")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message}\n")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", help="the gateway's URL, e.g. http://127.0.0.1:4000/v1 "
                        "(default: $OPENAI_BASE_URL, else http://127.0.0.1:4000/v1)")
    common.add_argument("--api-key", help="a virtual key or the master key "
                        "(default: $OPENAI_API_KEY)")
    common.add_argument("--json", action="store_true",
                        help="print one JSON object (no progress) for scripts")
    return common


def _waiting() -> argparse.ArgumentParser:
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true",
                         help="wait until the batch ends (implied by --output / --errors)")
    waiting.add_argument("--output", metavar="PATH",
                         help="when it ends, save the output file here")
    waiting.add_argument("--errors", metavar="PATH",
                         help="when it ends, save the error file here")
    waiting.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                         help="seconds between status checks while waiting (default 5)")
    return waiting


def register(sub: Any) -> None:
    """Add `batch` and `files` to the `gateway` command's subparsers."""
    common, waiting = _common(), _waiting()
    epilog = ("exit codes: 0 ok / completed, 1 usage or config error, 2 API error, "
              "3 completed with failed requests, 4 failed, 5 expired, 6 cancelled, "
              "7 not finished yet, 130 interrupted")
    batch = sub.add_parser("batch", help="submit, follow and download batches",
                           description=__doc__, epilog=epilog)
    actions = batch.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("submit", parents=[common, waiting], epilog=epilog,
                           help="upload a JSONL file and create a batch")
    p.add_argument("file", metavar="FILE.jsonl")
    p.add_argument("--model", required=True, metavar="GROUP",
                   help="model group(s) to run it on (target_model_names; a,b for several)")
    p.add_argument("--endpoint", help="batch endpoint (default: the `url` of the first line)")
    p.add_argument("--metadata", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="metadata for the batch (up to 16 pairs)")
    p.add_argument("--split", type=_split, metavar="auto|N",
                   help="run it as parts on several deployments of the group at once: 'auto' "
                        "(one part per deployment) or a number of parts")
    p.set_defaults(handler="submit")

    p = actions.add_parser("status", parents=[common, waiting], epilog=epilog,
                           help="show a batch (and wait for it with --wait)")
    p.add_argument("id", metavar="BATCH_ID")
    p.set_defaults(handler="status")

    p = actions.add_parser("list", parents=[common], help="list your batches, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many (1-100, default 20)")
    p.add_argument("--after", metavar="BATCH_ID", help="the page after this batch")
    p.add_argument("--model", metavar="GROUP", help="only batches of this model group")
    p.set_defaults(handler="list_batches")

    p = actions.add_parser("cancel", parents=[common], help="cancel a batch")
    p.add_argument("id", metavar="BATCH_ID")
    p.set_defaults(handler="cancel")

    p = actions.add_parser("download", parents=[common], epilog=epilog,
                           help="save a finished batch's output (and error) file")
    p.add_argument("id", metavar="BATCH_ID")
    p.add_argument("--output", metavar="PATH", help="default: BATCH_ID_output.jsonl")
    p.add_argument("--errors", metavar="PATH",
                   help="default: BATCH_ID_errors.jsonl when the batch has one")
    p.set_defaults(handler="download_cmd")

    files = sub.add_parser("files", help="list your files")
    file_actions = files.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = file_actions.add_parser("list", parents=[common], help="list your files")
    p.add_argument("--limit", type=int, default=100, help="how many (default 100)")
    p.add_argument("--purpose", help="only files of this purpose (batch, batch_output)")
    p.set_defaults(handler="list_files")


def run(args: argparse.Namespace) -> int:
    from gateway.batchcli import commands  # the SDK and rich: only for these commands

    command: commands.Command = getattr(commands, args.handler)
    return commands.run(command, args)
