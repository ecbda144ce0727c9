"""Changelog-backed tables.  Keys are ``str`` with the raw key serializer so a table
key hashes to the same partition as the Kafka message key producers use (murmur2 of
the UTF-8 bytes): the table's partition for a user is the events' partition.

Every table except ``subscribers`` lives in its user's partition: written while
processing a message keyed by ``user_id``, or (``status``, keyed by notification id) a
record of that partition (``notifyd.stream.handlers.status.publish_status``);
``subscribers`` rows are written while processing a message keyed by their topic name
(``notifyd.stream.audience``).

The tables are declared by ``notifyd.stream.declare``; the names here refer to the
current runtime's.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event
from faust.streams import current_event as faust_current_event
from faust.types import EventT

from notifyd.stream.declare import Table
from notifyd.stream.runtime import current, ref

# The current runtime's tables (notifyd.stream.runtime.ref), for modules not handed one.
preferences: Table = ref(lambda rt: rt.tables.preferences)
seen: Table = ref(lambda rt: rt.tables.seen)
ledger: Table = ref(lambda rt: rt.tables.ledger)
scheduled: Table = ref(lambda rt: rt.tables.scheduled)
throttle: Table = ref(lambda rt: rt.tables.throttle)
inbox: Table = ref(lambda rt: rt.tables.inbox)
status: Table = ref(lambda rt: rt.tables.status)
cancels: Table = ref(lambda rt: rt.tables.cancels)
subscribers: Table = ref(lambda rt: rt.tables.subscribers)
subscriptions: Table = ref(lambda rt: rt.tables.subscriptions)
TABLES: dict[str, Table] = ref(lambda rt: rt.tables.by_name)


class _EventScope:
    """``with current_event(ev)``: a class, not a generator context manager, for it runs
    around every record of the hot path (a third of the cost)."""

    __slots__ = ("_ev", "_token")

    def __init__(self, ev: EventT[Any]) -> None:
        self._ev = ev

    def __enter__(self) -> None:
        self._token = _current_event.set(weakref.ref(self._ev))

    def __exit__(self, *exc: object) -> None:
        _current_event.reset(self._token)


def current_event(ev: EventT[Any]) -> _EventScope:
    """Make ``ev`` Faust's current event while table reads and writes happen outside the
    stream's own iteration (a batch, a task of its own): Faust reads a RocksDB table and
    writes every changelog record in the partition of the current event.  With
    :func:`any_partition`, the one place that touches Faust's private context variable."""
    return _EventScope(ev)


def held_partition() -> int | None:
    """The partition of the current event when it is one of notifyd's own topics (all
    co-partitioned: this worker then holds that partition of every table), else None."""
    ev = faust_current_event()
    if ev is None:
        return None
    message = ev.message
    if message.topic not in current().topics.names.source_set:
        return None
    return message.partition  # type: ignore[no-any-return]


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
