"""The running gateway: config, store, auth, router and one provider per deployment."""

from __future__ import annotations

import aiohttp

from gateway.auth import Authenticator
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.provider import Deployment, Provider
from gateway.routing import Router
from gateway.store import Store


class Gateway:
    def __init__(self, config: Config, provider_classes: dict[str, type[Provider]]) -> None:
        self.config = config
        self.settings = config.settings
        self.provider_classes = provider_classes
        self.deployments: dict[str, Deployment] = {d.id: d for d in config.deployments}
        self.groups = config.groups()
        self.store = Store(config.settings.database_url)
        self.auth = Authenticator(self.store, config.settings.master_key)
        self.router = Router()
        self.providers: dict[str, Provider] = {}
        self.http: aiohttp.ClientSession | None = None
        for d in config.deployments:
            if d.provider not in provider_classes:
                installed = ", ".join(sorted(provider_classes)) or "none"
                raise ConfigError(
                    f"deployment of {d.model_name!r}: no installed adapter handles prefix "
                    f"{d.provider!r} (installed: {installed})"
                )

    async def start(self) -> None:
        await self.store.connect()
        # One pooled session per process; per-host limit high enough for fan-out uploads
        # next to many small polls.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
        )
        for d in self.config.deployments:
            self.providers[d.id] = self.provider_classes[d.provider](d, self.http)

    async def stop(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        if self.http is not None:
            await self.http.close()
        await self.store.disconnect()

    def provider(self, deployment_id: str) -> Provider | None:
        return self.providers.get(deployment_id)
