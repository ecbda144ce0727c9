"""Every Kafka topic notifyd reads or writes; all are co-partitioned by user.

Inbound and internal topics carry raw bytes (JSON encoded by notifyd with orjson);
no Faust metadata is required of producers.  Topic names are part of the public
contract (README: "Event contract").  ``notifyd.stream.declare.declare_topics``
declares them on an app (the factory calls it); the module-level names refer to the
current runtime's.
"""

from __future__ import annotations

from faust.types import TopicT

from notifyd.stream.partitioner import partition_of
from notifyd.stream.runtime import current, ref
from notifyd.stream.topology import TopicNames

names: TopicNames = ref(lambda rt: rt.topics.names)
events_topic: TopicT = ref(lambda rt: rt.topics.events)
rekeyed_topic: TopicT = ref(lambda rt: rt.topics.rekeyed)
events_dlq_topic: TopicT = ref(lambda rt: rt.topics.events_dlq)
preferences_topic: TopicT = ref(lambda rt: rt.topics.preferences)
control_topic: TopicT = ref(lambda rt: rt.topics.control)
status_topic: TopicT = ref(lambda rt: rt.topics.status)
deliveries_dlq_topic: TopicT = ref(lambda rt: rt.topics.deliveries_dlq)
deliver_topics: dict[str, TopicT] = ref(lambda rt: rt.topics.deliver)
subscriptions_topic: TopicT = ref(lambda rt: rt.topics.subscriptions)
fanout_topic: TopicT = ref(lambda rt: rt.topics.fanout)
callbacks_topic: TopicT = ref(lambda rt: rt.topics.callbacks)


def active_partitions(topic: str | None = None) -> frozenset[int]:
    """Partitions of ``topic`` (default: the events topic) this worker actively owns.

    All notifyd topics are co-partitioned, so these numbers are also the partitions of
    every table this worker owns.  Empty before the first assignment.
    """
    rt = current()
    name = topic or rt.topics.names.events
    try:
        # What ``assigned_actives()`` builds its set of every assigned TP from (~200 on
        # a worker; the scheduler asks twice a second): topic -> partitions.
        actives = rt.app.assignor._assignment.actives  # type: ignore[attr-defined]
        return frozenset(actives.get(name, ()))
    except Exception:  # no assignment yet (starting, rebalancing)
        return frozenset()


def partition_for(key: str, partitions: int | None = None) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for a UTF-8 key."""
    n = partitions or current().settings.topic_partitions
    return partition_of(key.encode(), n)
