"""Finding and loading adapter plugins (pluggy over the `gateway.adapters` entry points)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pluggy

from gateway import hookspecs
from gateway.errors import ConfigError
from gateway.provider import Provider, ProviderParams

ENTRY_POINT_GROUP = "gateway.adapters"


def disabled_plugins(path: Path) -> set[str]:
    """Entry-point names that `plugins.toml` marks `enabled = false`.

    `make install` never installs a disabled adapter; blocking it here as well means an adapter
    left over in an old venv is still not imported.
    """
    if not path.is_file():
        return set()
    data = tomllib.loads(path.read_text())
    return {
        name
        for name, spec in data.get("adapters", {}).items()
        if isinstance(spec, dict) and spec.get("enabled") is False
    }


def load_providers(extra_plugins: tuple[object, ...] = ()) -> dict[str, type[Provider]]:
    """Load every enabled adapter and return its provider classes by `name`."""
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)
    toml = Path(os.environ.get("GATEWAY_PLUGINS_TOML", "plugins.toml"))
    for name in disabled_plugins(toml):
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    providers: dict[str, type[Provider]] = {}
    for impl in pm.hook.register_providers.get_hookimpls():
        returned = impl.function()
        if not isinstance(returned, list | tuple):
            raise ConfigError(f"plugin {impl.plugin_name!r}: register_providers must return a "
                              "list of provider classes")
        for candidate in returned:
            cls = check_provider_class(impl.plugin_name, candidate)
            if cls.name in providers and providers[cls.name] is not cls:
                raise ConfigError(
                    f"two adapters register provider {cls.name!r}: "
                    f"{providers[cls.name].__module__} and {cls.__module__}"
                )
            providers[cls.name] = cls
    return providers


def check_provider_class(plugin: str, cls: object) -> type[Provider]:
    """Refuse a provider class at registration, naming plugin and what is missing, so a broken
    adapter stops `gateway serve` instead of failing a client's request (pluggy's style)."""
    where = f"plugin {plugin!r}: provider class {getattr(cls, '__qualname__', cls)!r}"
    if not isinstance(cls, type) or not issubclass(cls, Provider):
        raise ConfigError(f"{where} is not a subclass of gateway.Provider")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{where} has no `name` (the config prefix, e.g. 'azure')")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, ProviderParams)):
        raise ConfigError(f"{where}: `Params` must subclass gateway.ProviderParams")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"{where} does not implement {', '.join(missing)}")
    return cls
