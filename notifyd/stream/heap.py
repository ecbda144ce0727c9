"""The worker's policy for Python's cyclic garbage collector.

With the default ``memory://`` store every table row is a Python object, and the
collector's defaults (a young collection every 700 net allocations, a full one each
time the heap has grown by a quarter) made a busy worker walk its whole heap over and
over: measured on 2 cores, 20,000 users, a burst of 20,000 events, the collector took
~2 of every 10 s of the worker's main thread (full collections of 0.3-0.9 s each, which
are also latency stalls).  Two changes, both settings (``notifyd.config``):

- a larger young generation (``gc_young_threshold``): most objects of a record's
  handling die by reference counting anyway; a young collection per 50,000 allocations
  instead of 700 finds the same cycles at a fraction of the cost;
- ``gc.freeze()`` once the tables are recovered (``gc_freeze_after_recovery``): what is
  alive then (modules, the app, the recovered rows) moves to the permanent generation,
  which full collections skip.  A row replaced later is still freed by reference
  counting; only a cycle among frozen objects would outlive its use, and table rows
  (JSON values) hold no cycles.  A full collection runs first, so nothing dead is kept.
"""

from __future__ import annotations

import gc
from typing import Any

import structlog

from notifyd.config import Settings

log = structlog.stdlib.get_logger("notifyd.stream.heap")

#: Python's own thresholds for the older generations (collections of the generation below).
_OLDER = (10, 10)


def configure(settings: Settings) -> None:
    """Apply the young-generation threshold (0: Python's defaults stay)."""
    if settings.gc_young_threshold > 0:
        gc.set_threshold(settings.gc_young_threshold, *_OLDER)


def freeze() -> int:
    """Collect, then freeze what is alive; returns the number of objects frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def install(app: Any, settings: Settings) -> None:
    """Freeze the heap each time ``app`` has recovered its tables (an assignment's end)."""
    if not settings.gc_freeze_after_recovery:
        return

    async def on_recovered(sender: Any = None, **_: Any) -> None:
        frozen = freeze()
        log.info("heap.frozen", objects=frozen)

    app.on_rebalance_complete.connect(on_recovered, weak=False)
