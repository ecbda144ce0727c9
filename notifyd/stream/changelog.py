"""Table changelog records handed to the app's batch writer (``notifyd.stream.writer``).

Faust sends a table write's changelog record with ``Topic.send_soon``: a
``FutureMessage``, a queue and a task (``ProducerBuffer``), then ``Topic.publish_message``
with its channel, sensors and callbacks, about 6 % of a busy worker's CPU for the 3-4
table writes an event makes.  :class:`DirectChangelogTable` serialises the record the
way Faust does and puts it on the app's :class:`~notifyd.stream.writer.BatchWriter`,
in order with everything else the app produces.  What Faust's path guarantees is kept:

* the record is in the client before the offsets of what caused it are committed:
  Faust flushes its producer before every commit, and the producer's flush first
  empties the writer (``install``, checked by ``tests/unit/test_changelog.py``);
* the table is told the offset the record got (``_on_changelog_sent``: RocksDB keeps it
  to know, at start, how far its data goes);
* Faust's monitor counts the record; one the broker refuses is logged and counted.

With no running producer (an agent's ``test_context``) writes take Faust's own path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import faust
import orjson
from faust.stores.memory import Store as MemoryStore
from faust.transport.drivers.aiokafka import Producer
from faust.utils.json import on_default

from notifyd.stream.writer import BatchWriter, Outbound, writer_of


class _Message(NamedTuple):
    partition: int


class _Sent(NamedTuple):
    """What ``Table.on_key_set``/``on_key_del`` read of the send they asked for."""

    message: _Message


#: What Faust's ``json`` codec passes to orjson (``faust.utils.json.dumps``).
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


class DirectChangelogTable(faust.Table):  # type: ignore[misc]
    """A table whose changelog records go through the app's batch writer.

    Reads and writes skip what Faust's generic path pays per call on the hot path
    (3-4 table writes and as many reads per event): a missing key is not a
    ``KeyError`` raised through three mapping layers, and a ``raw`` key and a ``json``
    value are encoded directly, byte for byte as Faust's serializer registry would
    (``tests/unit/test_changelog.py``).  Faust's sensors still see every get and set.
    """

    _changelog_name: str | None = None

    def get(self, key: Any, default: Any = None) -> Any:
        """``Mapping.get`` without the ``KeyError`` (the table's default is None)."""
        if self.default is not None:
            return super().get(key, default)
        self._sensor_on_get(self, key)
        data = self.data
        if type(data) is MemoryStore:  # its rows are a plain dict
            return data.data.get(key, default)
        try:
            return data[key]
        except KeyError:
            return default

    def _encode_key(self, key: Any, serializer: Any) -> bytes | None:
        if (serializer or self.key_serializer) == "raw" and type(key) is str:
            return key.encode()
        topic = self.changelog_topic
        return self.app.serializers.dumps_key(  # type: ignore[no-any-return]
            topic.key_type, key, serializer=serializer or self.key_serializer
        )

    def _encode_value(self, value: Any, serializer: Any) -> bytes | None:
        codec = serializer or self.value_serializer
        if codec == "json" and type(value) in (dict, list):
            return orjson.dumps(value, default=on_default, option=_JSON_OPTIONS)
        if codec == "raw" and value is None:  # a delete: the tombstone
            return None
        topic = self.changelog_topic
        return self.app.serializers.dumps_value(  # type: ignore[no-any-return]
            topic.value_type, value, serializer=codec
        )

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
        name = self._changelog_name
        if name is None:
            name = self._changelog_name = self.changelog_topic.get_topic_name()
        writer_of(self.app).put(Outbound(
            name,
            self._encode_key(key, key_serializer),
            self._encode_value(value, value_serializer),
            partition,
            None,
            self,
        ))
        return _Sent(_Message(partition))


_original_flush = Producer.flush


async def _flush_with_writer(self: Any) -> None:
    """Faust's ``Producer.flush`` (what runs before every commit), after the batch
    writer handed the client all it holds."""
    writer: BatchWriter | None = getattr(self.app, "_notifyd_writer", None)
    if writer is not None and len(writer):
        await writer.drain()
    await _original_flush(self)


def install() -> None:
    """Make Faust's producer flush empty the batch writer first (once)."""
    if not getattr(Producer.flush, "__notifyd_writer__", False):
        _flush_with_writer.__notifyd_writer__ = True  # type: ignore[attr-defined]
        Producer.flush = _flush_with_writer  # type: ignore[method-assign]
