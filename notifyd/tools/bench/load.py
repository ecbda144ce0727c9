"""Load and observation: produce events (fast or paced), tap topics, track statuses."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from notifyd.tools.bench.bodies import event_doc
from notifyd.tools.bench.stats import (
    batch_to_send,
    latency_summary,
    rate,
)


@dataclass
class RunStats:
    expected: int
    latencies_ms: list[float] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0
    first_at: float | None = None
    last_at: float | None = None
    #: when the producer started (throughput runs)
    t_first: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def received(self) -> int:
        return len(self.seqs)


class Collector:
    """Receipts per (kind, run): ``kind`` is where they were seen (sink, topic)."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], RunStats] = {}

    def expect(self, kind: str, run: str, n: int) -> RunStats:
        st = RunStats(expected=n)
        self.runs[(kind, run)] = st
        return st

    def record(self, kind: str, data: Any, now: float) -> None:
        if not isinstance(data, dict):
            return
        st = self.runs.get((kind, str(data.get("run"))))
        if st is None:
            return
        seq = data.get("seq")
        if not isinstance(seq, int) or seq in st.seqs:
            st.duplicates += 1
            return
        st.seqs.add(seq)
        t0 = data.get("t0")
        if isinstance(t0, int | float):
            st.latencies_ms.append((now - t0) * 1000.0)
        if st.first_at is None:
            st.first_at = now
        st.last_at = now
        if st.received >= st.expected:
            st.done.set()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """Partitions of ``topic`` (a fresh client's metadata may not know it yet)."""
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")


async def _end_positioned_consumer(bootstrap: str, topic: str) -> Any:
    """A group-less consumer of every partition of ``topic``, positioned at its end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic)
    except RuntimeError:
        await consumer.stop()
        raise
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve now: nothing produced later is skipped
    return consumer


class TopicTap:
    """Consumes a topic from its end in the background, handing each value to ``on``."""

    def __init__(
        self, bootstrap: str, topic: str, on: Callable[[bytes | None, float], None]
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.on = on
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicTap:
        self._consumer = await _end_positioned_consumer(self.bootstrap, self.topic)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for records in batch.values():
                for rec in records:
                    self.on(rec.value, now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def status_changelog(app_id: str) -> str:
    """The status table's changelog: every status row as written (a notification's row
    lives in its user's partition and is folded where its updates happen, so this, not
    ``notifyd.status``, carries every transition)."""
    return f"{app_id}-status-changelog"


def status_row(value: bytes | None) -> dict[str, Any] | None:
    """A status row of the changelog (None: a tombstone or not a row)."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and "notification_id" in doc else None


def newly_sent(doc: dict[str, Any], seen: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Channels of ``doc`` now ``sent`` that are not in ``seen`` (added to it)."""
    out = []
    for ch, entry in (doc.get("channels") or {}).items():
        if ch not in seen and isinstance(entry, dict) and entry.get("status") == "sent":
            seen.add(ch)
            out.append((ch, entry))
    return out


class StatusTracker:
    """Follows the status changelog (:func:`status_changelog`): counts in-app ``sent``
    channels and splits latency into stages with the worker's own timestamps — *ingest*
    (produce → the ingest agent accepted the event) and, per channel, *send* (accepted →
    provider call done, the channel's ``latency_ms``)."""

    def __init__(self) -> None:
        self.inapp_sent = 0
        self.last_inapp_at: float | None = None
        #: event_id -> produce time, filled by the producer, popped here.
        self.t0: dict[str, float] = {}
        self._nid_run: dict[str, str] = {}
        self._sent: dict[str, set[str]] = {}
        self.stages: dict[str, dict[str, list[float]]] = {}

    def _stage(self, run: str, name: str) -> list[float]:
        return self.stages.setdefault(run, {}).setdefault(name, [])

    def __call__(self, value: bytes | None, now: float) -> None:
        doc = status_row(value)
        if doc is None:
            return
        nid = str(doc["notification_id"])
        run = self._nid_run.get(nid)
        if run is None:
            eid = doc.get("event_id")
            if eid is None:  # a channel's outcome folded before the event's content
                return
            eid = str(eid)
            run = self._nid_run[nid] = eid.rsplit("-", 1)[0]
            t0 = self.t0.pop(eid, None)
            if t0 is not None and isinstance(doc.get("accepted_at"), int | float):
                self._stage(run, "ingest").append((doc["accepted_at"] - t0) * 1000.0)
        for ch, entry in newly_sent(doc, self._sent.setdefault(nid, set())):
            if ch == "inapp":
                self.inapp_sent += 1
                self.last_inapp_at = now
            if isinstance(entry.get("latency_ms"), int | float):
                self._stage(run, f"{ch}_send").append(float(entry["latency_ms"]))

    def summary(self, run: str) -> dict[str, Any]:
        return {k: latency_summary(v) for k, v in sorted(self.stages.get(run, {}).items())}


def _event(
    run: str, seq: int, user: str, channels: Sequence[str] = ("webhook", "inapp")
) -> bytes:
    return orjson.dumps(event_doc(run, seq, user, channels))


def _floor_doc(run: str, seq: int, user: str) -> bytes:
    # Same shape and size as a notifyd event, so the JSON work is comparable.
    return _event(run, seq, user)


class Progress:
    """tqdm when asked for and available, otherwise nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Any]:
        if not self.enabled:
            yield _NoBar()
            return
        try:
            from tqdm import tqdm
        except ImportError:
            yield _NoBar()
            return
        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="ev")
        try:
            yield bar
        finally:
            bar.close()

    def note(self, msg: str) -> None:
        if self.enabled:
            try:
                from tqdm import tqdm

                tqdm.write(msg, file=sys.stderr)
            except ImportError:
                print(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)


class _NoBar:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str) -> None:
        pass


async def produce_fast(
    producer: Any,
    topic: str,
    n: int,
    make: Callable[[int], tuple[bytes, bytes]],
    bar: Any = None,
    chunk: int | None = None,
) -> float:
    """Produce ``n`` messages as fast as the client takes them; seconds until all acked.

    With ``chunk``, wait for each ``chunk`` messages' acks before sending more: a bound
    on what the broker has queued (writing 10 M records unbounded, produce requests
    waited past their timeout on a loaded machine)."""
    t0 = time.monotonic()
    futs = []
    for i in range(n):
        key, value = make(i)
        futs.append(await producer.send(topic, value, key=key))
        if bar is not None and i % 1000 == 999:
            bar.update(1000)
        if chunk is not None and len(futs) >= chunk:
            await asyncio.gather(*futs)
            futs.clear()
    await asyncio.gather(*futs)
    if bar is not None:
        bar.update(n % 1000)
    return time.monotonic() - t0


async def produce_paced(
    producer: Any,
    topic: str,
    rate_per_s: float,
    total: int,
    make: Callable[[int], tuple[bytes, bytes]],
    bar: Any = None,
) -> dict[str, Any]:
    """Produce ``total`` messages at ``rate_per_s``: at each ~1 ms tick, what is due."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    futs = []
    max_behind = 0
    while sent < total:
        now = loop.time()
        n = batch_to_send(rate_per_s, now - start, sent, total)
        max_behind = max(max_behind, n)
        for _ in range(n):
            key, value = make(sent)
            futs.append(await producer.send(topic, value, key=key))
            sent += 1
        if bar is not None and n:
            bar.update(n)
        await asyncio.sleep(0.001)
    elapsed = loop.time() - start
    await asyncio.gather(*futs)
    return {
        "offered_rate": rate_per_s,
        "sent": sent,
        "produce_s": round(elapsed, 3),
        "achieved_produce_rate": rate(sent, elapsed),
        "max_batch_per_tick": max_behind,
    }


async def wait_done(
    stats: list[RunStats],
    timeout: float,
    bar: Any = None,
    extra: Callable[[], bool] | None = None,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Wait until every run received what it expects (and ``extra()`` holds); False on
    timeout, or as soon as ``abort()`` holds (e.g. the process sending has died)."""
    deadline = time.monotonic() + timeout
    shown = 0
    while time.monotonic() < deadline:
        got = min((s.received for s in stats), default=0)
        if bar is not None and got > shown:
            bar.update(got - shown)
            shown = got
        if all(s.done.is_set() for s in stats) and (extra is None or extra()):
            return True
        if abort is not None and abort():
            return False
        await asyncio.sleep(0.05)
    return False


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new, timeout_ms=30000)
    finally:
        await admin.close()


async def wait_group_caught_up(
    bootstrap: str, group: str, topic: str, at_least: int, timeout: float, bar: Any = None
) -> float:
    """Seconds until ``group``'s committed offsets reach the end of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    t0 = time.monotonic()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        parts = await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        end = await consumer.end_offsets(tps)
        target = sum(end.values())
        if target < at_least:
            raise RuntimeError(f"{topic} holds {target} records, expected {at_least}")
        shown = 0
        while time.monotonic() - t0 < timeout:
            offsets = await admin.list_consumer_group_offsets(group)
            done = sum(
                meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0
            )
            if bar is not None and done > shown:
                bar.update(min(done, target) - shown)
                shown = min(done, target)
            if done >= target:
                return time.monotonic() - t0
            await asyncio.sleep(0.5)
        raise TimeoutError(f"group {group} did not catch up on {topic} in {timeout}s")
    finally:
        await admin.close()
        await consumer.stop()


async def wait_group_drained(bootstrap: str, group: str, topics: list[str], timeout: float) -> bool:
    """Wait until ``group`` committed everything produced so far to ``topics`` (the
    worker has no backlog left, e.g. of status updates); False on timeout."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(await _partitions(consumer, t))]
        while time.monotonic() < deadline:
            end = await consumer.end_offsets(tps)
            offsets = await admin.list_consumer_group_offsets(group)
            if all(end[tp] == 0 or (tp in offsets and offsets[tp].offset >= end[tp]) for tp in tps):
                return True
            await asyncio.sleep(0.25)
        return False
    finally:
        await admin.close()
        await consumer.stop()
