"""config.yaml: LiteLLM's format loads verbatim; bad configs name the entry and the field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from gateway.plugins import load_providers

ISSUE_CONFIG = textwrap.dedent("""
    model_list:
      - model_name: "gpt-4o-batch"
        litellm_params:
          model: openai/gpt-4o-mini
          api_base: os.environ/OPENAI_API_BASE
          api_key: os.environ/OPENAI_API_KEY
        model_info:
          mode: batch
      - model_name: "gpt-4o-batch"
        litellm_params:
          model: openai/gpt-4o-mini
          api_base: os.environ/OPENAI_API_BASE_2
          api_key: os.environ/OPENAI_API_KEY_2
        model_info:
          mode: batch
    general_settings:
      master_key: os.environ/GATEWAY_MASTER_KEY
""")

ENV = {
    "OPENAI_API_BASE": "http://127.0.0.1:1/v1",
    "OPENAI_API_KEY": "sk-a",
    "OPENAI_API_BASE_2": "http://127.0.0.1:2/v1",
    "OPENAI_API_KEY_2": "sk-b",
    "GATEWAY_MASTER_KEY": "sk-master",
}


def test_the_issue_config_loads_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "config.yaml"
    path.write_text(ISSUE_CONFIG)
    config = load_config(path, load_providers())
    assert config.settings.master_key == "sk-master"
    assert config.settings.database_url == "sqlite:///gateway.db"
    a, b = config.deployments
    assert (a.model_name, a.provider, a.model) == ("gpt-4o-batch", "openai", "gpt-4o-mini")
    assert a.params.api_key == "sk-a" and b.params.api_base == "http://127.0.0.1:2/v1"
    assert a.id != b.id and "sk-" not in a.id
    assert list(config.groups()) == ["gpt-4o-batch"]


def test_database_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    raw = {"model_list": [{"model_name": "m", "params": {"model": "openai/x"},
                           "model_info": {"mode": "batch"}}]}
    assert parse_config(raw).settings.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "model_list: must be a non-empty list"),
        ({"model_list": [{"litellm_params": {"model": "openai/x"}}]},
         "model_list[0].model_name: required"),
        ({"model_list": [{"model_name": "m", "model_info": {"mode": "batch"}}]},
         "model_list[0] (model_name 'm').litellm_params: required"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "gpt-4o"},
                          "model_info": {"mode": "batch"}}]},
         "model_list[0] (model_name 'm').litellm_params.model: required, as '<provider>/<model>'"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x",
                                                                "api_key": "os.environ/NOPE_X"},
                          "model_info": {"mode": "batch"}}]},
         "litellm_params.api_key: environment variable NOPE_X is not set"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "nope/x"},
                          "model_info": {"mode": "batch"}}]},
         "no installed adapter handles prefix 'nope' (installed: "),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x"}}]},
         "no entry has model_info.mode: batch"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x",
                                                                "timeout": "soon"},
                          "model_info": {"mode": "batch"}}]},
         "model_list[0] (model_name 'm').litellm_params.timeout: Expected `float`, got `str`"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x"},
                          "model_info": {"mode": "batch"}}],
          "general_settings": {"max_file_size_mb": -1}},
         "general_settings.max_file_size_mb: must be a positive number"),
    ],
)
def test_bad_config_names_entry_and_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, load_providers())
    assert message in str(info.value)


def test_cli_stops_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: nope/x}\n"
                    "    model_info: {mode: batch}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "model_list[0] (model_name 'm').litellm_params.model" in proc.stderr
    assert "installed: " in proc.stderr and "openai" in proc.stderr


def test_an_unknown_key_is_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/x", "api_bsae": "http://typo", "rpm": 10},
        "model_info": {"mode": "batch"}}]}
    config = parse_config(raw, load_providers())
    assert config.deployments[0].params.api_base is None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("litellm_params.api_bsae: not a setting of this adapter" in w for w in warned)
    assert any("litellm_params.rpm" in w for w in warned)


def test_identity_not_order_names_a_deployment() -> None:
    one = {"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "http://a/v1"},
           "model_info": {"mode": "batch"}}
    two = {"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "http://b/v1"},
           "model_info": {"mode": "batch"}}
    forward = parse_config({"model_list": [one, two]}, load_providers()).deployments
    backward = parse_config({"model_list": [two, one]}, load_providers()).deployments
    assert {d.params.api_base: d.id for d in forward} == \
        {d.params.api_base: d.id for d in backward}


def _serve(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    return proc, time.monotonic() - started


def test_a_bad_value_stops_start_up_within_seconds(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: openai/x, "
                    "timeout: soon}\n    model_info: {mode: batch}\n")
    proc, took = _serve(path)
    assert proc.returncode == 2 and took < 5, (took, proc.stderr)
    assert "model_list[0] (model_name 'm').litellm_params.timeout" in proc.stderr


def test_a_failing_start_exits_within_seconds(tmp_path: Path) -> None:
    # Nothing listens on port 9: the database cannot be opened once serving starts.
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: openai/x}\n"
                    "    model_info: {mode: batch}\n"
                    "general_settings:\n  database_url: postgresql://u@127.0.0.1:9/db\n"
                    f"  data_dir: {tmp_path}\n")
    proc, took = _serve(path)
    assert proc.returncode != 0 and took < 5, (took, proc.stderr)
