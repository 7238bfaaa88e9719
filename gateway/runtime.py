"""The running gateway: config, store, kept files, auth, router and one provider per
deployment."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import aiohttp

from gateway.auth import Authenticator
from gateway.config import Config
from gateway.copies import Copier
from gateway.errors import ConfigError
from gateway.filestore import FileStore, open_file_store
from gateway.journal import Journal
from gateway.provider import Deployment, Provider, ProviderContext
from gateway.readthrough import ReadThrough
from gateway.routing import Router
from gateway.selfrun.params import runs_in_gateway
from gateway.selfrun.provider import GatewayRunProvider
from gateway.store import Store
from gateway.upstream_calls import session_for

log = logging.getLogger("gateway")


class DeploymentState:
    """`ProviderContext.state`: one deployment's rows of the adapter state table."""

    def __init__(self, store: Store, deployment_id: str) -> None:
        self.store = store
        self.deployment_id = deployment_id

    async def get(self, key: str) -> bytes | None:
        return await self.store.state_get(self.deployment_id, key)

    async def put(self, key: str, value: bytes) -> None:
        await self.store.state_put(self.deployment_id, key, value)

    async def delete(self, key: str) -> None:
        await self.store.state_delete(self.deployment_id, key)


class Gateway:
    def __init__(self, config: Config, provider_classes: dict[str, type[Provider]]) -> None:
        self.config = config
        self.settings = config.settings
        self.provider_classes = provider_classes
        self.deployments: dict[str, Deployment] = {d.id: d for d in config.deployments}
        self.groups = config.groups()
        self.store = Store(config.settings.database_url)
        self.auth = Authenticator(self.store, config.settings.master_key,
                                  config.settings.row_cache_seconds)
        self.reads = ReadThrough()  # retrieves' shared polls
        self.router = Router()
        # This process's intents (see gateway/journal.py).
        self.journal = Journal(self.store, config.settings.crash_recovery_seconds)
        self.providers: dict[str, Provider] = {}
        self.http: aiohttp.ClientSession | None = None
        self.sessions: list[aiohttp.ClientSession] = []
        self._files: FileStore | None = None
        for d in config.deployments:
            if d.provider not in provider_classes and not runs_in_gateway(d.provider,
                                                                          d.model_info):
                installed = ", ".join(sorted(provider_classes)) or "none"
                raise ConfigError(
                    f"deployment of {d.model_name!r}: no installed adapter handles prefix "
                    f"{d.provider!r} (installed: {installed})"
                )

    @property
    def files(self) -> FileStore:
        if self._files is None:
            raise RuntimeError("the gateway is not started")
        return self._files

    @property
    def copier(self) -> Copier:
        return Copier(self.store, self.files, self.journal, self.settings.copy_retry_interval)

    async def start(self) -> None:
        """Open everything; on any failure close what was opened, then raise."""
        try:
            s = self.settings
            self._files = open_file_store(s.file_storage, Path(s.data_dir),
                                          s.file_storage_options)
            await self.store.connect()
            # One pooled session per process; per-host limit high enough for fan-out uploads
            # next to many small polls.
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=256)
            self.http = aiohttp.ClientSession(connector=connector)
            for d in self.config.deployments:
                # Its own session over the shared pool: every call it makes is counted under it.
                session = session_for(connector, d.provider, d.id)
                self.sessions.append(session)
                ctx = ProviderContext(http=session, state=DeploymentState(self.store, d.id))
                if runs_in_gateway(d.provider, d.model_info):
                    # Core code, not an adapter: it keeps its runs in the store and file store.
                    self.providers[d.id] = GatewayRunProvider(d, ctx, self.store.runs,
                                                              self._files)
                else:
                    self.providers[d.id] = self.provider_classes[d.provider](d, ctx)
        except BaseException:
            await self.stop()
            raise
        log.info("file store: %s; %d deployments in %d model groups", self.files.url,
                 len(self.deployments), len(self.groups))
        if not self.settings.master_key:
            log.warning("no master key: admin routes (/key/*, /team/*, /user/*, /metrics) are "
                        "disabled; set general_settings.master_key or GATEWAY_MASTER_KEY "
                        "(or LITELLM_MASTER_KEY) to enable them")

    async def stop(self) -> None:
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.aclose()
        self.providers.clear()
        for session in self.sessions:
            await session.close()  # leaves the shared pool to the owning session below
        self.sessions.clear()
        if self.http is not None:
            await self.http.close()
            self.http = None
        await self.store.disconnect()
        if self._files is not None:
            await self._files.close()
            self._files = None

    def provider(self, deployment_id: str) -> Provider | None:
        return self.providers.get(deployment_id)
