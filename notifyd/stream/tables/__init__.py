"""Changelog-backed tables.  Keys are ``str`` with the raw key serializer so a table
key hashes to the same partition as the Kafka message key producers use (murmur2 of
the UTF-8 bytes): the table's partition for a user is the events' partition.

Every table except ``status`` and ``subscribers`` is written while processing a
message keyed by ``user_id`` and so lives in that user's partition; ``status`` is fed
by ``notifyd.status``, keyed by notification id; ``subscribers`` rows are written
while processing a message keyed by their topic name (``notifyd.stream.audience``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from faust.streams import _current_event
from faust.types import EventT, TableT

from notifyd.stream.app import app, settings
from notifyd.stream.topology import TABLE_NAMES


def _table(name: str, help_: str) -> TableT[str, Any]:
    table: Any = app.Table(
        name,
        default=None,
        key_type=str,
        value_type=None,
        partitions=settings.topic_partitions,
        help=help_,
    )
    # Faust derives the serializer from key_type and would pick "json" for str,
    # which quotes the key and so hashes it to another partition than the raw
    # message key.  Raw keys keep table partition == message partition, and make
    # app.router.key_store() (web routing) point at the right worker.
    table.key_serializer = "raw"
    table.value_serializer = "json"
    table._changelog_topic = None  # rebuilt lazily with the serializers above
    return cast("TableT[str, Any]", table)


#: user_id -> preferences document (see records.Preferences.to_dict).
preferences = _table("preferences", "User preferences and contact addresses")
#: records.idempotency_scope(user_id, event_id) -> [first_seen_epoch, partition,
#: origin "topic/partition/offset", user_id] (legacy rows: bare event_id -> first three).
seen = _table("seen", "Event ids already processed per user (dedupe, expiring)")
#: "<notification_id>:<channel>" -> {"status", "ts", "p"}: the delivery ledger.
ledger = _table("ledger", "What each channel already did per notification (idempotency)")
#: "<notification_id>:<channel>" -> {"due", "p", "delivery", "reason"}: deferred sends;
#: "event:<scope>" -> a scheduled event, "digest:<scope>" -> an open digest (notifyd.stream.timing).
scheduled = _table("scheduled", "Deliveries waiting for a time (quiet hours, throttle, retry)")
#: user_id -> {channel: [[epoch, notification_id], ...]} recent sends for the throttle.
throttle = _table("throttle", "Recent sends per user and channel (throttle window)")
#: user_id -> {"items": [...newest first], "unread": n}: the in-app inbox.
inbox = _table("inbox", "In-app inbox per user, bounded")
#: notification_id -> content and per-channel delivery state.
status = _table("status", "Delivery state per notification and channel")
#: records.idempotency_scope(user_id, event_id) -> [cancelled_at, partition, user_id]:
#: cancels remembered (expiring like ``seen``) so one that arrives before its event wins.
cancels = _table("cancels", "Cancelled (user_id, event_id) pairs (expiring)")

#: "<topic>#<bucket>" -> {user_id: subscribed_at}: a topic's subscribers, in the topic's
#: partition, sharded in buckets (layout: notifyd.stream.audience).
subscribers = _table("subscribers", "Subscribers of each topic, in buckets")
#: user_id -> {topic: subscribed_at}: the topics a user subscribed to (user's partition).
subscriptions = _table("subscriptions", "Topics each user subscribed to")

TABLES: dict[str, TableT[str, Any]] = {
    t.name: t
    for t in (
        preferences, seen, ledger, scheduled, throttle, inbox, status, subscribers,
        subscriptions, cancels,
    )
}

assert tuple(TABLES) == TABLE_NAMES, "notifyd.stream.topology.TABLE_NAMES must list every table"


@contextmanager
def current_event(ev: EventT[Any]) -> Iterator[None]:
    """Make ``ev`` Faust's current event while table reads and writes happen outside the
    stream's own iteration (a batch, a task of its own): Faust reads a RocksDB table and
    writes every changelog record in the partition of the current event.  With
    :func:`any_partition`, the one place that touches Faust's private context variable."""
    token = _current_event.set(weakref.ref(ev))
    try:
        yield
    finally:
        _current_event.reset(token)


@contextmanager
def any_partition() -> Iterator[None]:
    """Reads (only) that look in every partition this worker holds, for a row keyed by
    something else than the current event's partition (RocksDB reads only the current
    event's partition while there is one)."""
    token = _current_event.set(None)
    try:
        yield
    finally:
        _current_event.reset(token)
