"""config.yaml: LiteLLM's proxy config format, read verbatim.

Only `model_list` entries with `model_info.mode: batch` become deployments; other entries (chat
models in a shared LiteLLM config) are ignored. Any string value `os.environ/NAME` is replaced by
that environment variable, and a missing one is an error naming the entry and field.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.errors import ConfigError
from gateway.provider import Deployment, Provider, ProviderParams
from gateway.selfrun.params import GatewayRunParams, runs_in_gateway

log = logging.getLogger("gateway.config")

ENV_PREFIX = "os.environ/"
DEFAULT_DATABASE_URL = "sqlite:///gateway.db"


WEBHOOK_EVENTS = ("batch.completed", "batch.failed", "batch.cancelled", "batch.expired")


@dataclass(frozen=True)
class WebhookEndpoint:
    """One entry of `general_settings.webhooks`: where batch events go, signed with `secret`."""

    url: str
    secret: str  # whsec_<base64>, as Standard Webhooks has them
    events: tuple[str, ...] = WEBHOOK_EVENTS
    key: str | None = None  # only batches of this key (its token id, key_…)
    team_id: str | None = None  # only batches whose key has this team_id

    @property
    def id(self) -> str:
        """Stable across restarts and reorderings (outbox rows refer to it), secret-free."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


_WEBHOOK_FIELDS = ("url", "secret", "events", "key", "team_id")


def _webhooks(raw: Any) -> list[WebhookEndpoint]:
    where = "general_settings.webhooks"
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list of endpoints, each with url and secret")
    out: list[WebhookEndpoint] = []
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: must be a mapping with url and secret")
        for name in entry:
            if name not in _WEBHOOK_FIELDS:
                raise ConfigError(f"{at}.{name}: not a webhook setting "
                                  f"({', '.join(_WEBHOOK_FIELDS)})")
        url = entry.get("url")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in (
                "http", "https") or not urllib.parse.urlsplit(url).hostname:
            raise ConfigError(f"{at}.url: required, an http:// or https:// URL")
        if any(e.url == url for e in out):
            raise ConfigError(f"{at}.url: the same URL as an earlier entry")
        secret = entry.get("secret")
        if not isinstance(secret, str) or not _is_webhook_secret(secret):
            raise ConfigError(f"{at}.secret: required, 'whsec_' followed by base64 "
                              "(e.g. whsec_ + `openssl rand -base64 32`)")
        events = entry.get("events", list(WEBHOOK_EVENTS))
        if (not isinstance(events, list) or not events
                or not all(e in WEBHOOK_EVENTS for e in events)):
            raise ConfigError(f"{at}.events: must be a non-empty list of "
                              f"{', '.join(WEBHOOK_EVENTS)}")
        filters: dict[str, str | None] = {}
        for name in ("key", "team_id"):
            value = entry.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # `team_id: 42` in YAML
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{at}.{name}: must be a non-empty string")
            filters[name] = value
        out.append(WebhookEndpoint(url=url, secret=secret, events=tuple(dict.fromkeys(events)),
                                   key=filters["key"], team_id=filters["team_id"]))
    return out


def _is_webhook_secret(secret: str) -> bool:
    body = secret.removeprefix("whsec_")
    if body == secret or not body:
        return False
    try:
        return bool(base64.b64decode(body + "=" * (-len(body) % 4), validate=True))
    except ValueError:
        return False


@dataclass
class Settings:
    master_key: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    max_file_bytes: int = 200 << 20
    max_line_bytes: int = 10 << 20
    max_requests_per_file: int = 100_000
    max_json_body_bytes: int = 1 << 20  # batch create, key and admin routes
    spool_dir: str | None = None
    batch_poll_interval: float = 60.0  # seconds; 0 turns the background poller off
    # Key and batch rows cached per process this long (the staleness of a key change on
    # other instances: see gateway.auth); 0 turns the cache off.
    row_cache_seconds: float = 1.0
    # Where the gateway keeps uploads: None = `<data_dir>/files`; or s3://, gs://, az:// URLs.
    file_storage: str | None = None
    file_storage_options: dict[str, str] = field(default_factory=dict)
    data_dir: str = "gateway-data"
    # First wait before a failed copy to a deployment is made again; doubles per attempt.
    copy_retry_interval: float = 30.0
    # Input files (kept input, copies, record) are deleted this long after upload; None: never.
    file_retention_days: float | None = None
    # What a dead process started upstream but never recorded is found this long after its
    # last sign of life (the lease of its intents; see gateway/journal.py).
    crash_recovery_seconds: float = 60.0
    # Browser origins allowed to call the API (CORS); empty: no CORS headers at all.
    cors_origins: list[str] = field(default_factory=list)
    # /metrics without a key on this port too (None: only with the master key, on the API port),
    # on `metrics_host` (None: the host `gateway serve` listens on).
    metrics_port: int | None = None
    metrics_host: str | None = None
    # Batch events to these endpoints; a failed delivery is tried again after
    # `webhook_retry_seconds`, doubling, until `webhook_retry_for_seconds` after the event.
    webhooks: list[WebhookEndpoint] = field(default_factory=list)
    webhook_retry_seconds: float = 5.0
    webhook_retry_for_seconds: float = 86_400.0
    # How long an instance holds the running of a deployment's gateway-run batches without
    # renewing; after a crash, another instance resumes them this long after.
    gateway_run_lease_seconds: float = 30.0
    # A batch of more requests than this is split over the deployments of its group
    # (gateway/split) as with `extra_body={"split": "auto"}`; None: only when asked.
    split_batches_over: float | None = None


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
    if isinstance(value, datetime.date):
        # YAML reads an unquoted `api_version: 2024-10-21` as a date; every adapter means text.
        return value.isoformat()
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


def _deployment_id(model_name: str, params: Mapping[str, Any], identity: tuple[str, ...]) -> str:
    """Stable across restarts and config reorderings (copies in the database refer to it),
    secret-free: a hash of the group and the adapter's identity fields."""
    values = [str(params.get(k) or "") for k in identity]
    # Padded to five fields so that ids minted before adapters declared their identity (from
    # model|api_base|api_version|vertex_project|vertex_location) stay the same.
    values += [""] * (5 - len(values))
    return hashlib.sha256(f"{model_name}|{'|'.join(values)}".encode()).hexdigest()[:16]


def _params(cls: type[ProviderParams], raw: Mapping[str, Any], where: str) -> ProviderParams:
    try:
        params = msgspec.convert(dict(raw), type=cls, strict=False)
    except msgspec.ValidationError as e:
        text, _, at = str(e).partition(" - at `$")
        path = at.rstrip("`").lstrip(".")
        raise ConfigError(f"{where}.litellm_params{'.' + path if path else ''}: {text}") from e
    known = {f.encode_name for f in msgspec.structs.fields(cls)}
    for key in sorted(set(raw) - known):
        # config.yaml is shared with LiteLLM, which has keys of its own: a warning, not an error.
        log.warning("%s.litellm_params.%s: not a setting of this adapter; ignored", where, key)
    return params


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
        # LITELLM_MASTER_KEY: the same setting under LiteLLM's name (config.yaml is shared).
        master_key=general.get("master_key") or os.environ.get("GATEWAY_MASTER_KEY")
        or os.environ.get("LITELLM_MASTER_KEY"),
        database_url=general.get("database_url")
        or os.environ.get("DATABASE_URL")
        or DEFAULT_DATABASE_URL,
        spool_dir=general.get("spool_dir") or os.environ.get("GATEWAY_SPOOL_DIR"),
        file_storage=general.get("file_storage") or os.environ.get("GATEWAY_FILE_STORAGE"),
        data_dir=general.get("data_dir") or os.environ.get("GATEWAY_DATA_DIR") or "gateway-data",
    )
    options = general.get("file_storage_options") or {}
    if not isinstance(options, Mapping) or not all(isinstance(v, str) for v in options.values()):
        raise ConfigError("general_settings.file_storage_options: must map names to strings")
    settings.file_storage_options = {str(k): v for k, v in options.items()}
    origins = general.get("cors_origins") or []
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ConfigError("general_settings.cors_origins: must be a list of origins "
                          "(e.g. https://app.example.com) or \"*\"")
    settings.cors_origins = origins
    port = general.get("metrics_port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)  # from os.environ/NAME
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        raise ConfigError("general_settings.metrics_port: must be a port number (1-65535)")
    settings.metrics_port = port
    host = general.get("metrics_host")
    if host is not None and not isinstance(host, str):
        raise ConfigError("general_settings.metrics_host: must be a host name or address")
    settings.metrics_host = host
    settings.webhooks = _webhooks(general.get("webhooks"))
    for key, attr, unit in (
        ("max_file_size_mb", "max_file_bytes", 1 << 20),
        ("max_line_size_mb", "max_line_bytes", 1 << 20),
        ("max_requests_per_file", "max_requests_per_file", 1),
        ("max_json_body_kb", "max_json_body_bytes", 1 << 10),
        ("batch_poll_interval", "batch_poll_interval", 1),
        ("row_cache_seconds", "row_cache_seconds", 1),
        ("copy_retry_interval", "copy_retry_interval", 1),
        ("file_retention_days", "file_retention_days", 1),
        ("crash_recovery_seconds", "crash_recovery_seconds", 1),
        ("webhook_retry_seconds", "webhook_retry_seconds", 1),
        ("webhook_retry_for_seconds", "webhook_retry_for_seconds", 1),
        ("gateway_run_lease_seconds", "gateway_run_lease_seconds", 1),
        ("split_batches_over", "split_batches_over", 1),
    ):
        if key in general:
            value = general[key]
            zero_ok = key in ("batch_poll_interval", "row_cache_seconds")  # 0: off
            if not isinstance(value, int | float) or value < 0 or (value == 0 and not zero_ok):
                raise ConfigError(f"general_settings.{key}: must be a positive number")
            setattr(settings, attr, type(getattr(Settings(), attr) or 0.0)(value * unit))

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
        if info.get("batch_execution") not in (None, "gateway", "provider"):
            raise ConfigError(f"{where}.model_info.batch_execution: must be 'gateway' (the "
                              "gateway sends each line) or 'provider' (the default)")
        # Deployments without a batch API: the gateway runs their batches (gateway/selfrun).
        in_gateway = runs_in_gateway(prefix, info)
        if providers is not None and prefix not in providers and not in_gateway:
            installed = ", ".join(sorted(providers)) or "none"
            raise ConfigError(
                f"{where}.litellm_params.model: no installed adapter handles prefix "
                f"{prefix!r} (installed: {installed})"
            )
        cls = providers[prefix] if providers is not None and not in_gateway else None
        typed = _params(GatewayRunParams if in_gateway else cls.Params if cls
                        else ProviderParams, params, where)
        dep_id = info.get("id")
        if dep_id is not None and (not isinstance(dep_id, str) or dep_id in seen):
            raise ConfigError(f"{where}.model_info.id: must be a unique string")
        if dep_id is None:
            dep_id = _deployment_id(model_name, params, cls.identity if cls else ("model",
                                                                                  "api_base"))
            if dep_id in seen:
                # Told apart only by their order (two accounts, say): reordering them would
                # re-point copies already made, hence the warning.
                log.warning("%s: same identity as an earlier entry; set model_info.id on both "
                            "so that reordering config.yaml cannot mix up their copies", where)
                base, n = dep_id, 2
                while f"{base}-{n}" in seen:
                    n += 1
                dep_id = f"{base}-{n}"
        seen.add(dep_id)
        deployments.append(
            Deployment(
                id=dep_id,
                model_name=model_name,
                provider=prefix,
                model=upstream_model,
                params=typed,
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
