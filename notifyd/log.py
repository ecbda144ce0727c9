"""structlog setup: JSON in production, readable console in development.

Faust, aiokafka and aiohttp log through the standard library; their records are
rendered by the same structlog processor chain so one process writes one format.
Per-event context (topic, partition, offset, notification id, user id) is bound
with ``structlog.contextvars`` by the agents.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SECRET_KEYS = frozenset(
    {"password", "access_token", "refresh_token", "token", "secret", "authorization", "id_token"}
)


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # Belt and braces: a secret passed as a log field by mistake is masked.
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "**********"
    return event_dict


#: Whether DEBUG is below the configured level (set by :func:`configure`).
_debug_off = False


class BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger whose ``debug`` returns at once while DEBUG is off.

    The hot path's per-record lines are debug; even filtered first in the chain
    (``filter_by_level``) each cost the proxy, the chain call and a ``DropEvent`` (~2 %
    of a busy worker in py-spy).  The flag is read per call, so a logger cached before a
    later :func:`configure` still follows it."""

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _debug_off:
            return None
        return super().debug(event, *args, **kw)


def configure(fmt: str = "json", level: str = "INFO") -> None:
    global _debug_off
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # First: a disabled level (per-record debug lines on the hot path) costs one
            # isEnabledFor() instead of the whole chain.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _debug_off = root.level > logging.DEBUG
    # aiokafka is chatty about reconnects; warnings and up are what operators need.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # Apprise's debug lines carry request headers and URL parameters (tokens, API keys).
    logging.getLogger("apprise").setLevel(max(logging.INFO, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
