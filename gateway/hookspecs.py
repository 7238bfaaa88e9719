"""The plugin surface: one registration hook.

An adapter is a distribution with an entry point in the `gateway.adapters` group pointing at a
module that implements::

    from gateway import hookimpl, Provider

    class MyProvider(Provider):
        name = "myprovider"
        ...

    @hookimpl
    def register_providers():
        return [MyProvider]
"""

from __future__ import annotations

import pluggy

from gateway.provider import Provider

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def register_providers() -> list[type[Provider]]:  # type: ignore[empty-body]
    """Return the provider classes this plugin contributes."""
