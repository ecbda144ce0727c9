"""A status record is folded where it is written when this worker holds its user's
partition (every topic is co-partitioned by user), else it goes to ``notifyd.status``
in the user's partition (``notifyd.stream.handlers.status.publish_status``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from faust.events import Event
from faust.types import TP, Message

from notifyd.stream.app import app
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.status import publish_status, status_update
from notifyd.stream.tables import current_event, held_partition, status
from notifyd.stream.topics import names, partition_for


def _event(topic: str, partition: int, key: bytes) -> Any:
    tp = TP(topic, partition)
    m = Message(topic, partition, 0, 0.0, 0, [], key, b"{}", None, tp=tp)
    return Event(app, key, b"{}", [], m)


class _Id(str):
    """A provider id of a ``str`` subclass (the SMTP provider's Message-ID header was)."""


class Sent:
    """``notifyd.status`` as a list of (key, partition, value)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, int | None, bytes]] = []

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.records.append((key, partition, value))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    s = Sent()
    monkeypatch.setattr(statuses, "status_topic", s)
    return s


def _user_in(partition: int) -> str:
    return next(u for i in range(10_000) if partition_for(u := f"u{i}-{uuid.uuid4().hex[:4]}")
                == partition)


def test_held_partition_is_the_current_events_of_our_own_topics() -> None:
    assert held_partition() is None
    with current_event(_event(names.deliver("email"), 3, b"u")):
        assert held_partition() == 3
    with current_event(_event("someone-elses-topic", 3, b"u")):
        assert held_partition() is None
    with current_event(_event(f"{app.conf.id}-status-changelog", 3, b"n")):
        assert held_partition() is None  # a changelog (table recovery) is not processing


async def test_a_record_of_a_held_partition_is_folded_here(sent: Sent) -> None:
    user, nid = _user_in(2), f"n-{uuid.uuid4().hex[:8]}"
    content = {"user_id": user, "event_id": "e1", "tags": ("a", "b"), "data": {"k": 1}}
    with current_event(_event(names.events, 2, user.encode())):
        await publish_status(nid, [status_update("inapp", "queued", 1.0)],
                             content=content, user_id=user)
        await publish_status(nid, [status_update("inapp", "sent", 2.0, provider_id=_Id("m1"))],
                             user_id=user)
    assert sent.records == []
    doc = status.get(nid)
    assert type(doc["channels"]["inapp"]["provider_id"]) is str  # as the topic gives it
    assert doc["user_id"] == user and doc["p"] == 2
    # The row holds what the topic would have carried: JSON types, nothing shared.
    assert doc["tags"] == ["a", "b"] and doc["data"] == {"k": 1}
    content["data"]["k"] = 2
    assert doc["data"] == {"k": 1}
    assert doc["channels"]["inapp"]["status"] == "sent"
    assert [h["status"] for h in doc["channels"]["inapp"]["history"]] == ["queued", "sent"]


async def test_a_record_of_another_partition_goes_to_its_users(sent: Sent) -> None:
    user, nid = _user_in(5), f"n-{uuid.uuid4().hex[:8]}"
    with current_event(_event(names.events, 2, b"someone-else")):
        await publish_status(nid, [status_update("email", "queued", 1.0)], user_id=user)
    await publish_status(nid, [status_update("email", "sent", 2.0)], user_id=user)  # a timer
    assert [(k, p) for k, p, _ in sent.records] == [(nid.encode(), 5)] * 2
    assert status.get(nid) is None


async def test_without_a_user_the_notification_ids_partition(sent: Sent) -> None:
    nid = f"n-{uuid.uuid4().hex[:8]}"  # a row from before rows carried their user
    await publish_status(nid, [], callbacks=[{"key": "k"}], user_id=None)
    assert [(k, p) for k, p, _ in sent.records] == [(nid.encode(), partition_for(nid))]
