"""`gateway serve` as an operator runs it, as real processes: --version, check-config, TLS,
--root-path, --forwarded-allow-ips, CORS, JSON logs, start-up lines, --workers 2 with metrics
summed over the workers, and a graceful shutdown that lets an upload in flight finish."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from tests.conftest import GROUP, MASTER_KEY, OTHER_GROUP, Upstream, config_for
from tests.helpers import batch_file
from tests.test_ops import FAMILIES, samples, scripted_flow, total

ROOT = Path(__file__).parents[1]
ORIGIN = "https://app.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """`gateway serve` in a subprocess, its stderr in a file."""

    def __init__(self, tmp: Path, config: dict[str, Any], *args: str,
                 env: dict[str, str] | None = None, scheme: str = "http",
                 verify: ssl.SSLContext | bool = True) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "stderr.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path),
             "--port", str(self.port), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/health/readiness").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("gateway serve did not start:\n" + self.stderr())
            time.sleep(0.1)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        # A new connection each time, so requests spread over the workers.
        return httpx.get(self.url + path, verify=self.verify, timeout=30, **kw)

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.json_lines() if r["logger"] == "gateway.access"]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("sk-upstream-serve", "gpt-4o-mini")
    yield up
    up.server.stop()
    up.fake.close()


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.strip() == f"gateway (batch-gateway) {__version__}"
    assert __version__ != "0+unknown"


def test_check_config_shows_groups_deployments_and_adapters(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-made"
    cfg = {
        "model_list": [
            {"model_name": GROUP, "litellm_params": {"model": "openai/gpt-4o-mini",
                                                     "api_key": "sk-secret-upstream"},
             "model_info": {"mode": "batch", "id": "openai-east"}},
            {"model_name": GROUP, "litellm_params": {"model": "azure/my-deployment",
                                                     "api_base": "https://x.example.com",
                                                     "api_key": "k"},
             "model_info": {"mode": "batch"}},
            {"model_name": OTHER_GROUP, "litellm_params": {"model": "openai/gpt-4o-mini-eu"},
             "model_info": {"mode": "batch", "id": "openai-eu"}},
            {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o"}},
        ],
        # Nothing listens there and nothing is created: check-config opens nothing.
        "general_settings": {"database_url": "postgresql://u:pw@127.0.0.1:9/db",
                             "data_dir": str(data_dir)},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 10
    lines = out.stdout.splitlines()
    assert lines[0] == f"{path}: valid; 3 deployments in 2 model groups"
    assert lines[1].startswith("adapters loaded: ")
    for adapter in ("openai (gateway-openai ", "azure (gateway-azure ", "vertex_ai (gateway-"):
        assert adapter in lines[1]
    assert lines[2] == f"{GROUP}:"
    assert lines[3].split() == ["openai-east", "openai", "gpt-4o-mini"]
    assert lines[4].split()[1:] == ["azure", "my-deployment"]
    assert lines[5] == f"{OTHER_GROUP}:"
    assert lines[6].split() == ["openai-eu", "openai", "gpt-4o-mini-eu"]
    assert "sk-secret-upstream" not in out.stdout + out.stderr
    assert not data_dir.exists()

    cfg["model_list"][0]["litellm_params"]["timeout"] = "soon"
    path.write_text(yaml.safe_dump(cfg))
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "model_list[0] (model_name 'gpt-4o-batch').litellm_params.timeout" in bad.stderr


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def edge(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Behind a proxy: TLS, a root path, trusted forwarded headers, CORS, JSON logs."""
    tmp = tmp_path_factory.mktemp("edge")
    cert, key = self_signed(tmp)
    cfg = config_for([upstream], f"sqlite:///{tmp / 'gateway.db'}", cors_origins=[ORIGIN])
    served = Served(tmp, cfg, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                    "--root-path", "/gw", "--forwarded-allow-ips", "*", "--log-format", "json",
                    scheme="https", verify=ssl.create_default_context(cafile=str(cert)))
    yield served
    assert served.stop() == 0


def test_tls_with_a_self_signed_certificate(edge: Served) -> None:
    assert edge.get("/health/liveliness").json() == {"status": "alive"}
    with pytest.raises(httpx.ConnectError):  # not trusted without its certificate
        httpx.get(edge.url + "/health/liveliness", timeout=10)
    with pytest.raises(httpx.TransportError):  # no plain HTTP on the port
        httpx.get(edge.url.replace("https", "http") + "/health", timeout=10)


def test_root_path_shows_in_what_the_gateway_links(edge: Served) -> None:
    spec = edge.get("/openapi.json").json()
    assert spec["servers"] == [{"url": "/gw"}]
    page = edge.get("/docs")
    assert page.status_code == 200 and 'src="docs/swagger-ui-bundle.js"' in page.text
    assert edge.get("/ui").headers["location"] == "ui/"


def test_forwarded_headers_from_a_trusted_proxy(edge: Served) -> None:
    resp = edge.get("/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}",
                                           "X-Forwarded-For": "203.0.113.7",
                                           "X-Forwarded-Proto": "https",
                                           "x-request-id": "via-proxy"})
    assert resp.status_code == 200
    time.sleep(0.2)
    line = next(r for r in edge.access() if r["request_id"] == "via-proxy")
    assert line["client"] == "203.0.113.7" and line["path"] == "/gw/v1/models"
    assert line["route"] == "/v1/models" and line["key"] == "master"


def test_cors_preflight_and_exposed_request_id(edge: Served) -> None:
    preflight = httpx.options(edge.url + "/v1/files", verify=edge.verify, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["x-request-id"]
    stranger = httpx.options(edge.url + "/v1/files", verify=edge.verify, headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert stranger.status_code == 400
    assert "access-control-allow-origin" not in stranger.headers
    simple = edge.get("/v1/models", headers={"Origin": ORIGIN,
                                              "Authorization": f"Bearer {MASTER_KEY}"})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_json_logs_and_start_up_lines(edge: Served) -> None:
    records = edge.json_lines()  # every line, uvicorn's included, is one JSON object
    messages = [r["message"] for r in records if r["logger"] == "gateway"]
    assert f"batch-gateway {__version__} listening on https://127.0.0.1:{edge.port}/gw " \
        "(1 worker)" in messages
    assert any(m.startswith("database: sqlite:///") for m in messages)
    assert any(m.startswith("file store: local:/") for m in messages)
    assert any(m.startswith("adapters loaded: ") and "openai (gateway-openai" in m
               for m in messages)
    assert "master key set: admin routes (/key/*, /metrics) enabled" in messages
    assert f"CORS origins: {ORIGIN}" in messages
    assert any(r["logger"] == "uvicorn.error" for r in records)


def test_database_password_never_logged(upstream: Upstream, tmp_path: Path) -> None:
    from gateway.serve import public_database_url

    assert public_database_url("postgresql://gw:s3cret@db:5432/gw") == \
        "postgresql://gw:***@db:5432/gw"


# -- several workers --------------------------------------------------------------------------


def test_two_workers_sum_their_metrics_and_finish_uploads_on_shutdown(
    upstream: Upstream, tmp_path: Path,
) -> None:
    metrics_dir = tmp_path / "metrics"
    open_port = free_port()  # every worker listens on it (SO_REUSEPORT)
    cfg = config_for([upstream], f"sqlite:///{tmp_path / 'gateway.db'}",
                     copy_retry_interval=0.2, metrics_port=open_port)
    served = Served(tmp_path, cfg, "--workers", "2", "--log-format", "json",
                    "--forwarded-allow-ips", "10.9.9.9", "--timeout-graceful-shutdown", "20",
                    env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        admin = {"Authorization": f"Bearer {MASTER_KEY}"}
        key = httpx.post(served.url + "/key/generate", json={"models": [GROUP]},
                         headers=admin).json()["key"]

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return samples(served.get("/metrics", headers=admin).text)

        before = scrape()
        with openai.OpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0) as client:
            up, down = scripted_flow(client)
        # Forty answers on fresh connections, some concurrent: both workers serve.
        spoofed = {"Authorization": f"Bearer {key}", "X-Forwarded-For": "198.51.100.1"}

        def hit(n: int) -> None:
            for _ in range(n):
                assert served.get("/v1/models", headers=spoofed).status_code == 200

        threads = [threading.Thread(target=hit, args=(10,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)  # the copy retry job runs on both workers
        scrapes = [scrape() for _ in range(6)]
        families = {f.name for f in text_string_to_metric_families(
            served.get("/metrics", headers=admin).text)}

        pids = {r["pid"] for r in served.access()}
        assert len(pids) == 2, pids  # both workers answered requests
        assert len({p.name.split("_")[-1] for p in metrics_dir.glob("*.db")}) >= 2
        after = scrapes[0]
        for name in FAMILIES:  # every family, with or without samples yet
            assert name.removesuffix("_total").removesuffix("_count") in families, name
        scrapes += [samples(httpx.get(f"http://127.0.0.1:{open_port}/metrics").text)
                    for _ in range(6)]
        models = [total(s, "gateway_requests_total", route="/v1/models") for s in scrapes]
        # Whichever worker answers a scrape reports the sum over both.
        assert models == [40.0] * 12, models
        assert total(after, "gateway_uploaded_bytes_total") - \
            total(before, "gateway_uploaded_bytes_total") >= up
        assert total(after, "gateway_downloaded_bytes_total") == down
        assert total(after, "gateway_upstream_requests_total", outcome="ok") >= 4
        assert total(after, "gateway_batches", status="completed", model_group=GROUP) == 1
        # The proxy at 10.9.9.9 is trusted, not the caller: X-Forwarded-For is ignored.
        assert {r["client"] for r in served.access()} == {"127.0.0.1"}

        # SIGTERM while an upload is on its way: it finishes, then the process exits cleanly.
        sent_half = threading.Event()
        result: dict[str, Any] = {}
        body = batch_file(200).getvalue()
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
                f"batch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"slow.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def slow_body() -> Iterator[bytes]:
            yield head + body[: len(body) // 2]
            sent_half.set()
            time.sleep(1.5)
            yield body[len(body) // 2:] + tail

        def upload() -> None:
            try:
                result["response"] = httpx.post(
                    served.url + "/v1/files", content=slow_body(), timeout=30,
                    params={"target_model_names": GROUP},
                    headers={"Authorization": f"Bearer {key}",
                             "Content-Type": f"multipart/form-data; boundary={boundary}"})
            except Exception as e:
                result["error"] = e

        uploader = threading.Thread(target=upload)
        uploader.start()
        assert sent_half.wait(10)
        time.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        uploader.join(30)
        assert "error" not in result, result
        assert result["response"].status_code == 200, result["response"].text
        assert result["response"].json()["bytes"] == len(body)
        assert served.proc.wait(30) == 0
    finally:
        served.stop()
    assert any("Waiting for connections to close" in r["message"] for r in served.json_lines())
