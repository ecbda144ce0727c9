"""Guards against the Faust faults that could hurt notifyd (README: Reliability).

faust #606: with ``concurrency > 1`` an agent can commit the offset of an event that
another of its actors is still processing; a crash then loses that event.  notifyd's
agents all run with concurrency 1 (ordering per partition matters too: preferences,
inbox edits), and this test fails if one ever changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from notifyd.stream.app import app  # the current (this test's) app
from tests.support.offsets import fresh_partition


def test_every_agent_runs_with_concurrency_one() -> None:
    agents = list(app.agents.values())
    assert len(agents) >= 9
    for agent in agents:
        assert agent.concurrency == 1, f"{agent.name}: concurrency>1 risks faust #606"


def test_processing_guarantee_is_at_least_once() -> None:
    # exactly_once has open duplicate bugs in faust-streaming; idempotency instead.
    assert app.conf.processing_guarantee.value == "at_least_once"


async def test_producer_buffer_flush_waits_until_empty() -> None:
    """faust's ProducerBuffer.flush() returned after 0.1 s without progress even with
    messages left; the consumer commits right after it (notifyd.stream.faust_fixes)."""
    import asyncio
    from types import SimpleNamespace

    from faust.transport.producer import ProducerBuffer

    sent: list[int] = []

    async def slow_publish(fut: object, wait: bool = False) -> None:
        await asyncio.sleep(0.25)  # longer than Faust's 0.1 s give-up
        sent.append(1)

    message = SimpleNamespace(channel=SimpleNamespace(publish_message=slow_publish))
    buf = ProducerBuffer()
    buf.app = app
    await buf.start()
    try:
        for _ in range(3):
            buf.pending.put_nowait(SimpleNamespace(message=message))  # type: ignore[arg-type]
        await buf.flush()
        assert buf.size == 0 and len(sent) == 3
    finally:
        await buf.stop()


def test_acks_from_before_a_rebalance_are_not_booked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message fetched in an earlier consumer generation (or acked while flow control
    is paused for a rebalance) is fetched and processed again after Faust's seek to the
    committed offset; booking its ack would let a commit pass the re-fetched copy."""
    from faust.types import TP, Message

    from notifyd.stream.topics import events_topic

    consumer = app.consumer
    topic = events_topic.get_topic_name()
    tp = TP(topic, 3)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda t: t == topic)
    monkeypatch.setattr(app, "consumer_generation_id", 7)
    consumer._acked.pop(tp, None)
    consumer._acked_index.pop(tp, None)

    def message(offset: int, generation: int | None) -> Message:
        return Message(topic, 3, offset, 0.0, 0, [], b"k", b"v", None,
                       generation_id=generation)

    was_active = app.flow_control.is_active()
    app.flow_control.resume()  # a running worker between rebalances
    try:
        assert consumer.ack(message(10, 7)) is True  # current generation: booked
        stale = message(11, 6)
        assert consumer.ack(stale) is False and stale.acked
        assert consumer.ack(message(12, None)) is True  # no generation known: Faust's rule
        app.flow_control.suspend()
        assert consumer.ack(message(13, 7)) is False  # during a rebalance
        assert consumer._acked[tp] == [10, 12]
    finally:
        if was_active:
            app.flow_control.resume()
        else:
            app.flow_control.suspend()
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)


# --------------------------------------------------------------------------------------
# Offsets: a commit covers only processed records (notifyd.stream.faust_fixes, "Offsets")
# --------------------------------------------------------------------------------------


@pytest.fixture
def events_tp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Partition 3 of the events topic, with empty offset bookkeeping, acks enabled."""
    with fresh_partition(monkeypatch, 3) as tp:
        yield tp


def _book(tp: Any, *offsets: int) -> None:
    consumer = app.consumer
    consumer._acked[tp].extend(offsets)
    consumer._acked_index[tp].update(offsets)


def test_commit_never_passes_the_record_at_the_committed_offset(events_tp: Any) -> None:
    """The loss in the crash test: offset 903 (committed) was never processed, 904 and 905
    were; Faust's ``_new_offset`` let the run start one past the committed offset and
    committed 906."""
    from notifyd.stream import faust_fixes

    consumer, tp = app.consumer, events_tp
    consumer._committed_offset[tp] = 903
    _book(tp, 904, 905)
    assert faust_fixes._original_new_offset(consumer, tp) == 906  # Faust: past 903
    consumer._acked[tp][:] = [904, 905]
    consumer._acked_index[tp].update({904, 905})
    assert consumer._new_offset(tp) is None  # held: 903 is not done
    assert consumer._acked[tp] == [904, 905]  # and nothing was consumed from the books
    _book(tp, 903)
    assert consumer._new_offset(tp) == 906


def test_offsets_without_a_record_count_as_processed(events_tp: Any) -> None:
    """A transaction marker (or a compacted record) at the committed offset holds
    nothing up: the fetch that passed it told us so."""
    from notifyd.stream import faust_fixes

    consumer, tp = app.consumer, events_tp
    consumer._committed_offset[tp] = 903
    _book(tp, 904, 905, 907)
    faust_fixes._absent.append((tp, 903, 904))
    faust_fixes._absent.append((tp, 906, 907))
    assert consumer._new_offset(tp) == 908


def test_without_a_committed_offset_a_commit_waits_for_records_in_flight(
    events_tp: Any,
) -> None:
    """No committed offset yet (a new group): Faust committed any acked run, past a
    record a channel agent was still delivering."""
    from faust.types import Message

    from notifyd.stream import faust_fixes

    consumer, tp = app.consumer, events_tp
    in_flight = Message(tp.topic, 3, 5, 0.0, 0, [], b"k", b"v", None)
    consumer._unacked_messages.add(in_flight)
    try:
        _book(tp, 6, 7)
        assert faust_fixes._original_new_offset(consumer, tp) == 8  # Faust: past 5
        _book(tp, 6, 7)
        assert consumer._new_offset(tp) is None
        in_flight.acked = True
        consumer._unacked_messages.discard(in_flight)
        _book(tp, 5)
        assert consumer._new_offset(tp) == 8
    finally:
        consumer._unacked_messages.discard(in_flight)


async def test_fetch_loop_hands_over_records_below_its_read_offset(
    events_tp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's fetch loop dropped every record below its read offset.  After a
    rebalance the read offset could be past the committed offset the partition was
    re-fetched from (set again, after the revocation cleared it, by the record the loop
    was handing over): the records in between were never processed, yet committed."""
    import asyncio
    from types import SimpleNamespace

    consumer, tp = app.consumer, events_tp
    handed: list[int] = []
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    refetched = [SimpleNamespace(topic=tp.topic, partition=3, offset=o, timestamp=0,
                                 timestamp_type=0, headers=[], key=b"k", value=b"v",
                                 checksum=None, serialized_key_size=1,
                                 serialized_value_size=1) for o in range(1407, 1411)]
    calls = 0

    async def next_records(timeout: float) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            fetcher._stopped.set()
            return {}, {tp}
        return {tp: refetched}, {tp}

    async def callback(message: Any) -> None:
        handed.append(message.offset)

    monkeypatch.setattr(consumer, "_wait_next_records", next_records)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 2000)
    monkeypatch.setattr(consumer, "callback", callback)
    monkeypatch.setattr(consumer, "flow_active", True)
    # The app's services were made on another event loop: the loop's own waits, plain.

    async def wait_first(handover: Any, *others: Any) -> None:
        for other in others:
            other.close()
        await handover

    monkeypatch.setattr(consumer, "wait_first", wait_first)
    monkeypatch.setattr(consumer, "sleep", asyncio.sleep)
    consumer._read_offset[tp] = 1624  # stale: from before the rebalance
    await asyncio.wait_for(consumer._drain_messages(fetcher), 10)
    assert handed == [1407, 1408, 1409, 1410]  # Faust: [] ("DROPPED MESSAGE")
    assert not consumer._gap.get(tp)  # and nothing guessed acked


def test_fetch_notes_offsets_it_passed_without_a_record(events_tp: Any) -> None:
    """aiokafka's batch: records 10, 11, 14, then a control batch ending at 16."""
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import FetchResult

    from notifyd.stream import faust_fixes

    tp = events_tp

    class Batch:
        def __init__(self) -> None:
            self.next_fetch_offset = 10
            self._it = iter([10, 11, 14])

        def __iter__(self) -> Any:
            return self

        def __next__(self) -> Any:
            try:
                offset = next(self._it)
            except StopIteration:
                self.next_fetch_offset = 16  # the control batch, passed
                raise
            self.next_fetch_offset = offset + 1
            return SimpleNamespace(offset=offset)

    state = SimpleNamespace(paused=False, position=10)
    state.consumed_to = lambda pos: setattr(state, "position", pos)
    assignment = SimpleNamespace(active=True, state_value=lambda tp: state)
    result = FetchResult(tp, assignment=assignment, partition_records=Batch(), backoff=0)
    token = faust_fixes._collect_absent.set(True)
    try:
        records = result.getall()
    finally:
        faust_fixes._collect_absent.reset(token)
    assert [r.offset for r in records] == [10, 11, 14]
    assert list(faust_fixes._absent) == [(tp, 12, 14), (tp, 15, 16)]
