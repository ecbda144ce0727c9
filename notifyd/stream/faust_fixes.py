"""Fixes for faust-streaming faults that break notifyd's at-least-once guarantee.

All depend on Faust (and aiokafka) internals (checked by ``tests/unit/test_faust_guards.py``):
re-check them when faust-streaming is upgraded.

Applied once, when :mod:`notifyd.stream.app` is imported (before the app is built).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextvars import ContextVar
from typing import Any

import structlog
from aiokafka.consumer.fetcher import FetchResult
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import ack_lock

log = structlog.stdlib.get_logger("notifyd.stream.faust_fixes")

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


# --------------------------------------------------------------------------------------
# Offsets: commit only what was processed
# --------------------------------------------------------------------------------------
#
# Faust commits, per partition, the run of consecutive acked offsets that follows the
# committed one (``Consumer._new_offset``), and guesses which offsets the broker has no
# record for (transaction markers, compaction) from its "read offset", the offset of the
# last record its fetch loop handed to the streams (``Consumer._drain_messages``):
#
# - a record whose offset is below the read offset is dropped unseen ("DROPPED MESSAGE"),
#   on the assumption that it was handed over before;
# - when the next record is more than one past the read offset, the offsets in between
#   are booked as acked (``Consumer._add_gap``), on the assumption that the broker has no
#   record there;
# - and ``_new_offset`` lets the acked run start one past the committed offset.
#
# Around a rebalance those guesses are wrong (evidence: the crash test's worker logs).
# The fetch loop resumes fetching from the position aiokafka reset to the committed
# offset while Faust's own seek to that offset is still under way, and a record it was
# handing over when the partitions were revoked sets the read offset again after the
# revocation cleared it: records are then re-fetched below the read offset and dropped,
# the seek moves the read offset back, the fetch goes on past it and the difference is
# booked as acked.  Records nobody processed were committed: 50 status records at once
# in one run, one ingested event in another (the delivery it should have made was never
# queued, so the reconciler could not see it).
#
# notifyd's fix: the fetch loop never sees a read offset (every record the consumer
# fetches is handed to the streams; one fetched twice is processed twice, which
# at-least-once allows and notifyd's idempotent steps absorb), offsets the broker has no
# record for are learnt from the fetches themselves (aiokafka knows the position before
# and after each batch it returns), and a commit starts exactly at the committed offset.

#: Offsets a fetch of Faust's consumer passed without a record, ``(tp, begin, end)``:
#: filled in the consumer's thread (aiokafka), drained into ``Consumer._gap`` (asyncio).
_absent: deque[tuple[Any, int, int]] = deque(maxlen=100_000)
_collect_absent: ContextVar[bool] = ContextVar("notifyd_collect_absent", default=False)

_original_getall = FetchResult.getall


def _getall_noting_absent(self: Any, max_records: int | None = None) -> list[Any]:
    """aiokafka's ``FetchResult.getall`` that also notes the offsets it passed without a
    record (control batches, aborted or compacted records): the batch is a contiguous
    read of the log from the position before the call to the position after it."""
    if not _collect_absent.get():
        return _original_getall(self, max_records)  # type: ignore[no-any-return]
    tp = self._topic_partition
    try:
        state = self._assignment.state_value(tp)
        before = state.position
    except Exception:  # unassigned, or no position yet: nothing to learn
        before = None
    start = getattr(self._partition_records, "next_fetch_offset", None)
    records: list[Any] = _original_getall(self, max_records)
    if before is None or start != before:  # not a read from the current position
        return records
    try:
        end = state.position
    except Exception:
        return records
    expected = start
    for record in records:
        if record.offset > expected:
            _absent.append((tp, expected, record.offset))
        expected = record.offset + 1
    if end > expected:
        _absent.append((tp, expected, end))
    return records


async def _fetch_records_noting_absent(self: Any, *args: Any, **kwargs: Any) -> Any:
    token = _collect_absent.set(True)  # this task only: Faust's own fetches
    try:
        return await _original_fetch_records(self, *args, **kwargs)
    finally:
        _collect_absent.reset(token)


_original_fetch_records = AIOKafkaConsumerThread._fetch_records
_original_getmany = Consumer.getmany


async def _getmany_without_read_offset(self: Any, timeout: float) -> Any:
    """``Consumer.getmany`` whose records the fetch loop never drops or gap-fills.

    The loop (``Consumer._drain_messages``) drops a record below its read offset and
    books the offsets between the read offset and a record further on as acked; with
    the read offset cleared right before each record of an acking topic it does
    neither, and hands over every record in the order fetched."""
    read_offset = self._read_offset
    acking = self.app.topics.acks_enabled_for
    async for tp, message in _original_getmany(self, timeout):
        if acking(tp.topic):
            before = read_offset.get(tp)
            if before is not None and message.offset < before:
                # Faust would have dropped it (and the records after it, up to `before`).
                log.info("consumer.refetched_below_read_offset", topic=tp.topic,
                         partition=tp.partition, offset=message.offset, read_offset=before)
            read_offset[tp] = None
        yield tp, message


def _drain_absent(consumer: Any) -> None:
    acking = consumer.app.topics.acks_enabled_for
    gaps = consumer._gap
    while _absent:
        try:
            tp, begin, end = _absent.popleft()
        except IndexError:
            return
        if acking(tp.topic):
            gaps[tp].addi(begin, end)


_original_new_offset = Consumer._new_offset
#: tp -> (offset the commit waits for, since when, warned): see ``consumer.commit_held``.
_held: dict[Any, tuple[int, float, bool]] = {}
#: Warn when a partition's commit has waited this long for the same record.
COMMIT_HELD_WARN_S = 60.0


def _new_offset_from_committed(self: Any, tp: Any) -> int | None:
    """``Consumer._new_offset`` that commits only a run starting at the committed offset.

    Faust's returns the first run of consecutive acked offsets even when it starts one
    past the committed offset: the record *at* the committed offset, still being
    processed (channel agents keep many in flight) or never handed over (see above), was
    committed with it.  Here the run must start at the committed offset (offsets the
    broker has no record for count as acked, as in Faust); when no committed offset is
    known, it must start below every record of the partition still being processed.
    """
    _drain_absent(self)
    acked = self._acked.get(tp)
    if not acked:
        return None
    lowest = min(acked)
    gaps = self._gap.get(tp)
    if gaps:
        for interval in gaps.overlap(0, max(acked)):
            lowest = min(lowest, interval.begin)
    committed = self._committed_offset.get(tp)
    floor = committed if committed is not None else _lowest_in_flight(self, tp)
    if floor is not None and lowest > floor:
        # Normal while the record at the head is being processed (channel agents keep
        # many in flight); worth a warning only when it lasts.
        now = time.monotonic()
        prev = _held.get(tp)
        since, logged = (prev[1], prev[2]) if prev and prev[0] == floor else (now, False)
        if not logged and now - since > COMMIT_HELD_WARN_S:
            log.warning(
                "consumer.commit_held",
                topic=tp.topic,
                partition=tp.partition,
                committed=committed,
                unprocessed=floor,
                lowest_acked=lowest,
                held_s=round(now - since, 1),
            )
            logged = True
        _held[tp] = (floor, since, logged)
        return None
    _held.pop(tp, None)
    result: int | None = _original_new_offset(self, tp)
    return result


def _lowest_in_flight(consumer: Any, tp: Any) -> int | None:
    """The lowest offset of ``tp`` a stream took and has not acked (None: none)."""
    acked_index = consumer._acked_index.get(tp, ())
    lanes = getattr(consumer.app, "_notifyd_lanes", None)  # notifyd.stream.lanes.install
    laned = lanes.lowest_in_flight(tp) if lanes is not None else None
    offsets = [] if laned is None else [laned]
    offsets += [
        m.offset
        for m in list(consumer._unacked_messages)
        if m.tp == tp and not m.acked and m.offset not in acked_index
    ]
    return min(offsets) if offsets else None


def apply() -> None:
    if getattr(ProducerBuffer.flush, "__notifyd_fix__", False):
        return
    Consumer.ack = _ack_current_generation  # type: ignore[method-assign]
    _flush_until_empty.__notifyd_fix__ = True  # type: ignore[attr-defined]
    ProducerBuffer.flush = _flush_until_empty  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]
    FetchResult.getall = _getall_noting_absent  # type: ignore[method-assign]
    AIOKafkaConsumerThread._fetch_records = _fetch_records_noting_absent  # type: ignore[method-assign]
    Consumer.getmany = _getmany_without_read_offset  # type: ignore[method-assign,assignment]
    Consumer._new_offset = _new_offset_from_committed  # type: ignore[method-assign]

