"""`gateway serve --config PATH`: serve the API (options: `gateway serve --help`).
`gateway check-config PATH`: validate a config and print what it serves.

`gateway batch ...` / `gateway files list`: the batch CLI, a client of a running gateway
(see `gateway.batchcli`)."""

from __future__ import annotations

import argparse

from gateway import __version__, batchcli, serve


def main(argv: list[str] | None = None) -> int:
    parser = batchcli.Parser(prog="gateway", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"gateway (batch-gateway) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    batchcli.register(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve.serve(args)
    if args.command == "check-config":
        return serve.check_config(args)
    return batchcli.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
