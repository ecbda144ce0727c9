"""What the factory (``notifyd.stream.factory``) declares on a Faust app: the topics and
the tables, as the :class:`Topics` and :class:`Tables` a runtime holds.

Apart from ``notifyd.stream.topics`` and ``notifyd.stream.tables``, which name the
current runtime's (``notifyd.stream.runtime.ref``), so the runtime's types import
nothing that imports the runtime.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import Any, cast

import faust
import structlog
from faust.types import TableT, TopicT

from notifyd.config import CHANNELS, Settings
from notifyd.stream.changelog import DirectChangelogTable
from notifyd.stream.topology import TABLE_NAMES, TopicNames
from notifyd.stream.writer import Outbound, writer_of


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


log = structlog.stdlib.get_logger("notifyd.stream.declare")


class DirectTopic(faust.Topic):
    """A topic of raw bytes whose ``send`` puts the record on the app's batch writer
    (``notifyd.stream.writer``), which hands the client a batch per partition.

    Faust's ``Topic.send`` wraps each record in a ``FutureMessage``, routes it through
    the channel, a stampede-guarded producer look-up and the sensors, and aiokafka's
    ``send`` adds a future and a callback per record: a large share of a busy worker's
    CPU for the 4-5 records an event produces.  What matters is kept: the record is
    handed to the client, in order, before Faust commits the offsets of what caused it
    (Faust's producer flush empties the writer first: ``notifyd.stream.changelog``),
    Faust's monitor counts it (``notifyd_faust_messages_sent``), and a record the broker
    refuses is logged and counted as Faust would.  ``send`` returns None: a caller that
    must know the broker has the record uses an :class:`AwaitedTopic`.  Anything else,
    or a producer not running (an agent's ``test_context``), goes through Faust's
    ``send``."""

    async def send(  # type: ignore[override]
        self,
        *,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Any = None,
        **kwargs: Any,
    ) -> Any:
        producer = self.app.producer
        if (
            kwargs
            or timestamp is not None
            or getattr(producer, "_producer", None) is None
            or not isinstance(value, bytes)
            or not (key is None or isinstance(key, bytes))
            or not (headers is None or isinstance(headers, list | tuple))
        ):
            return await super().send(key=key, value=value, partition=partition,
                                      timestamp=timestamp, headers=headers, **kwargs)
        return await self._direct(producer, key, value, partition, headers)

    async def _direct(self, producer: Any, key: bytes | None, value: bytes, partition: int | None,
                headers: Any) -> Any:
        writer_of(self.app).put(Outbound(self.get_topic_name(), key, value, partition, headers))
        return None


class AwaitedTopic(DirectTopic):
    """A :class:`DirectTopic` whose ``send`` returns the client's future for the record,
    for a caller that waits until the broker has it (a dead letter)."""

    async def _direct(self, producer: Any, key: bytes | None, value: bytes,
                      partition: int | None, headers: Any) -> Any:
        topic = self.get_topic_name()
        monitor = self.app.monitor
        monitor.messages_sent += 1
        monitor.messages_sent_by_topic[topic] += 1
        fut = await producer.send(topic, key, value, partition, None, headers)
        cast(asyncio.Future, fut).add_done_callback(_on_sent(self.app, topic))
        return fut


def _on_sent(app: Any, topic: str) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            app.monitor.send_errors += 1
            log.error("produce.failed", topic=topic, error=repr(exc))

    return done


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    def topic(name: str, *, compacted: bool = False, awaited: bool = False) -> TopicT:
        return (AwaitedTopic if awaited else DirectTopic)(
            app,
            topics=[name],
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
        events=topic(names.events, awaited=True),  # the web answers once the broker has it
        rekeyed=topic(names.events_rekeyed),
        events_dlq=topic(names.events_dlq, awaited=True),
        preferences=topic(names.preferences),
        control=topic(names.control),
        status=topic(names.status),
        deliveries_dlq=topic(names.deliveries_dlq, awaited=True),
        deliver={ch: topic(names.deliver(ch)) for ch in CHANNELS},
        subscriptions=topic(names.subscriptions),
        fanout=topic(names.fanout),
        callbacks=topic(names.callbacks),
    )


Table = TableT[str, Any]


@dataclass(frozen=True)
class Tables:
    #: user_id -> preferences document (see records.Preferences.to_dict).
    preferences: Table
    #: records.idempotency_scope(user_id, event_id) -> [first_seen_epoch, partition,
    #: origin "topic/partition/offset", user_id] (legacy rows: bare event_id -> first three).
    seen: Table
    #: "<notification_id>:<channel>" -> {"status", "ts", "p"}: the delivery ledger.
    ledger: Table
    #: "<notification_id>:<channel>" -> {"due", "p", "delivery", "reason"}: deferred sends;
    #: "event:<scope>" -> a scheduled event, "digest:<scope>" -> an open digest
    #: (notifyd.stream.timing).
    scheduled: Table
    #: user_id -> {channel: [[epoch, notification_id], ...]} recent sends for the throttle.
    throttle: Table
    #: user_id -> {"items": [...newest first], "unread": n}: the in-app inbox.
    inbox: Table
    #: notification_id -> content and per-channel delivery state.
    status: Table
    #: "<topic>#<bucket>" -> {user_id: subscribed_at}: a topic's subscribers, in the topic's
    #: partition, sharded in buckets (layout: notifyd.stream.audience).
    subscribers: Table
    #: user_id -> {topic: subscribed_at}: the topics a user subscribed to (user's partition).
    subscriptions: Table
    #: records.idempotency_scope(user_id, event_id) -> [cancelled_at, partition, user_id]:
    #: cancels remembered (expiring like ``seen``) so one that arrives before its event wins.
    cancels: Table

    @property
    def by_name(self) -> dict[str, Table]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_HELP = {
    "preferences": "User preferences and contact addresses",
    "seen": "Event ids already processed per user (dedupe, expiring)",
    "ledger": "What each channel already did per notification (idempotency)",
    "scheduled": "Deliveries waiting for a time (quiet hours, throttle, retry)",
    "throttle": "Recent sends per user and channel (throttle window)",
    "inbox": "In-app inbox per user, bounded",
    "status": "Delivery state per notification and channel",
    "subscribers": "Subscribers of each topic, in buckets",
    "subscriptions": "Topics each user subscribed to",
    "cancels": "Cancelled (user_id, event_id) pairs (expiring)",
}

assert tuple(_HELP) == TABLE_NAMES, "notifyd.stream.topology.TABLE_NAMES must list every table"


def _table(app: faust.App, settings: Settings, name: str) -> Table:
    # app.Table with the table class whose changelog records skip Faust's buffer.
    table: Any = app.tables.add(
        DirectChangelogTable(
            app,
            name=name,
            default=None,
            beacon=app.tables.beacon,
            key_type=str,
            value_type=None,
            partitions=settings.topic_partitions,
            help=_HELP[name],
        )
    )
    # Faust derives the serializer from key_type and would pick "json" for str,
    # which quotes the key and so hashes it to another partition than the raw
    # message key.  Raw keys keep table partition == message partition, and make
    # app.router.key_store() (web routing) point at the right worker.
    table.key_serializer = "raw"
    table.value_serializer = "json"
    table._changelog_topic = None  # rebuilt lazily with the serializers above
    return cast("Table", table)


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    """Declare every table on ``app``, in ``TABLE_NAMES`` order (the factory calls it)."""
    return Tables(**{name: _table(app, settings, name) for name in TABLE_NAMES})
