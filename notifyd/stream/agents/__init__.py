"""Faust agents, one stream per module; each module's ``register`` declares its agents
on a runtime's app (:func:`register_agents`, called by the factory)."""

from __future__ import annotations

from notifyd.stream.agents import audience, callbacks, channel, control, ingest, preferences, status
from notifyd.stream.runtime import Runtime


def register_agents(rt: Runtime) -> None:
    for module in (ingest, preferences, control, status, channel, audience, callbacks):
        module.register(rt)
