"""config.yaml: LiteLLM's proxy config format, read verbatim.

Only `model_list` entries with `model_info.mode: batch` become deployments; other entries (chat
models in a shared LiteLLM config) are ignored. Any string value `os.environ/NAME` is replaced by
that environment variable, and a missing one is an error naming the entry and field.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.provider import Deployment, Provider

ENV_PREFIX = "os.environ/"
DEFAULT_DATABASE_URL = "sqlite:///gateway.db"


@dataclass
class Settings:
    master_key: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    max_file_bytes: int = 200 << 20
    max_line_bytes: int = 10 << 20
    max_requests_per_file: int = 100_000
    spool_dir: str | None = None
    batch_poll_interval: float = 60.0  # seconds; 0 turns the background poller off


@dataclass
class Config:
    deployments: list[Deployment]
    settings: Settings = field(default_factory=Settings)

    def groups(self) -> dict[str, list[Deployment]]:
        out: dict[str, list[Deployment]] = {}
        for d in self.deployments:
            out.setdefault(d.model_name, []).append(d)
        return out


def _resolve(value: Any, where: str) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolve(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _deployment_id(model_name: str, params: Mapping[str, Any], seen: set[str]) -> str:
    # Stable across restarts (placements in the database refer to it) and secret-free.
    basis = "|".join(
        str(params.get(k) or "")
        for k in ("model", "api_base", "api_version", "vertex_project", "vertex_location")
    )
    digest = hashlib.sha256(f"{model_name}|{basis}".encode()).hexdigest()[:16]
    candidate, n = digest, 1
    while candidate in seen:
        n += 1
        candidate = f"{digest}-{n}"
    return candidate


def parse_config(
    raw: Mapping[str, Any], providers: Mapping[str, type[Provider]] | None = None
) -> Config:
    """Build a Config from parsed YAML. With `providers`, check every prefix has an adapter."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: the top level must be a mapping with a model_list")
    general = raw.get("general_settings") or {}
    if not isinstance(general, Mapping):
        raise ConfigError("general_settings: must be a mapping")
    general = _resolve(dict(general), "general_settings")
    settings = Settings(
        master_key=general.get("master_key") or os.environ.get("GATEWAY_MASTER_KEY"),
        database_url=general.get("database_url")
        or os.environ.get("DATABASE_URL")
        or DEFAULT_DATABASE_URL,
        spool_dir=general.get("spool_dir") or os.environ.get("GATEWAY_SPOOL_DIR"),
    )
    for key, attr, unit in (
        ("max_file_size_mb", "max_file_bytes", 1 << 20),
        ("max_line_size_mb", "max_line_bytes", 1 << 20),
        ("max_requests_per_file", "max_requests_per_file", 1),
        ("batch_poll_interval", "batch_poll_interval", 1),
    ):
        if key in general:
            value = general[key]
            zero_ok = key == "batch_poll_interval"  # 0 turns the poller off
            if not isinstance(value, int | float) or value < 0 or (value == 0 and not zero_ok):
                raise ConfigError(f"general_settings.{key}: must be a positive number")
            setattr(settings, attr, type(getattr(settings, attr))(value * unit))

    model_list = raw.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        raise ConfigError("model_list: must be a non-empty list of deployments")
    deployments: list[Deployment] = []
    seen: set[str] = set()
    for i, entry in enumerate(model_list):
        where = f"model_list[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a mapping")
        model_name = entry.get("model_name")
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError(f"{where}.model_name: required, a non-empty string")
        where = f"{where} (model_name {model_name!r})"
        info = entry.get("model_info") or {}
        if not isinstance(info, Mapping):
            raise ConfigError(f"{where}.model_info: must be a mapping")
        if info.get("mode") != "batch":
            continue
        params = entry.get("litellm_params", entry.get("params"))
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}.litellm_params: required, a mapping")
        params = _resolve(dict(params), f"{where}.litellm_params")
        model = params.get("model")
        if not isinstance(model, str) or "/" not in model:
            raise ConfigError(
                f"{where}.litellm_params.model: required, as '<provider>/<model>' "
                "(e.g. openai/gpt-4o-mini, azure/<deployment>, vertex_ai/gemini-2.5-flash)"
            )
        prefix, _, upstream_model = model.partition("/")
        if providers is not None and prefix not in providers:
            installed = ", ".join(sorted(providers)) or "none"
            raise ConfigError(
                f"{where}.litellm_params.model: no installed adapter handles prefix "
                f"{prefix!r} (installed: {installed})"
            )
        dep_id = info.get("id")
        if dep_id is not None and (not isinstance(dep_id, str) or dep_id in seen):
            raise ConfigError(f"{where}.model_info.id: must be a unique string")
        dep_id = dep_id or _deployment_id(model_name, params, seen)
        seen.add(dep_id)
        deployments.append(
            Deployment(
                id=dep_id,
                model_name=model_name,
                provider=prefix,
                model=upstream_model,
                params=params,
                model_info=dict(info),
            )
        )
    if not deployments:
        raise ConfigError("model_list: no entry has model_info.mode: batch")
    return Config(deployments=deployments, settings=settings)


def load_config(
    path: str | Path, providers: Mapping[str, type[Provider]] | None = None
) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(raw, providers)
