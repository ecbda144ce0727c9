"""Every Kafka topic notifyd reads or writes; all are co-partitioned by user.

Inbound and internal topics carry raw bytes (JSON encoded by notifyd with orjson);
no Faust metadata is required of producers.  Topic names are part of the public
contract (README: "Event contract").  :func:`declare_topics` declares them on an app
(the factory calls it); the module-level names refer to the current runtime's.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
from aiokafka.partitioner import murmur2
from faust.types import TopicT

from notifyd.config import CHANNELS, Settings
from notifyd.stream.runtime import current, ref
from notifyd.stream.topology import TopicNames


@dataclass(frozen=True)
class Topics:
    names: TopicNames
    events: TopicT
    rekeyed: TopicT
    events_dlq: TopicT
    preferences: TopicT
    control: TopicT
    status: TopicT
    deliveries_dlq: TopicT
    deliver: dict[str, TopicT]
    subscriptions: TopicT
    fanout: TopicT
    callbacks: TopicT


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    def topic(name: str, *, compacted: bool = False) -> TopicT:
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
    return Topics(
        names=names,
        events=topic(names.events),
        rekeyed=topic(names.events_rekeyed),
        events_dlq=topic(names.events_dlq),
        preferences=topic(names.preferences),
        control=topic(names.control),
        status=topic(names.status),
        deliveries_dlq=topic(names.deliveries_dlq),
        deliver={ch: topic(names.deliver(ch)) for ch in CHANNELS},
        subscriptions=topic(names.subscriptions),
        fanout=topic(names.fanout),
        callbacks=topic(names.callbacks),
    )


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
        tps = rt.app.assignor.assigned_actives()
    except Exception:  # no assignment yet (starting, rebalancing)
        return frozenset()
    return frozenset(tp.partition for tp in tps if tp.topic == name)


def partition_for(key: str, partitions: int | None = None) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for a UTF-8 key."""
    n = partitions or current().settings.topic_partitions
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n
