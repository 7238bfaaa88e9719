"""`gateway serve --config PATH`: load plugins and config, then serve with uvicorn.

`gateway batch ...` / `gateway files list`: the batch CLI, a client of a running gateway
(see `gateway.batchcli`)."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway import batchcli


def main(argv: list[str] | None = None) -> int:
    parser = batchcli.Parser(prog="gateway", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Files and Batches API")
    serve.add_argument("--config", required=True, help="path to config.yaml")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--log-level", default="info")
    batchcli.register(sub)
    args = parser.parse_args(argv)
    if args.command != "serve":
        return batchcli.run(args)
    # Imported here: the batch CLI, a client, starts without the server's modules.
    import uvicorn

    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.errors import ConfigError
    from gateway.plugins import load_providers
    from gateway.runtime import Gateway

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        providers = load_providers()
        config = load_config(args.config, providers)
        gw = Gateway(config, providers)
    except ConfigError as e:
        print(f"gateway: config error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(gw),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
