"""Table changelog records handed straight to the running Kafka client.

Faust sends a table write's changelog record with ``Topic.send_soon``: a
``FutureMessage``, a queue and a task (``ProducerBuffer``), then ``Topic.publish_message``
with its channel, sensors and callbacks, about 6 % of a busy worker's CPU for the 3-4
table writes an event makes.  :class:`DirectChangelogTable` serialises the record the
way Faust does and puts it on a :class:`ChangelogWriter`: one FIFO per app, emptied into
the Kafka client by one task, in order (a partition's changelog keeps the order of its
writes).  What Faust's path guarantees is kept:

* the record is in the client before the offsets of what caused it are committed:
  Faust flushes its producer before every commit, and the producer's flush first
  empties the writer (``install``, checked by ``tests/unit/test_changelog.py``);
* the table is told the offset the record got (``_on_changelog_sent``: RocksDB keeps it
  to know, at start, how far its data goes);
* Faust's monitor counts the record; one the broker refuses is logged and counted.

With no running producer (an agent's ``test_context``) writes take Faust's own path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, NamedTuple, cast

import faust
import structlog
from faust.transport.drivers.aiokafka import Producer

log = structlog.stdlib.get_logger("notifyd.stream.changelog")

#: Give up waiting for the writer (and let the commit go on, logged) after this long
#: without progress, as ``faust_fixes`` does for Faust's own buffer.
FLUSH_STALL_S = 30.0


class _Message(NamedTuple):
    partition: int


class _Sent(NamedTuple):
    """What ``Table.on_key_set``/``on_key_del`` read of the send they asked for."""

    message: _Message


class _Record(NamedTuple):
    table: Any
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int


class ChangelogWriter:
    """The app's changelog records not yet in the Kafka client, and the task that hands
    them over (started on demand, ends once the queue is empty)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._queue: deque[_Record] = deque()
        self._task: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, record: _Record) -> None:
        self._queue.append(record)
        self._empty.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="notifyd:changelog-writer"
            )

    async def _run(self) -> None:
        queue, monitor, producer = self._queue, self.app.monitor, self.app.producer
        failures = 0
        try:
            while queue:
                r = queue[0]
                try:
                    fut = await producer.send(r.topic, r.key, r.value, r.partition, None, None)
                except Exception as exc:  # the client is restarting, or stopped
                    failures += 1
                    if failures == 1 or failures % 100 == 0:
                        log.error("changelog.send_failed", topic=r.topic, error=repr(exc),
                                  queued=len(queue), failures=failures)
                    if getattr(producer, "_producer", None) is None:
                        return  # stopped: the flush reports what is left
                    await asyncio.sleep(0.1)
                    continue
                failures = 0
                queue.popleft()
                monitor.messages_sent += 1
                monitor.messages_sent_by_topic[r.topic] += 1
                cast(asyncio.Future, fut).add_done_callback(_on_sent(self.app, r))
        finally:
            if not queue:
                self._empty.set()

    async def drain(self) -> None:
        """Return once every record put so far is in the Kafka client."""
        loop = asyncio.get_running_loop()
        last_progress, before = loop.time(), len(self._queue)
        while self._queue:
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._run(), name="notifyd:changelog-writer")
            try:
                await asyncio.wait_for(asyncio.shield(self._empty.wait()), 1.0)
            except TimeoutError:
                pass
            if len(self._queue) < before:
                last_progress, before = loop.time(), len(self._queue)
            elif loop.time() - last_progress > FLUSH_STALL_S:
                log.error("changelog.flush_stalled", queued=len(self._queue),
                          waited_s=FLUSH_STALL_S)
                return


def _on_sent(app: Any, r: _Record) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        if (exc := fut.exception()) is not None:
            app.monitor.send_errors += 1
            log.error("changelog.produce_failed", topic=r.topic, error=repr(exc))
            return
        r.table._on_changelog_sent(fut)  # fut.result(): topic_partition, offset

    return done


def writer_of(app: Any) -> ChangelogWriter:
    writer: ChangelogWriter | None = getattr(app, "_notifyd_changelog", None)
    if writer is None:
        writer = ChangelogWriter(app)
        app._notifyd_changelog = writer  # type: ignore[attr-defined]
    return writer


class DirectChangelogTable(faust.Table):  # type: ignore[misc]
    """A table whose changelog records go through the app's :class:`ChangelogWriter`."""

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> Any:
        producer = self.app.producer
        if partition is None or getattr(producer, "_producer", None) is None:
            return super().send_changelog(partition, key, value, key_serializer,
                                          value_serializer)
        topic = self.changelog_topic
        serializers = self.app.serializers
        record = _Record(
            self,
            topic.get_topic_name(),
            serializers.dumps_key(topic.key_type, key,
                                  serializer=key_serializer or self.key_serializer),
            serializers.dumps_value(topic.value_type, value,
                                    serializer=value_serializer or self.value_serializer),
            partition,
        )
        writer_of(self.app).put(record)
        return _Sent(_Message(partition))


_original_flush = Producer.flush


async def _flush_with_changelog(self: Any) -> None:
    """Faust's ``Producer.flush`` (what runs before every commit), after the changelog
    writer handed the client all it holds."""
    writer: ChangelogWriter | None = getattr(self.app, "_notifyd_changelog", None)
    if writer is not None and len(writer):
        await writer.drain()
    await _original_flush(self)


def install() -> None:
    """Make Faust's producer flush empty the changelog writers first (once)."""
    if not getattr(Producer.flush, "__notifyd_changelog__", False):
        _flush_with_changelog.__notifyd_changelog__ = True  # type: ignore[attr-defined]
        Producer.flush = _flush_with_changelog  # type: ignore[method-assign]
