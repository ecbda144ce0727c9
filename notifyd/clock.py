"""Wall clock of the worker, optionally started at a chosen instant (settings.clock_start).

Time rules (quiet hours, throttle windows, retry schedules) read the clock only
through :func:`now`, so a simulation or a test can run the real worker at, say,
23:59 in some time zone while time still advances normally.
"""

from __future__ import annotations

import time
from datetime import datetime

_offset = 0.0


def set_start(start: datetime | None) -> None:
    global _offset
    _offset = 0.0 if start is None else start.timestamp() - time.time()


def now() -> float:
    return time.time() + _offset
