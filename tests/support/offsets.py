"""A partition of the events topic with empty offset books in Faust's consumer, for the
tests of what notifyd books there (``stream.faust_fixes``, ``stream.lanes``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from faust.types import TP

from notifyd.stream import faust_fixes
from notifyd.stream.app import app
from notifyd.stream.topics import events_topic


@contextmanager
def fresh_partition(monkeypatch: pytest.MonkeyPatch, partition: int) -> Iterator[TP]:
    """``partition`` of the events topic, acks enabled, its books empty before and after."""
    consumer = app.consumer
    topic = events_topic.get_topic_name()
    tp = TP(topic, partition)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda t: t == topic)
    faust_fixes._absent.clear()

    def reset() -> None:
        for book in (consumer._acked, consumer._acked_index, consumer._gap,
                     consumer._committed_offset, consumer._read_offset):
            book.pop(tp, None)
        faust_fixes._held.pop(tp, None)

    reset()
    try:
        yield tp
    finally:
        reset()
        faust_fixes._absent.clear()
