"""Faust's livelock check, with one event-loop turn per hundred partitions.

Every 2.5 commit intervals Faust's consumer checks each assigned partition for a stream
that stopped taking records (``Consumer.verify_all_partitions_active``), and yields to
the event loop before each one with ``Service.sleep(0)`` (a ``wait_for`` and a task).
A worker is assigned ~200 partitions (every topic and changelog, 8 partitions each):
a burst of ~570 event-loop turns every 2.5 s, the zero-timeout ``epoll_wait`` calls
strace showed on an idle worker.  The same checks run here, yielding once per
:data:`CHUNK` partitions.  The saving is small (the bursts looked far costlier under
strace than they are: ``perf stat`` on an idle worker moved within its noise); the
checks themselves remain.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

from faust.transport.consumer import Consumer

#: Partitions checked between two yields to the event loop.
CHUNK = 100

#: Faust's own (``tests/unit/test_livelock.py`` checks it still does what this replaces).
faust_original = Consumer.verify_all_partitions_active


async def verify_all_partitions_active(self: Any) -> None:
    """``Consumer.verify_all_partitions_active`` with a yield per :data:`CHUNK`."""
    now = monotonic()
    for i, tp in enumerate(self.assignment()):
        if i and i % CHUNK == 0:
            await asyncio.sleep(0)
        if self.should_stop:
            return
        self.verify_event_path(now, tp)


def install() -> None:
    """Use the chunked check in every Faust consumer (once per process)."""
    if Consumer.verify_all_partitions_active is not verify_all_partitions_active:
        Consumer.verify_all_partitions_active = verify_all_partitions_active  # type: ignore[method-assign]
