"""Adapters come from entry points; a disabled one is never imported. Ids are opaque."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import Batch, ConfigError, Provider, ResultKind, Submission, hookimpl, ids
from gateway.plugins import load_providers


def run_python(code: str, env_toml: Path | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    if env_toml is not None:
        env["GATEWAY_PLUGINS_TOML"] = str(env_toml)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    return proc.stdout.strip()


CHECK = (
    "import sys; from gateway.plugins import load_providers; p = load_providers(); "
    "print(sorted(p), 'gateway_openai' in sys.modules)"
)


def test_enabled_adapter_is_found_through_entry_points() -> None:
    out = run_python(CHECK, Path("/nonexistent/plugins.toml"))
    assert "'openai'" in out and out.endswith("True")


def test_disabled_adapter_is_never_imported(tmp_path: Path) -> None:
    toml = tmp_path / "plugins.toml"
    toml.write_text('[adapters.openai]\npath = "adapters/openai"\nenabled = false\n')
    out = run_python(CHECK, toml)
    assert "'openai'" not in out and out.endswith("False")


def test_core_never_imports_an_adapter() -> None:
    core = Path(__file__).parents[1] / "gateway"
    imports = re.compile(r"^\s*(?:import|from)\s+gateway_", re.M)
    for source in core.rglob("*.py"):
        assert not imports.search(source.read_text()), source


def test_ids_are_opaque_prefixed_and_random() -> None:
    files = {ids.new_file_id() for _ in range(2000)}
    batches = {ids.new_batch_id() for _ in range(2000)}
    assert len(files) == len(batches) == 2000
    assert all(f.startswith("file-") and len(f) == 27 and f[5:].isalnum() for f in files)
    assert all(b.startswith("batch_") and len(b) == 28 for b in batches)
    assert all(ids.looks_like("file-", f) for f in files)
    assert not ids.looks_like("file-", "file-abc") and not ids.looks_like("file-", "x" * 27)
    assert ids.new_key().startswith("sk-")


class _Incomplete(Provider):
    name = "incomplete"

    async def submit(self, job: Submission) -> Batch:
        raise NotImplementedError

    async def poll(self, batch_id: str) -> Batch:
        raise NotImplementedError


class _Nameless(Provider):
    async def submit(self, job: Submission) -> Batch:
        raise NotImplementedError

    async def poll(self, batch_id: str) -> Batch:
        raise NotImplementedError

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        raise NotImplementedError


class _Plugin:
    def __init__(self, *classes: type) -> None:
        self.classes = list(classes)

    @hookimpl
    def register_providers(self) -> list[type]:
        return self.classes


@pytest.mark.parametrize(
    ("cls", "problem"),
    [
        (_Incomplete, "'_Incomplete' does not implement results"),
        (_Nameless, "'_Nameless' has no `name`"),
        (dict, "'dict' is not a subclass of gateway.Provider"),
    ],
)
def test_a_broken_provider_class_is_refused_at_registration(cls: type, problem: str) -> None:
    plugin = _Plugin(cls)
    with pytest.raises(ConfigError) as info:
        load_providers((plugin,))
    assert problem in str(info.value) and "plugin " in str(info.value)
