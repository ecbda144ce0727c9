"""The app's produced records, handed to the Kafka client a batch per partition.

Faust's ``Topic.send`` (and aiokafka's ``send`` under it) costs a future, a partitioner
call, an accumulator append and, once the broker answers, a callback per record: for the
7-8 records an event produces (its deliveries, status updates, table changelogs) that
was more of a busy worker's CPU than notifyd's own handlers.  :class:`BatchWriter` keeps
one FIFO per app; one task takes what it holds (a *chunk*), groups it by partition and
hands each group to the client as one record batch (``create_batch``/``send_batch``):
one future and one callback per batch.  Under load a chunk holds everything the handlers
produced while the last one was handed over; at low rates a record goes out alone, as
soon as the handler that made it yields.

What the per-record path guaranteed is kept:

* order: one FIFO, a partition's records keep their order (a changelog's writes, a
  user's deliveries);
* a record is in the client before the offsets of what caused it are committed: Faust
  flushes its producer before every commit, and that flush first empties the writer,
  records being grouped included (``notifyd.stream.changelog.install``);
* a batch the client cannot take (restarting) is put back and retried; one the broker
  refuses is logged and counted as Faust counts a failed send;
* a table is told the offset its changelog record got (RocksDB's persisted offsets).

A table's changelog writes of one key in one chunk are coalesced to the last: the
changelog is compacted, only the last value of a key counts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import faust
import structlog
from aiokafka.partitioner import DefaultPartitioner

from notifyd.stream.partitioner import partition_of as murmur2_partition

log = structlog.stdlib.get_logger("notifyd.stream.writer")

#: Give up waiting for the writer (and let the commit go on, logged) after this long
#: without progress, as ``faust_fixes`` does for Faust's own buffer.
FLUSH_STALL_S = 30.0
#: Records taken from the FIFO at a time.
CHUNK = 5000
#: Keyed records' partitions remembered (murmur2 in pure Python is ~6 µs a key).
PARTITION_CACHE = 200_000


class Outbound(NamedTuple):
    """One record to produce.  ``partition`` None: the client's partitioner picks it
    from the key (murmur2, as for every notifyd topic); ``table``: a table whose
    changelog record this is (told its offset once written)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] | None = None
    table: Any = None


class _Metadata(NamedTuple):
    topic_partition: Any
    offset: int


class _Sent(NamedTuple):
    """What ``Table._on_changelog_sent`` reads of a send: ``result()``."""

    metadata: _Metadata

    def result(self) -> _Metadata:
        return self.metadata


class BatchWriter:
    """The app's records not yet in the Kafka client, and the task that hands them over
    (started on demand, ends once the FIFO is empty)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._queue: deque[Outbound] = deque()
        self._in_hand = 0
        self._task: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self._partitions: dict[tuple[str, bytes], int] = {}

    def __len__(self) -> int:
        """Records not yet in the client: queued, and taken but not handed over."""
        return len(self._queue) + self._in_hand

    def put(self, record: Outbound) -> None:
        self._queue.append(record)
        self._empty.clear()
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="notifyd:batch-writer"
            )

    async def _run(self) -> None:
        queue, producer = self._queue, self.app.producer
        failures = 0
        try:
            while queue:
                client = getattr(producer, "_producer", None)
                if client is None:
                    return  # stopped: the flush reports what is left
                n = min(len(queue), CHUNK)
                chunk = [queue.popleft() for _ in range(n)]
                self._in_hand = n
                try:
                    left = await self._hand_over(client, chunk)
                finally:
                    self._in_hand = 0
                if left:
                    queue.extendleft(reversed(left))  # first again, in their order
                    failures += 1
                    if failures == 1 or failures % 100 == 0:
                        log.error("writer.send_failed", queued=len(queue), failures=failures,
                                  error=repr(self._last_error))
                    await asyncio.sleep(0.1)  # backoff while the client restarts
                else:
                    failures = 0
        finally:
            if not queue:
                self._empty.set()

    _last_error: BaseException | None = None

    async def _hand_over(self, client: Any, chunk: list[Outbound]) -> list[Outbound]:
        """Hand ``chunk`` to ``client`` a batch per partition; returns the records it
        could not (in their order), to be tried again."""
        cache = self._partitions
        done = bytearray(len(chunk))
        monitor = self.app.monitor
        try:
            parts: list[int] = []
            for r in chunk:
                p = r.partition
                if p is None and (r.key is None or (p := cache.get((r.topic, r.key))) is None):
                    p = await self._partition_of(client, r.topic, r.key)  # may wait for metadata
                parts.append(p)
            _mark_superseded(chunk, parts, done)
            groups: dict[tuple[str, int], list[int]] = {}
            for i, r in enumerate(chunk):
                if not done[i]:
                    groups.setdefault((r.topic, parts[i]), []).append(i)
            for (topic, p), idx in groups.items():
                start = 0
                while start < len(idx):
                    builder = client.create_batch()
                    end = start
                    while end < len(idx):
                        r = chunk[idx[end]]
                        if builder.append(timestamp=None, key=r.key, value=r.value,
                                          headers=list(r.headers or ())) is None:
                            break
                        end += 1
                    if end == start:  # aiokafka's builder always takes a first record
                        raise RuntimeError(f"an empty batch refused a record of {topic}")
                    fut = await client.send_batch(builder, topic, partition=p)
                    sent = [chunk[i] for i in idx[start:end]]
                    fut.add_done_callback(_on_batch_sent(self.app, topic, p, sent))
                    monitor.messages_sent += len(sent)
                    monitor.messages_sent_by_topic[topic] += len(sent)
                    for i in idx[start:end]:
                        done[i] = 1
                    start = end
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client is restarting, or stopped
            self._last_error = exc
            return [r for i, r in enumerate(chunk) if not done[i]]
        return []

    async def _partition_of(self, client: Any, topic: str, key: bytes | None) -> int:
        """The client partitioner's choice for ``key`` (remembered for keyed records)."""
        cluster = client._metadata
        if not cluster.partitions_for_topic(topic):
            await client.client._wait_on_metadata(topic)
        every = cluster.partitions_for_topic(topic)
        if key is not None and type(client._partitioner) is DefaultPartitioner:
            # What it would answer, from the list aiokafka would give it
            # (``notifyd.stream.partitioner``: the same murmur2, faster).
            p = list(every)[murmur2_partition(key, len(every))]
        else:  # as aiokafka's own ``_partition`` asks it
            p = int(client._partitioner(key, list(every),
                                        list(cluster.available_partitions_for_topic(topic))))
        if key is not None:
            if len(self._partitions) >= PARTITION_CACHE:
                self._partitions.clear()
            self._partitions[(topic, key)] = p
        return p

    async def drain(self) -> None:
        """Return once every record put so far is in the Kafka client."""
        loop = asyncio.get_running_loop()
        last_progress, before = loop.time(), len(self)
        while len(self):
            if self._queue:
                self._ensure_running()
            try:
                await asyncio.wait_for(self._empty.wait(), 1.0)
            except TimeoutError:
                pass
            if len(self) < before:
                last_progress, before = loop.time(), len(self)
            elif loop.time() - last_progress > FLUSH_STALL_S:
                log.error("writer.flush_stalled", queued=len(self), waited_s=FLUSH_STALL_S)
                return


def _mark_superseded(chunk: list[Outbound], parts: list[int], done: bytearray) -> None:
    """Mark done a table's changelog writes that a later write of the same key in the
    same chunk supersedes (only the last value of a key counts in a compacted
    changelog; marked done, they are not tried again should the chunk fail)."""
    last: set[tuple[str, int, bytes | None]] = set()
    for i in range(len(chunk) - 1, -1, -1):
        r = chunk[i]
        if r.table is None:
            continue
        k = (r.topic, parts[i], r.key)
        if k in last:
            done[i] = 1
        else:
            last.add(k)


def _on_batch_sent(app: Any, topic: str, partition: int, recs: list[Outbound]) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        if (exc := fut.exception()) is not None:
            app.monitor.send_errors += len(recs)
            log.error("produce.failed", topic=topic, partition=partition, records=len(recs),
                      error=repr(exc))
            return
        table = recs[-1].table
        if table is not None:
            meta = fut.result()
            last = _Metadata(meta.topic_partition, meta.offset + len(recs) - 1)
            table._on_changelog_sent(_Sent(last))

    return done


def writer_of(app: Any) -> BatchWriter:
    writer: BatchWriter | None = getattr(app, "_notifyd_writer", None)
    if writer is None:
        writer = BatchWriter(app)
        app._notifyd_writer = writer
    return writer
