"""Finding and loading adapter plugins (pluggy over the `gateway.adapters` entry points)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pluggy

from gateway import hookspecs
from gateway.errors import ConfigError
from gateway.provider import Provider

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
    for classes in pm.hook.register_providers():
        for cls in classes:
            if cls.name in providers and providers[cls.name] is not cls:
                raise ConfigError(
                    f"two adapters register provider {cls.name!r}: "
                    f"{providers[cls.name].__module__} and {cls.__module__}"
                )
            providers[cls.name] = cls
    return providers
