"""The wheels: built for the core and every adapter, installed into a fresh venv (dependencies
from the package index, no source tree on sys.path), and that install serves a batch end to end
in front of the fake OpenAI upstream.

Built as `make dist` builds them, in isolated envs, but each from its sdist (`python -m build`
without `--wheel`): that checks the sdists are complete too, and never reads a `build/`
directory an earlier build left in the source tree."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import GROUP, MASTER_KEY, Upstream
from tests.helpers import batch_file

ROOT = Path(__file__).parents[1]
ADAPTERS = sorted(p for p in (ROOT / "adapters").iterdir() if (p / "pyproject.toml").exists())

def build_wheels(out: Path) -> list[Path]:
    """sdist and wheel of the core and every adapter into `out`, two builds at a time."""
    sources = [ROOT, *ADAPTERS]
    for i in range(0, len(sources), 2):
        procs = [subprocess.Popen([sys.executable, "-m", "build", "--outdir",
                                   str(out), str(src)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
                 for src in sources[i:i + 2]]
        for proc, src in zip(procs, sources[i:i + 2], strict=True):
            output = proc.communicate(timeout=600)[0]
            assert proc.returncode == 0, f"{src}:\n{output.decode()[-3000:]}"
    return sorted(out.glob("*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with the wheels installed: its bin/ directory."""
    tmp = tmp_path_factory.mktemp("wheels")
    wheels = build_wheels(tmp / "dist")
    names = {w.name.split("-")[0] for w in wheels}
    assert names == {"batch_gateway", "gateway_openai", "gateway_azure", "gateway_vertex",
                     "gateway_anthropic", "gateway_bedrock"}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist()), wheel
            metadata = z.read(next(n for n in z.namelist() if n.endswith("/METADATA")))
            assert b"License-Expression: Apache-2.0" in metadata
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    core = next(w for w in wheels if w.name.startswith("batch_gateway-"))
    # The core with its adapter extras, the adapters found next to it (not on the index).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--find-links", str(tmp / "dist"),
                    f"{core}[openai,azure,vertex,anthropic,bedrock]"],
                   check=True, timeout=900)
    yield venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "GATEWAY_", "PROMETHEUS_"))}
    env["GATEWAY_PLUGINS_TOML"] = str(tmp / "no-plugins.toml")
    return env


# About 50 s with pip's cache warm (six isolated builds, a venv from the index), more cold.
@pytest.mark.slow
def test_the_wheels_install_and_serve_a_batch(installed: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    where = subprocess.run(
        [str(installed / "python"), "-c",
         "import gateway, gateway_openai, sys; print(gateway.__file__); "
         "print(gateway_openai.__file__); print(gateway.__version__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    core_file, adapter_file, version = where.stdout.split()
    for path in (core_file, adapter_file):
        assert path.startswith(str(installed.parent)) and str(ROOT) not in path
    assert version == "0.1.0"

    up = Upstream("sk-upstream-wheel", "gpt-4o-mini")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": GROUP, "model_info": {"mode": "batch"},
                        "litellm_params": {"model": f"openai/{up.model}",
                                           "api_base": up.api_base, "api_key": up.api_key}}],
        "general_settings": {"master_key": MASTER_KEY, "batch_poll_interval": 0,
                             "database_url": f"sqlite:///{tmp_path / 'gateway.db'}",
                             "data_dir": str(tmp_path / "data")},
    }))
    check = subprocess.run([str(installed / "gateway"), "check-config", str(config)],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "openai (gateway-openai 0.1.0)" in check.stdout
    assert "bedrock (gateway-bedrock 0.1.0)" in check.stdout

    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(installed / "gateway"), "serve", "--config", str(config),
                             "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health/readiness").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        admin = {"Authorization": f"Bearer {MASTER_KEY}"}
        key = httpx.post(url + "/key/generate", json={"models": [GROUP]},
                         headers=admin).json()["key"]
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
            file = client.files.create(file=batch_file(3), purpose="batch")
            batch = client.batches.create(input_file_id=file.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
            for _ in range(10):
                batch = client.batches.retrieve(batch.id)
                if batch.status == "completed":
                    break
            assert batch.status == "completed" and batch.output_file_id
            output = client.files.content(batch.output_file_id).text
        assert output.count('"custom_id"') == 3
        # Package data: the docs page's assets and the API description came with the wheel.
        assert httpx.get(url + "/docs/swagger-ui-bundle.js").status_code == 200
        assert httpx.get(url + "/openapi.json").json()["info"]["version"] == "0.1.0"
        assert httpx.get(url + "/ui/app.js").status_code == 200
        assert "gateway_requests_total" in httpx.get(url + "/metrics", headers=admin).text
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
        up.server.stop()
        up.fake.close()


def test_dockerfile_lints_clean() -> None:
    """Not built here (no container engine); linted with hadolint (the test extra has it)."""
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "AS build" in text and "USER 10001" in text and "/health/liveliness" in text
