"""Build the streaming core from settings: the one place an app is made.

Nothing in notifyd declares topics, tables or agents at import time; this does, on a
fresh app, so the worker, the CLI and each test build theirs with the settings they
choose.  Web views (and anything else outside the core) join through ``extensions``,
so the core never imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from notifyd.config import Settings
from notifyd.providers.base import Provider
from notifyd.stream.agents import register_agents
from notifyd.stream.app import faust_app
from notifyd.stream.declare import declare_tables, declare_topics
from notifyd.stream.handlers.deliver import build_provider as configured_provider
from notifyd.stream.runtime import Runtime, Timer, install


def build_stream(
    settings: Settings,
    *,
    build_provider: Callable[[str, Settings], Provider] | None = None,
    timer: Timer | None = None,
    extensions: Iterable[Callable[[Runtime], None]] = (),
) -> Runtime:
    """A new app with notifyd's topics, tables and agents, made the current runtime.

    ``build_provider`` gives each channel agent its provider (default: the inbox for
    in-app, else as configured: ``stream.handlers.deliver.build_provider``); ``timer``
    drives the channels' rate limits and pauses; ``extensions`` run last, on the runtime.
    """
    app = faust_app(settings)
    rt = Runtime(
        settings=settings,
        app=app,
        topics=declare_topics(app, settings),
        tables=declare_tables(app, settings),
        build_provider=build_provider or configured_provider,
        timer=timer or Timer(),
    )
    install(rt)
    register_agents(rt)
    for extend in extensions:
        extend(rt)
    return rt
