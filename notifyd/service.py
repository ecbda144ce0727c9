"""notifyd as one service: the streaming core with its web view mounted.

:func:`create_app` is the factory the worker (through the CLI), the CLI and the tests
call; it lives outside :mod:`notifyd.stream` so the core never imports the web view.
"""

from __future__ import annotations

from collections.abc import Callable

from notifyd.config import Settings, get_settings
from notifyd.domain.unsubscribe import share_secret_from
from notifyd.providers.base import Provider
from notifyd.stream.factory import build_stream
from notifyd.stream.runtime import Runtime, Timer
from notifyd.web.auth.store import read_jwt_secret
from notifyd.web.view import install_web_view


def create_app(
    settings: Settings | None = None,
    *,
    build_provider: Callable[[str, Settings], Provider] | None = None,
    timer: Timer | None = None,
) -> Runtime:
    """Build the app (topics, tables, agents, web view) from ``settings`` (default: the
    ``NOTIFYD_*`` environment) and make it the current runtime."""
    share_secret_from(read_jwt_secret)  # the e-mail provider's unsubscribe key
    return build_stream(
        settings or get_settings(),
        build_provider=build_provider,
        timer=timer,
        extensions=(install_web_view,),
    )
