"""Create notifyd's source topics before workers subscribe.

A Faust worker subscribed to a topic that does not exist yet may consume nothing for
a long time, so topics are created up front with the admin client (idempotent).
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .config import CHANNELS, Settings

EVENTS = "notifyd.events"
EVENTS_REKEYED = "notifyd.events.rekeyed"
EVENTS_DLQ = "notifyd.events.dlq"
PREFERENCES = "notifyd.preferences"
CONTROL = "notifyd.control"
STATUS = "notifyd.status"
DELIVERIES_DLQ = "notifyd.deliveries.dlq"


def deliver_topic_name(channel: str) -> str:
    return f"notifyd.deliver.{channel}"


#: Topics that must exist before a worker subscribes.
SOURCE_TOPICS: tuple[str, ...] = (
    EVENTS,
    EVENTS_REKEYED,
    EVENTS_DLQ,
    PREFERENCES,
    CONTROL,
    STATUS,
    DELIVERIES_DLQ,
    *(deliver_topic_name(ch) for ch in CHANNELS),
)


async def ensure_topics(settings: Settings, names: tuple[str, ...] = SOURCE_TOPICS) -> list[str]:
    """Create missing topics with ``settings.topic_partitions``; returns those created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=30000
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            new = [
                NewTopic(n, settings.topic_partitions, settings.topic_replication)
                for n in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new, timeout_ms=30000)
        return missing
    finally:
        await admin.close()
