"""The README's developer example runs as written against a live gateway."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.testing.servers import ServerThread
from tests.conftest import GROUP

README = Path(__file__).parents[1] / "README.md"


def developer_example() -> str:
    text = README.read_text()
    section = text[text.index("## Developer"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its developer example"
    return match.group(1)


def test_readme_developer_example_runs(
    gateway: ServerThread, make_key: Callable[..., str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    code = developer_example()
    assert "http://127.0.0.1:4000/v1" in code and '"sk-…"' in code
    code = code.replace("http://127.0.0.1:4000/v1", gateway.url + "/v1")
    code = code.replace('"sk-…"', repr(make_key([GROUP])))
    code = code.replace("time.sleep(1)", "time.sleep(0)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert printed.count('"custom_id"') == 3
    assert os.path.exists(tmp_path / "batch.jsonl")
