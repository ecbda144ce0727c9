"""The app under test, built by the factory with the settings a test chooses.

``tests/conftest.py`` builds one per test (environment settings); a test that needs
other settings or providers builds its own with :func:`build_app`, which is current
for the rest of the test (``stream.runtime.scoped`` in the conftest fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.types import AgentT

from notifyd.config import Settings
from notifyd.providers.base import Provider
from notifyd.service import create_app
from notifyd.stream.runtime import Runtime, Timer, current

#: Apps built by the current test, closed when it ends (:func:`close_built`).
_built: list[Runtime] = []


def build_app(
    *,
    build_provider: Callable[[str, Settings], Provider] | None = None,
    timer: Timer | None = None,
    **settings: Any,
) -> Runtime:
    """A new current app; ``settings`` override the ``NOTIFYD_*`` environment, unchecked
    (a test may choose a value out of the allowed range, e.g. a long batch wait)."""
    chosen = Settings().model_copy(update=settings)
    rt = create_app(chosen, build_provider=build_provider, timer=timer)
    _built.append(rt)
    return rt


def close_built() -> None:
    """Close what Faust made lazily for the apps of a test that never started: the
    consumer an agent's ``test_context`` creates runs an event loop of its own."""
    while _built:
        consumer = _built.pop().app.__dict__.get("_consumer")
        thread = getattr(consumer, "_thread", None)
        if thread is not None:
            thread.thread_loop.close()


def provider(p: Provider) -> Callable[[str, Settings], Provider]:
    """``build_provider`` giving ``p`` to every channel agent."""
    return lambda channel, settings: p


def app_agent(name: str, rt: Runtime | None = None) -> AgentT[Any]:
    """The agent ``notifyd.<name>`` (channel agents: ``agent.<channel>``) of ``rt``
    (default: the current app)."""
    found: AgentT[Any] = (rt or current()).app.agents[f"notifyd.{name}"]
    return found
