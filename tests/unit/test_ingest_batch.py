"""The ingest lane decodes a batch's records in one pass before it handles them
(``notifyd.stream.handlers.ingest.decoded_batch``): the handler then uses that decode,
and what it does with a record is what it does without the batch."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from faust.events import Event
from faust.types import TP, Message

from notifyd.stream.agents.common import handle_one
from notifyd.stream.app import app
from notifyd.stream.handlers import ingest
from notifyd.stream.handlers.ingest import decoded_batch, handle_event
from notifyd.stream.tables import current_event, inbox
from notifyd.stream.timing import TIMER_HEADER
from notifyd.stream.topics import names, partition_for
from tests.support.dead_letters import DeadLetters


@pytest.fixture
def dlq(monkeypatch: pytest.MonkeyPatch) -> DeadLetters:
    return DeadLetters().install(monkeypatch)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The values ``parse_input`` was called with, in order."""
    calls: list[bytes] = []
    real = ingest.parse_input

    def counted(raw: bytes, *a: Any) -> Any:
        calls.append(raw)
        return real(raw, *a)

    monkeypatch.setattr(ingest, "parse_input", counted)
    return calls


def _user_in(partition: int) -> str:
    return next(u for i in range(10_000) if partition_for(u := f"ib{i}-{uuid.uuid4().hex[:4]}")
                == partition)


def _record(offset: int, key: str, value: bytes, headers: list[Any] | None = None) -> Any:
    tp = TP(names.events, 2)
    m = Message(tp.topic, 2, offset, 0.0, 0, headers or [], key.encode(), value, None, tp=tp)
    return Event(app, key.encode(), value, headers or [], m)


async def _handle(events: list[Any]) -> None:
    """As the ingest lane does: the batch decoded, then each record handled in order."""
    with decoded_batch(events):
        for ev in events:
            with current_event(ev):
                await handle_one(ev, handle_event)


async def test_a_batch_is_decoded_once_and_handled_as_records_are_one_by_one(
    dlq: DeadLetters, decodes: list[bytes]
) -> None:
    user = _user_in(2)
    good = [orjson.dumps({"event_id": f"e{i}", "user_id": user, "title": f"t{i}",
                          "channels": ["inapp"]}) for i in range(3)]
    bad = orjson.dumps({"event_id": "e9", "user_id": user, "priority": "whenever"})
    events = [_record(0, user, good[0]), _record(1, user, bad),
              _record(2, user, good[1]), _record(3, user, good[2])]
    await _handle(events)
    assert decodes == [good[0], bad, good[1], good[2]]  # once each, before any handling
    titles = [it["title"] for it in inbox[user]["items"]]
    assert titles == ["t2", "t1", "t0"]
    (topic, _key, value, headers), = dlq.records
    assert topic == names.events_dlq and value == bad
    reason = headers["notifyd-reason"]
    # The same reason as the record gets handled on its own, without a batch.
    dlq.records.clear()
    ev = _record(4, user, bad)
    with current_event(ev):
        await handle_one(ev, handle_event)
    assert dlq.records[0][3]["notifyd-reason"] == reason
    assert ingest._decoded == {}


async def test_a_timers_record_is_left_to_its_handler(decodes: list[bytes]) -> None:
    user = _user_in(2)
    ev = _record(0, user, b"{}", headers=[(TIMER_HEADER, b"x")])
    with decoded_batch([ev]):
        assert decodes == [] and ingest._decoded == {}


async def test_an_abandoned_batch_leaves_nothing_decoded_behind(decodes: list[bytes]) -> None:
    user = _user_in(2)
    events = [_record(i, user, orjson.dumps({"event_id": f"a{i}", "user_id": user}))
              for i in range(3)]
    with pytest.raises(RuntimeError), decoded_batch(events):
        assert len(ingest._decoded) == 3
        raise RuntimeError("the lane was cancelled")
    assert ingest._decoded == {}
