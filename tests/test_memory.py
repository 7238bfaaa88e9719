"""A 200 MB upload through a gateway process whose peak memory must stay bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import ServerThread

MiB = 1 << 20


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def write_big_file(path: Path, size: int) -> int:
    filler = "x" * 4200  # ~4.3 KB lines: 200 MB stays under OpenAI's 50,000-request cap
    n = 0
    with path.open("w") as f:
        while f.tell() < size:
            line = {"custom_id": f"r-{n}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "big", "messages": [{"role": "user", "content": filler}]}}
            f.write(json.dumps(line) + "\n")
            n += 1
    return n


@pytest.fixture
def gateway_process(tmp_path: Path, database_url: str) -> Iterator[tuple[str, int, FakeOpenAI]]:
    fake = FakeOpenAI(api_key="sk-up")
    with ServerThread(fake.app) as upstream:
        config = {
            "model_list": [{"model_name": "big",
                            "litellm_params": {"model": "openai/gpt-4o-mini",
                                               "api_base": upstream.url + "/v1",
                                               "api_key": "sk-up"},
                            "model_info": {"mode": "batch"}}],
            "general_settings": {"master_key": "sk-master", "database_url": database_url},
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        port = ServerThread(None).port  # a free port, released again
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config",
             str(tmp_path / "config.yaml"), "--port", str(port), "--log-level", "warning"],
            env={**os.environ, "GATEWAY_SPOOL_DIR": str(tmp_path)},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            yield url, proc.pid, fake
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            fake.close()


@pytest.mark.slow
def test_200mb_upload_keeps_gateway_memory_bounded(
    tmp_path: Path, gateway_process: tuple[str, int, FakeOpenAI]
) -> None:
    url, pid, fake = gateway_process
    big = tmp_path / "big.jsonl"
    lines = write_big_file(big, 200 * MiB - 8192)
    key = httpx.post(url + "/key/generate", json={"models": ["big"]},
                     headers={"Authorization": "Bearer sk-master"}).json()["key"]
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600)
    client.models.list()  # warm: imports, connections, first queries
    before = vm(pid, "VmRSS")
    with big.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch",
                                       extra_body={"target_model_names": "big"})
    peak = vm(pid, "VmHWM")
    assert uploaded.bytes == big.stat().st_size
    (native,) = fake.uploads
    with fake.uploads[native].open("rb") as copy:
        assert sum(1 for _ in copy) == lines
    growth = (peak - before) / MiB
    print(f"gateway RSS before {before / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, "
          f"growth {growth:.0f} MiB for a {big.stat().st_size / MiB:.0f} MiB upload")
    assert growth <= 64
