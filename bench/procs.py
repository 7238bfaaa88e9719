"""Processes of a benchmark run: upstreams, the gateway, the load client; /proc memory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, key: str | None = None, body: Any = None,
         timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode("utf-8", "replace")


class Proc:
    """A server subprocess on 127.0.0.1:port; `ready()` polls `probe` until it answers."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
                 log_dir: str | None = None) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(log_dir or "/tmp", f"{name}-{port}.log")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Proc:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self.log,
                                      stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, path: str, key: str | None = None, timeout: float = 60) -> float:
        """Seconds from process start to the first 200 on `path`."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see "
                                   f"{self.log_path}:\n{self.tail()}")
            try:
                status, _ = http("GET", self.url + path, key, timeout=2)
                if status == 200:
                    return time.perf_counter() - self.started_at
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.005)

    def tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen is not None:
            self.log.close()


def upstream(port: int, api_key: str, log_dir: str) -> Proc:
    return Proc("upstream", [PY, "-m", "bench.upstream", "--port", str(port), "--api-key",
                             api_key, "--no-advance"], port, log_dir=log_dir)


def gateway(port: int, config_path: str, log_dir: str, env: dict[str, str]) -> Proc:
    return Proc("gateway", [PY, "-m", "gateway.cli", "serve", "--config", config_path,
                            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                port, env=env, log_dir=log_dir)


def client(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one workload in a separate load-client process."""
    out = subprocess.run([PY, "-m", "bench.load", json.dumps(spec)], cwd=ROOT,
                         capture_output=True, timeout=timeout, check=False)
    try:
        result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": f"load client failed: {out.stderr.decode()[-2000:]}"}
    return result


# -- memory ----------------------------------------------------------------------------------


def status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads, dead ones included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryWatch:
    """Peak RSS and CPU time of a process over a block: VmHWM reset at entry, and VmRSS
    sampled every 10 ms (in case the reset is not permitted). `growth_mib` is the peak minus
    the RSS at entry."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> MemoryWatch:
        self.hwm_reset = reset_hwm(self.pid)
        self.start_kib = status(self.pid)["VmRSS"]
        self.peak = self.start_kib
        self.cpu0 = cpu_seconds(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = cpu_seconds(self.pid) - self.cpu0
        st = status(self.pid)
        self.end_kib = st["VmRSS"]
        if self.hwm_reset:
            self.peak = max(self.peak, st["VmHWM"])

    def result(self) -> dict[str, Any]:
        return {
            "rss_start_mib": round(self.start_kib / 1024, 1),
            "rss_peak_mib": round(self.peak / 1024, 1),
            "rss_end_mib": round(self.end_kib / 1024, 1),
            "growth_mib": round((self.peak - self.start_kib) / 1024, 1),
            "hwm_reset": self.hwm_reset,
            "cpu_seconds": round(self.cpu, 3),
        }
