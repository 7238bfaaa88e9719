"""Run ASGI apps (fake upstreams, the gateway) under uvicorn on 127.0.0.1 in a thread."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

import uvicorn

from gateway.app import create_app
from gateway.config import parse_config
from gateway.plugins import load_providers
from gateway.runtime import Gateway


class ServerThread:
    """`with ServerThread(app) as server: server.url` — a real HTTP server on a free port."""

    def __init__(
        self, app: Any, port: int = 0, lifespan: Literal["auto", "on", "off"] = "auto"
    ) -> None:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto is TCP;
        # with proto 0 every small response waits ~40 ms on Nagle + delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan=lifespan,
            access_log=False,
            timeout_keep_alive=30,
            interface="asgi3",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_server(
    raw_config: Mapping[str, Any], extra_plugins: tuple[object, ...] = ()
) -> ServerThread:
    """The gateway for a config given as a dict (as YAML would parse), not yet started."""
    providers = load_providers(extra_plugins)
    gw = Gateway(parse_config(raw_config, providers), providers)
    return ServerThread(create_app(gw), lifespan="on")


def free_env(**values: str) -> dict[str, str]:
    """Set environment variables for `os.environ/NAME` config values; returns the old ones."""
    old = {k: os.environ.get(k, "") for k in values}
    os.environ.update(values)
    return old


MASTER_KEY = "sk-master-test"


def gateway_config(
    entries: list[tuple[str, dict[str, Any]]], database_url: str, master_key: str = MASTER_KEY
) -> dict[str, Any]:
    """A config (as YAML would parse) with one batch deployment per (model group, params)."""
    return {
        "model_list": [
            {"model_name": group, "litellm_params": params, "model_info": {"mode": "batch"}}
            for group, params in entries
        ],
        "general_settings": {"master_key": master_key, "database_url": database_url,
                             "data_dir": tempfile.mkdtemp(prefix="gateway-test-")},
    }


class RunningGateway:
    """The gateway for a config, started, with a virtual key for `models` and an OpenAI SDK
    client using it: `with RunningGateway(cfg, ["group"]) as gw: gw.client.files.create(...)`."""

    def __init__(self, config: Mapping[str, Any], models: list[str]) -> None:
        import httpx
        import openai

        self.server = gateway_server(config).start()
        master = config["general_settings"]["master_key"]
        resp = httpx.post(self.server.url + "/key/generate", json={"models": models},
                          headers={"Authorization": f"Bearer {master}"}, timeout=30)
        if resp.status_code != 200:
            self.server.stop()
            raise RuntimeError(f"could not mint a key: {resp.text}")
        self.key: str = resp.json()["key"]
        self.client = openai.OpenAI(base_url=self.server.url + "/v1", api_key=self.key,
                                    max_retries=0)

    def stop(self) -> None:
        self.client.close()
        self.server.stop()

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
