"""Every Kafka topic notifyd reads or writes; all are co-partitioned by user.

Inbound and internal topics carry raw bytes (JSON encoded by notifyd with orjson);
no Faust metadata is required of producers.  Topic names are part of the public
contract (README: "Event contract").
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2
from faust.types import TopicT

from notifyd.config import CHANNELS
from notifyd.stream.app import app, settings
from notifyd.stream.topology import TopicNames


def _topic(name: str, *, compacted: bool = False) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
        replicas=settings.topic_replication,
        internal=False,
        compacting=compacted or None,
    )


names = TopicNames(settings.topic_prefix)
events_topic = _topic(names.events)
rekeyed_topic = _topic(names.events_rekeyed)
events_dlq_topic = _topic(names.events_dlq)
preferences_topic = _topic(names.preferences)
control_topic = _topic(names.control)
status_topic = _topic(names.status)
deliveries_dlq_topic = _topic(names.deliveries_dlq)
deliver_topics: dict[str, TopicT] = {ch: _topic(names.deliver(ch)) for ch in CHANNELS}
subscriptions_topic = _topic(names.subscriptions)
fanout_topic = _topic(names.fanout)
callbacks_topic = _topic(names.callbacks)



def active_partitions(topic: str | None = None) -> frozenset[int]:
    """Partitions of ``topic`` (default: the events topic) this worker actively owns.

    All notifyd topics are co-partitioned, so these numbers are also the partitions of
    every table this worker owns.  Empty before the first assignment.
    """
    name = topic or names.events
    try:
        tps = app.assignor.assigned_actives()
    except Exception:  # no assignment yet (starting, rebalancing)
        return frozenset()
    return frozenset(tp.partition for tp in tps if tp.topic == name)


def partition_for(key: str, partitions: int | None = None) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for a UTF-8 key."""
    n = partitions or settings.topic_partitions
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n
