"""`make run`: the gateway on SQLite in front of two bundled fake OpenAI upstreams, offline.

Environment variables already set (say, real OPENAI_API_BASE/OPENAI_API_KEY) are kept, so the
same command serves real upstreams too.
"""

from __future__ import annotations

import os
import sys

from gateway.cli import main as cli_main
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import ServerThread

DEMO_MASTER_KEY = "sk-master-demo"


def main() -> int:
    config = os.environ.get("GATEWAY_CONFIG", "examples/config.yaml")
    servers = []
    for suffix, port in (("", 4101), ("_2", 4102)):
        if f"OPENAI_API_BASE{suffix}" in os.environ:
            continue
        fake = FakeOpenAI(api_key=f"sk-fake-upstream{suffix}")
        servers.append(ServerThread(fake.app, port=port).start())
        os.environ[f"OPENAI_API_BASE{suffix}"] = f"http://127.0.0.1:{port}/v1"
        os.environ[f"OPENAI_API_KEY{suffix}"] = f"sk-fake-upstream{suffix}"
        print(f"fake OpenAI upstream on http://127.0.0.1:{port}/v1", file=sys.stderr)
    os.environ.setdefault("GATEWAY_MASTER_KEY", DEMO_MASTER_KEY)
    print(
        f"gateway on http://127.0.0.1:4000 (master key {os.environ['GATEWAY_MASTER_KEY']})",
        file=sys.stderr,
    )
    try:
        return cli_main(["serve", "--config", config, *sys.argv[1:]])
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
