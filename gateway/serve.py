"""`gateway serve` (uvicorn, one or several worker processes) and `gateway check-config`.

The app is built per worker by `app_factory` (uvicorn's `factory=True`), which reads the
config path from `GATEWAY_CONFIG`: with `--workers N` each worker is its own process with its
own gateway, all sharing the listening socket and the database. The supervising process only
checks the config (so a bad one stops start-up with exit code 2 before any worker starts),
logs where and what it serves, and sets `PROMETHEUS_MULTIPROC_DIR` for the workers' metrics.

Server-side imports happen inside the functions: the batch CLI, a client, does not load them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gateway.config import Config
    from gateway.provider import Provider

CONFIG_ENV = "GATEWAY_CONFIG"
HOST_ENV = "GATEWAY_HOST"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("gateway")


def register(sub: Any) -> None:
    """Add `serve` and `check-config` to the CLI's subcommands."""
    serve = sub.add_parser(
        "serve", help="serve the Files and Batches API",
        description="Serve the Files and Batches API with uvicorn.")
    serve.add_argument("--config", required=True, help="path to config.yaml")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on "
                       "(default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=4000, help="default 4000")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes sharing the port and the database (default 1)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="json: one JSON object per line, for log pipelines")
    serve.add_argument("--root-path", default="",
                       help="the path prefix a reverse proxy serves the gateway under and "
                       "strips (e.g. /gateway)")
    serve.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                       help="comma-separated proxy addresses (or *) whose X-Forwarded-For/"
                       "-Proto headers are trusted (default: $FORWARDED_ALLOW_IPS or "
                       "127.0.0.1)")
    serve.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate")
    serve.add_argument("--ssl-keyfile", default=None, help="... and this private key")
    serve.add_argument("--timeout-graceful-shutdown", type=float, default=30.0,
                       metavar="SECONDS",
                       help="on SIGTERM/SIGINT, stop accepting and let requests in flight "
                       "(uploads included) finish for up to this long (default 30)")
    check = sub.add_parser(
        "check-config", help="validate a config.yaml and show what it serves",
        description="Validate a config.yaml and print its model groups, deployments and the "
        "adapters loaded, without opening anything. Exit code 0 if valid, 2 if not.")
    check.add_argument("path", help="path to config.yaml")


# -- what a config serves ----------------------------------------------------------------------


def _load(path: str) -> tuple[Config, dict[str, type[Provider]]]:
    from gateway.config import load_config
    from gateway.plugins import load_providers

    providers = load_providers()
    return load_config(path, providers), providers


def adapters_loaded(providers: Mapping[str, type[Provider]]) -> list[str]:
    """`name (distribution version)` of each adapter loaded."""
    dists = metadata.packages_distributions()
    out = []
    for name, cls in sorted(providers.items()):
        top = cls.__module__.split(".")[0]
        found = dists.get(top) or []
        dist = found[0] if found else top
        try:
            out.append(f"{name} ({dist} {metadata.version(dist)})")
        except metadata.PackageNotFoundError:
            out.append(f"{name} ({cls.__module__})")
    return out


def public_database_url(url: str) -> str:
    """The database URL without its password."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…"


def describe_file_store(config: Config) -> str:
    s = config.settings
    if not s.file_storage:
        return f"local:{Path(s.data_dir).absolute() / 'files'}"
    parts = urlsplit(s.file_storage)
    if not parts.scheme or parts.scheme == "file":
        return f"local:{Path(parts.path or s.file_storage).absolute()}"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def check_config(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    try:
        config, providers = _load(args.path)
    except ConfigError as e:
        print(f"gateway: config error: {e}", file=sys.stderr)
        return 2
    groups = config.groups()
    print(f"{args.path}: valid; {len(config.deployments)} deployments in {len(groups)} "
          "model groups")
    print("adapters loaded: " + (", ".join(adapters_loaded(providers)) or "none"))
    for name, deployments in groups.items():
        print(f"{name}:")
        for d in deployments:
            print(f"  {d.id}  {d.provider}  {d.model}")
    return 0


# -- serving -----------------------------------------------------------------------------------


def app_factory() -> Starlette:
    """The app of one worker (uvicorn calls it, `factory=True`), for `$GATEWAY_CONFIG`."""
    from gateway.app import create_app
    from gateway.runtime import Gateway

    config, providers = _load(os.environ[CONFIG_ENV])
    return create_app(Gateway(config, providers),
                      metrics_host=os.environ.get(HOST_ENV, "127.0.0.1"))


def _multiprocess_dir() -> tuple[str, bool]:
    """A clean directory for the workers' metric files; whether this process made it."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):  # a previous run's counts (not this process's)
            if not stale.stem.endswith(f"_{os.getpid()}"):
                stale.unlink()
        return given, False
    return tempfile.mkdtemp(prefix="gateway-metrics-"), True


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway import __version__
    from gateway.errors import ConfigError
    from gateway.logs import configure, logging_config
    from gateway.runtime import Gateway

    configure(args.log_level, args.log_format)
    if args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        print("gateway: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    try:
        config, providers = _load(args.config)
        Gateway(config, providers)  # every check the workers will make, nothing opened
    except ConfigError as e:
        print(f"gateway: config error: {e}", file=sys.stderr)
        return 2

    s = config.settings
    scheme = "https" if args.ssl_certfile else "http"
    log.info("batch-gateway %s listening on %s://%s:%d%s (%d worker%s)", __version__, scheme,
             args.host, args.port, args.root_path, args.workers, "s" * (args.workers > 1))
    log.info("database: %s", public_database_url(s.database_url))
    log.info("file store: %s", describe_file_store(config))
    log.info("adapters loaded: %s", ", ".join(adapters_loaded(providers)) or "none")
    log.info("%d deployments in %d model groups: %s", len(config.deployments),
             len(config.groups()), ", ".join(config.groups()))
    if s.master_key:  # (without one, each process says how to enable them as it starts)
        log.info("master key set: admin routes (/key/*, /metrics) enabled")
    if s.cors_origins:
        log.info("CORS origins: %s", ", ".join(s.cors_origins))

    os.environ[CONFIG_ENV] = str(Path(args.config).absolute())
    os.environ[HOST_ENV] = args.host
    made_dir = False
    if args.workers > 1 or os.environ.get(MULTIPROC_ENV):
        directory, made_dir = _multiprocess_dir()
        os.environ[MULTIPROC_ENV] = directory
    # uvicorn raises the signal that stopped it again once it has shut down gracefully: a stop
    # asked for (SIGTERM from an orchestrator, Ctrl-C) then ends with exit code 0.
    signal.signal(signal.SIGTERM, _stopped)
    options: dict[str, Any] = {}
    if args.forwarded_allow_ips is not None:
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    try:
        uvicorn.run(
            "gateway.serve:app_factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            root_path=args.root_path,
            proxy_headers=True,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
            log_config=logging_config(args.log_level, args.log_format),
            log_level=args.log_level,
            access_log=False,  # the gateway writes its own access line
            lifespan="on",
            **options,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if made_dir:
            shutil.rmtree(os.environ.pop(MULTIPROC_ENV), ignore_errors=True)
    return 0
