"""Every Kafka topic notifyd reads or writes; all are co-partitioned by user.

Inbound and internal topics carry raw bytes (JSON encoded by notifyd with orjson);
no Faust metadata is required of producers.  Topic names are part of the public
contract (README: "Event contract").
"""

from __future__ import annotations

from faust.types import TopicT

from .app import app, settings
from .admin import (
    CONTROL,
    DELIVERIES_DLQ,
    EVENTS,
    EVENTS_DLQ,
    EVENTS_REKEYED,
    PREFERENCES,
    STATUS,
    deliver_topic_name,
)
from .config import CHANNELS

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


events_topic = _topic(EVENTS)
rekeyed_topic = _topic(EVENTS_REKEYED)
events_dlq_topic = _topic(EVENTS_DLQ)
preferences_topic = _topic(PREFERENCES)
control_topic = _topic(CONTROL)
status_topic = _topic(STATUS)
deliveries_dlq_topic = _topic(DELIVERIES_DLQ)
deliver_topics: dict[str, TopicT] = {ch: _topic(deliver_topic_name(ch)) for ch in CHANNELS}

