"""`gateway batch ...` / `gateway files list` as a user runs them: a subprocess talking to a
running test gateway through the OpenAI SDK, on a pipe (plain lines), under a pseudo-terminal
(progress bars) and with --json."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import ServerThread
from tests.conftest import GROUP, Upstream


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the CLI is a client of the HTTP API, which the storage tests cover twice."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def batch_file(path: Path, n: int = 3, fail: tuple[int, ...] = ()) -> Path:
    with path.open("w") as f:
        for i in range(n):
            body: dict[str, Any] = {"model": GROUP,
                                    "messages": [{"role": "user", "content": f"Hi {i}"}]}
            if i in fail:
                body["metadata"] = {"fake_fail": "true"}
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n")
    return path


def env_for(gateway: ServerThread, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=gateway.url + "/v1", OPENAI_API_KEY=key, COLUMNS="120")
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: its own process, stdout a pipe."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


FAST = ("--poll-interval", "0.1")


def run(capsys: pytest.CaptureFixture[str], gateway: ServerThread, key: str, *args: str,
        ) -> tuple[int, str, str]:
    """The CLI in this process (the quick cases): exit code, stdout, stderr."""
    capsys.readouterr()
    code = main([*args, "--base-url", gateway.url + "/v1", "--api-key", key])
    out, err = capsys.readouterr()
    return code, out, err


def only_batch(upstreams: list[Upstream]) -> tuple[FakeOpenAI, str]:
    [(fake, batch_id)] = [(up.fake, b) for up in upstreams for b in up.fake.batches]
    return fake, batch_id


def test_submit_wait_downloads_output_and_errors(
    gateway: ServerThread, make_key: Callable[..., str], tmp_path: Path
) -> None:
    src = batch_file(tmp_path / "in.jsonl", 3, fail=(1,))
    out, err = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    r = cli(env_for(gateway, make_key([GROUP])), "batch", "submit", str(src), "--model", GROUP,
            "--wait", "--output", str(out), "--errors", str(err), "--metadata", "team=a", *FAST)
    assert r.returncode == 3, r.stdout + r.stderr  # completed, with a failed request
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in results) == ["req-0", "req-2"]
    for x in results:
        content = x["response"]["body"]["choices"][0]["message"]["content"]
        assert content == "echo:" + x["custom_id"]
    errors = [json.loads(line) for line in err.read_text().splitlines()]
    assert [x["custom_id"] for x in errors] == ["req-1"]
    # Not a terminal: plain lines, no escape codes, no bars.
    assert "\x1b[" not in r.stdout and "━" not in r.stdout
    lines = r.stdout.splitlines()
    assert any(line.startswith("uploaded in.jsonl as file-") for line in lines)
    assert any(" completed: 2 completed, 1 failed of 3 requests" in line for line in lines)
    assert any("in_progress" in line and "/3 requests" in line for line in lines)
    assert "saved output of batch_" in r.stdout


def test_json_output_and_exit_code_zero(
    gateway: ServerThread, make_key: Callable[..., str], tmp_path: Path
) -> None:
    src = batch_file(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    r = cli(env_for(gateway, make_key([GROUP])), "batch", "submit", str(src), "--model", GROUP,
            "--output", str(out), "--json", *FAST)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    assert answer["exit_code"] == 0
    assert answer["batch"]["status"] == "completed"
    assert answer["batch"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert answer["input_file"]["id"].startswith("file-")
    assert answer["downloads"] == {"output": str(out)}
    assert len(out.read_text().splitlines()) == 2


def test_progress_bars_under_a_terminal(
    gateway: ServerThread, make_key: Callable[..., str], tmp_path: Path
) -> None:
    src = batch_file(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    env = env_for(gateway, make_key([GROUP])) | {"TERM": "xterm-256color"}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "batch", "submit", str(src), "--model", GROUP,
         "--output", str(out), "--poll-interval", "0.3"],
        env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn and redrawn in place
    assert "━" in text  # rich's bar
    assert "100%" in text
    assert "upload in.jsonl" in text and "download output to" in text
    assert "3/3 (0 failed)" in text and "elapsed" in text
    assert len(out.read_text().splitlines()) == 3


def test_invalid_jsonl_prints_the_line_message(
    gateway: ServerThread, make_key: Callable[..., str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = batch_file(tmp_path / "bad.jsonl", 2)
    with src.open("a") as f:
        f.write("{not json\n")
    key = make_key([GROUP])
    r = cli(env_for(gateway, key), "batch", "submit", str(src), "--model", GROUP, "--wait")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("gateway: Line 3: "), r.stderr
    assert "(HTTP 400" in r.stderr

    code, out, err = run(capsys, gateway, key, "batch", "submit", str(src), "--model", GROUP,
                         "--json")
    assert code == 2
    answer = json.loads(out)
    assert answer["exit_code"] == 2
    assert answer["error"]["message"].startswith("Line 3: ")
    assert answer["error"]["status"] == 400
    assert err.startswith("gateway: Line 3: ")


def test_usage_and_api_errors(
    gateway: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = run(capsys, gateway, "sk-not-a-key", "batch", "submit",
                       str(tmp_path / "missing.jsonl"), "--model", GROUP)
    assert code == 1 and "No such file" in err
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: no FILE
        main(["batch", "submit", "--model", GROUP])
    assert exit_.value.code == 1
    code, _, err = run(capsys, gateway, "sk-not-a-key", "batch", "submit",
                       str(batch_file(tmp_path / "in.jsonl")), "--model", GROUP,
                       "--metadata", "no-equals-sign")
    assert code == 1 and "--metadata wants key=value" in err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["batch", "list", "--base-url", gateway.url + "/v1"]) == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    code, _, err = run(capsys, gateway, "sk-not-a-key", "batch", "list")
    assert code == 2
    assert "Invalid, deleted or expired API key." in err and "HTTP 401" in err


def test_status_list_cancel_download_and_files(
    gateway: ServerThread, upstreams: list[Upstream], make_key: Callable[..., str],
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for up in upstreams:
        up.fake.auto_advance = False  # the test moves the batch on
    monkeypatch.chdir(tmp_path)
    key = make_key([GROUP])
    src = batch_file(tmp_path / "in.jsonl", 2)
    code, out, _ = run(capsys, gateway, key, "batch", "submit", str(src), "--model", GROUP,
                       "--json")
    assert code == 0
    batch_id = json.loads(out)["batch"]["id"]
    fake, upstream_id = only_batch(upstreams)

    fake.advance(upstream_id)
    code, out, _ = run(capsys, gateway, key, "batch", "status", batch_id)
    assert code == 7, out  # not finished yet
    assert f"{batch_id} in_progress: 0 completed, 0 failed of 2 requests" in out
    code, _, err = run(capsys, gateway, key, "batch", "download", batch_id)
    assert code == 7 and "nothing to download yet" in err

    code, out, _ = run(capsys, gateway, key, "batch", "list", "--json")
    assert [b["id"] for b in json.loads(out)["data"]] == [batch_id]
    code, out, _ = run(capsys, gateway, key, "batch", "list")
    assert out.startswith(batch_id) and "in_progress" in out

    code, out, _ = run(capsys, gateway, key, "batch", "cancel", batch_id)
    assert code == 0 and out.strip() == f"{batch_id} cancelling"
    fake.advance(upstream_id)
    code, out, _ = run(capsys, gateway, key, "batch", "status", batch_id, "--wait", *FAST)
    assert code == 6, out  # cancelled
    code, _, err = run(capsys, gateway, key, "batch", "cancel", batch_id)
    assert code == 2 and "Cannot cancel a batch with status 'cancelled'." in err

    code, out, _ = run(capsys, gateway, key, "batch", "download", batch_id)
    assert code == 6, out
    errors = (tmp_path / f"{batch_id}_errors.jsonl").read_text().splitlines()
    assert len(errors) == 2 and "batch_cancelled" in errors[0]
    assert "no output file" in out

    code, out, _ = run(capsys, gateway, key, "files", "list", "--json")
    files = json.loads(out)["data"]
    assert {f["purpose"] for f in files} == {"batch", "batch_output"}
    code, out, _ = run(capsys, gateway, key, "files", "list")
    assert "in.jsonl" in out


def test_ctrl_c_while_waiting_says_how_to_resume(
    gateway: ServerThread, upstreams: list[Upstream], make_key: Callable[..., str],
    tmp_path: Path,
) -> None:
    for up in upstreams:
        up.fake.auto_advance = False  # the batch stays where it is
    src = batch_file(tmp_path / "in.jsonl", 2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "batch", "submit", str(src), "--model", GROUP,
         "--wait", *FAST],
        env=env_for(gateway, make_key([GROUP])), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = ""
    while not line.startswith("batch_"):  # the first progress line: waiting
        line = proc.stdout.readline()
        assert line, "the CLI ended before waiting"
    batch_id = line.split()[0]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"gateway batch status {batch_id}" in err
