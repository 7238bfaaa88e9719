"""`--compare litellm`: the same workloads through LiteLLM's proxy in passthrough mode.

LiteLLM (`litellm[proxy]` from PyPI) goes into its own venv, `$LITELLM_VENV` or
/tmp/litellm-venv, created on first use. Passthrough mode: no database, the master key, and
`files_settings` + `OPENAI_API_BASE` pointing at the benchmark's upstream, so `/v1/files` and
`/v1/batches` are forwarded with the upstream's own ids. Its managed-files mode (unified ids,
several deployments) needs a database through Prisma, whose engine binaries are downloaded at
run time and cannot be fetched here; the fan-out workload is therefore not measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

from bench import procs

if TYPE_CHECKING:
    from bench.run import Ctx

VENV = os.environ.get("LITELLM_VENV", "/tmp/litellm-venv")


def executable() -> str:
    exe = os.path.join(VENV, "bin", "litellm")
    if not os.path.exists(exe):
        print(f"installing litellm[proxy] into {VENV} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", "litellm[proxy]"],
                       check=True)
    return exe


def version() -> str:
    out = subprocess.run([os.path.join(VENV, "bin", "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def write_config(ctx: Ctx) -> str:
    from bench.run import MASTER, UP_KEYS

    path = os.path.join(ctx.tmp, "litellm.yaml")
    base = ctx.up.url + "/v1"
    with open(path, "w") as f:
        f.write(
            "model_list:\n"
            "  - model_name: bench-chat\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            f"      api_base: {base}\n"
            f"      api_key: {UP_KEYS[0]}\n"
            "files_settings:\n"
            "  - custom_llm_provider: openai\n"
            f"    api_base: {base}\n"
            f"    api_key: {UP_KEYS[0]}\n"
            "general_settings:\n"
            f"  master_key: {MASTER}\n"
        )
    return path


def start(ctx: Ctx) -> float:
    """Start LiteLLM's proxy (one uvicorn worker); seconds to its first answered request."""
    from bench.run import MASTER, UP_KEYS

    exe = executable()
    config = write_config(ctx)
    port = procs.free_port()
    env = {
        "OPENAI_API_KEY": UP_KEYS[0],
        "OPENAI_API_BASE": ctx.up.url + "/v1",
        # No internet here: use the bundled model price map instead of fetching it.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    ctx.gateway = procs.Proc("litellm", [exe, "--config", config, "--host", "127.0.0.1",
                                         "--port", str(port), "--num_workers", "1"],
                             port, env=env, log_dir=ctx.tmp).start()
    return ctx.gw.wait_ready("/v1/batches?limit=1", MASTER, timeout=180)
