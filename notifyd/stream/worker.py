"""Start a Faust worker with notifyd's logging and with source topics created first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import faust
import structlog

from notifyd import clock
from notifyd.config import Settings, get_settings
from notifyd.log import configure
from notifyd.stream import heap, restore
from notifyd.stream.topology import ensure_topics


class Worker(faust.Worker):
    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        self.notifyd_settings = settings  # for _setup_logging, called while Faust starts
        super().__init__(app, **kwargs)

    def _setup_logging(self) -> None:
        # Faust installs its own colour handlers; one structlog chain for everything.
        configure(self.notifyd_settings.log_format, self.notifyd_settings.log_level)


def run_worker(build_app: Callable[[Settings], faust.App], s: Settings | None = None) -> int:
    """Create the topics, build the app with ``build_app`` (the factory), restore, run."""
    s = s or get_settings()
    configure(s.log_format, s.log_level)
    log = structlog.stdlib.get_logger("notifyd.stream.worker")
    clock.set_start(s.clock_start)
    if s.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # not available on this platform: the standard loop
            log.warning("worker.uvloop_unavailable")
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        created = asyncio.run(ensure_topics(s))
    except Exception as exc:
        log.error("worker.broker_unreachable", broker=s.broker_url, error=str(exc))
        return 69
    if created:
        log.info("worker.topics_created", topics=created)
    heap.configure(s)
    app = build_app(s)
    heap.install(app, s)
    if restore.enabled(s):
        try:
            asyncio.run(restore.restore_tables(s, app.conf.tabledir))
        except Exception as exc:  # an optimisation only: Faust's recovery does the rest
            log.warning("restore.failed", error=f"{type(exc).__name__}: {exc}")
    log.info(
        "worker.starting",
        broker=s.broker_url,
        web=f"http://{s.web_host}:{s.web_port}",
        store=s.table_store,
        datadir=str(s.datadir),
    )
    w = Worker(app, s, loglevel=s.log_level)
    w.execute_from_commandline()
    return 0
