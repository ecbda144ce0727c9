"""Fixes for faust-streaming faults that break notifyd's at-least-once guarantee.

Applied once, when :mod:`notifyd.app` is imported (before the app is built).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from faust.transport.producer import ProducerBuffer

log = structlog.stdlib.get_logger("notifyd.faust_fixes")

#: Give up (and let Faust go on as it would have) after this long without progress.
FLUSH_STALL_S = 30.0


async def _flush_until_empty(self: Any) -> None:
    """``ProducerBuffer.flush`` that returns only once the buffer is empty.

    Faust's own returns as soon as no message left the buffer for 0.1 s, even when
    messages remain.  The consumer flushes the producer right before it commits
    offsets, so a slow moment could commit a source record whose table changelog
    records (ledger, inbox, seen, status) were still buffered: a crash then loses
    those table writes although their input is marked done.
    """
    loop = asyncio.get_running_loop()
    last_progress, before = loop.time(), _unsent(self)
    while _unsent(self):
        if self.size:
            await self.flush_atmost(None)  # raises if the producer is not running
        else:  # the last one is being handed to the client: short wait
            await asyncio.sleep(0.001)
        size = _unsent(self)
        if size < before:
            last_progress, before = loop.time(), size
        elif loop.time() - last_progress > FLUSH_STALL_S:
            log.error("producer.flush_stalled", buffered=size, waited_s=FLUSH_STALL_S)
            return


def _unsent(buf: Any) -> int:
    # Queued, plus the one _handle_pending took off the queue and is still handing to
    # the Kafka client (the client's own flush only covers what it already has).
    return int(buf.size) + int(getattr(buf, "_notifyd_sending", 0))


_original_send_pending = ProducerBuffer._send_pending


async def _send_pending_counted(self: Any, fut: Any) -> None:
    self._notifyd_sending = getattr(self, "_notifyd_sending", 0) + 1
    try:
        await _original_send_pending(self, fut)
    finally:
        self._notifyd_sending -= 1


def apply() -> None:
    if getattr(ProducerBuffer.flush, "__notifyd_fix__", False):
        return
    _flush_until_empty.__notifyd_fix__ = True  # type: ignore[attr-defined]
    ProducerBuffer.flush = _flush_until_empty  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]
