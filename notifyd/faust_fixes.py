"""Fixes for faust-streaming faults that break notifyd's at-least-once guarantee.

Both depend on Faust internals (checked by ``tests/unit/test_faust_guards.py``):
re-check them when faust-streaming is upgraded.

Applied once, when :mod:`notifyd.app` is imported (before the app is built).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import ack_lock

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


_original_ack = Consumer.ack


def _ack_current_generation(self: Any, message: Any) -> bool:
    """``Consumer.ack`` that does not book acks of messages from before a rebalance.

    Faust's stream *acks* the messages it skips because they were fetched in an earlier
    consumer generation, or arrive while flow control is paused for a rebalance
    (``faust/streams.py``: ``do_ack or value is skipped_value``).  After the rebalance
    the partition is sought back to its committed offset and those records are fetched
    and processed again, but their offsets are already in the acked list: once the
    records before them are acked, a commit covers the re-fetched copies while they may
    still be unprocessed, and a crash then loses them.  Not booking such an ack is always
    safe under at-least-once: the record is processed again after the seek (our steps
    are idempotent), and the gap it leaves closes when that copy is acked.
    """
    gen = getattr(message, "generation_id", None)
    app = self.app
    stale = gen is not None and gen != app.consumer_generation_id
    if stale or not app.flow_control.is_active():
        with ack_lock:  # the lock Faust's own ack holds for this bookkeeping
            message.acked = True
            self._unacked_messages.discard(message)
        return False
    return bool(_original_ack(self, message))


def apply() -> None:
    if getattr(ProducerBuffer.flush, "__notifyd_fix__", False):
        return
    Consumer.ack = _ack_current_generation  # type: ignore[method-assign]
    _flush_until_empty.__notifyd_fix__ = True  # type: ignore[attr-defined]
    ProducerBuffer.flush = _flush_until_empty  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]
