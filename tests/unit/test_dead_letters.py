"""Every exception on a record ends in a dead letter (or a retry), never a log-and-ack.

The agents run in Faust's ``agent.test_context()`` (real streams and tables, in
memory); what they produce to the dead-letter topics is kept instead of sent to Kafka
(the integration tests check the real topics).  Faults that valid input cannot cause
(an outage, a bug) are injected by making one step raise.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.events import Event as FaustEvent
from faust.types import Message

from notifyd.domain.templating import TemplateStore
from notifyd.metrics import metrics
from notifyd.model.records import Delivery
from notifyd.stream.agents import common
from notifyd.stream.app import app
from notifyd.stream.handlers import deadletter, dispatch
from notifyd.stream.handlers import status as statuses
from notifyd.stream.tables import seen
from notifyd.stream.topics import deliveries_dlq_topic, events_dlq_topic, names, partition_for
from tests.support.app import app_agent
from tests.support.dead_letters import DeadLetters
from tests.support.waiting import until


@pytest.fixture
def dlq(monkeypatch: pytest.MonkeyPatch) -> DeadLetters:
    return DeadLetters().install(monkeypatch)


def new_user() -> str:
    return f"dl-user-{uuid.uuid4().hex[:10]}"


def boom(*a: Any, **kw: Any) -> Any:
    raise RuntimeError("injected fault")


def dead_count(reason: str) -> float:
    return metrics.events_dead_lettered.labels(reason)._value.get()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------


async def test_template_runtime_error_is_dead_lettered(
    dlq: DeadLetters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = app_agent("ingest")

    (tmp_path / "calc.json").write_text(
        orjson.dumps({"locales": {"en": {"title": "{{ n + 1 }}", "body": "b"}}}).decode()
    )
    monkeypatch.setattr(dispatch, "_templates", TemplateStore(tmp_path))
    user = new_user()
    raw = orjson.dumps({"event_id": "e1", "user_id": user, "template": "calc", "data": {"n": "x"}})
    before = dead_count("template_error")
    async with ingest.test_context() as agent:
        await agent.put(raw, key=user.encode(), partition=partition_for(user))
        await until(lambda: dlq.records)
    (topic, key, value, headers), = dlq.records
    assert topic == names.events_dlq and value == raw and key == user.encode()
    assert headers["notifyd-reason"].startswith("template_error: calc: TypeError: ")
    assert dead_count("template_error") == before + 1
    assert seen.get(f"{len(user)}:{user}:e1") is None  # not marked: a re-drive is processed


async def test_unexpected_ingest_error_is_dead_lettered_with_the_original_bytes(
    dlq: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = app_agent("ingest")

    monkeypatch.setattr(dispatch, "throttle_policy", boom)
    user = new_user()
    raw = orjson.dumps({"event_id": "e2", "user_id": user, "title": "t"})
    before = dead_count("internal_error")
    async with ingest.test_context() as agent:
        await agent.put(raw, key=user.encode(), partition=partition_for(user))
        await until(lambda: dlq.records)
    (_, key, value, headers), = dlq.records
    assert value == raw and key == user.encode()
    assert headers["notifyd-reason"] == "internal_error: RuntimeError: injected fault"
    assert headers["notifyd-source-partition"] == str(partition_for(user))
    assert headers["notifyd-source-offset"] == "0"
    assert dead_count("internal_error") == before + 1


# --------------------------------------------------------------------------------------
# channel agents
# --------------------------------------------------------------------------------------


async def test_channel_agent_failure_outside_the_provider_is_dead_lettered(
    dlq: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    inapp_agent = app_agent("agent.inapp")

    user = new_user()
    d = Delivery(notification_id=f"n-{user}", event_id="e", user_id=user, channel="inapp",
                 title="t", body="b")

    async def status_down(*a: Any, **kw: Any) -> None:
        raise RuntimeError("status topic unavailable")

    monkeypatch.setattr(statuses, "publish_status", status_down)
    async with inapp_agent.test_context() as agent:
        await agent.put(d.dumps(), key=user.encode())
        await agent.put(b"{not a delivery", key=user.encode())
        await until(lambda: len(dlq.records) == 2)
    by_value = {value: (topic, h["notifyd-reason"]) for topic, _, value, h in dlq.records}
    assert by_value[d.dumps()] == (
        names.deliveries_dlq, "internal_error: RuntimeError: status topic unavailable"
    )
    topic, reason = by_value[b"{not a delivery"]
    assert topic == names.deliveries_dlq and reason.startswith("undecodable: JSONDecodeError: ")


# --------------------------------------------------------------------------------------
# status fold, control, preferences
# --------------------------------------------------------------------------------------


async def test_status_record_that_cannot_be_folded_is_dead_lettered(dlq: DeadLetters) -> None:
    status_agent = app_agent("status")
    from notifyd.stream.tables import status

    good = f"n-good-{uuid.uuid4().hex[:6]}"
    bad = orjson.dumps({"notification_id": "n-bad", "updates": [{"status": "sent"}]})
    async with status_agent.test_context() as agent:
        await agent.put(bad, key=b"n-bad")
        await agent.put(b"\xff not json", key=b"n-worse")
        await agent.put(
            orjson.dumps({"notification_id": good, "updates": [
                {"channel": "sms", "status": "queued", "ts": 1.0}]}),
            key=good.encode(),
        )
        await until(lambda: len(dlq.records) == 2 and status.get(good) is not None)
    by_value = {value: (topic, h["notifyd-reason"]) for topic, _, value, h in dlq.records}
    assert by_value[bad] == (names.deliveries_dlq, "internal_error: KeyError: 'channel'")
    assert by_value[b"\xff not json"][1].startswith("internal_error: JSONDecodeError: ")
    assert status.get(good)["channels"]["sms"]["status"] == "queued"  # the batch is kept


async def test_control_message_that_fails_is_dead_lettered(dlq: DeadLetters) -> None:
    control_agent = app_agent("control")

    user = new_user()
    bad = orjson.dumps({"op": "unschedule", "due": 1})  # no id
    async with control_agent.test_context() as agent:
        await agent.put(bad, key=user.encode())
        await until(lambda: dlq.records)
    (topic, _, value, headers), = dlq.records
    assert (topic, value) == (names.deliveries_dlq, bad)
    assert headers["notifyd-reason"] == "internal_error: KeyError: 'id'"
    assert headers["notifyd-source-topic"] == names.control


async def test_preferences_failure_is_dead_lettered(
    dlq: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    from notifyd.stream.handlers import preferences as preferences_handler
    preferences_agent = app_agent("preferences")

    monkeypatch.setattr(preferences_handler, "merge_preferences", boom)
    user = new_user()
    raw = orjson.dumps({"op": "put", "user_id": user, "fields": {"locale": "fr"}})
    async with preferences_agent.test_context() as agent:
        await agent.put(raw, key=user.encode(), partition=partition_for(user))
        await until(lambda: dlq.records)
    (topic, _, value, headers), = dlq.records
    assert (topic, value) == (names.events_dlq, raw)
    assert headers["notifyd-reason"] == "internal_error: RuntimeError: injected fault"


def test_dead_letter_topic_by_source() -> None:
    # Producers' input: the events DLQ (its re-drive goes back through validation);
    # notifyd's own records: the deliveries DLQ.
    for t in (names.events, names.events_rekeyed, names.preferences):
        assert deadletter.dlq_for(t) is events_dlq_topic
    for t in (names.status, names.control, names.deliver("email"), names.deliver("inapp")):
        assert deadletter.dlq_for(t) is deliveries_dlq_topic


# --------------------------------------------------------------------------------------
# the dead letter itself cannot be produced
# --------------------------------------------------------------------------------------


def event(value: bytes, topic: str | None = None) -> FaustEvent:
    msg = Message(topic=topic or names.control, partition=1, offset=7, timestamp=0.0, timestamp_type=0,
                  headers=[], key=b"k", value=value, checksum=None)
    msg.incref()  # the stream's own reference, as Faust takes it when it yields the event
    return FaustEvent(app, b"k", value, [], msg)


async def test_dead_letter_produce_is_retried_until_the_broker_takes_it(
    dlq: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadletter, "DEAD_LETTER_RETRY_BASE_S", 0.001)
    dlq.failures = 3
    ev = event(b"payload")

    async def fails(_: Any) -> None:
        raise ValueError("bad")

    await common.handle_one(ev, fails)
    assert dlq.failures == 0
    assert dlq.reasons() == ["internal_error: ValueError: bad"]
    assert ev.ack() is True  # handled: the stream's ack is the final one


async def test_record_is_held_unacked_when_stopped_before_its_dead_letter(
    dlq: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadletter, "DEAD_LETTER_RETRY_BASE_S", 0.001)
    dlq.failures = 10**9  # the broker never takes it
    ev = event(b"payload")

    async def fails(_: Any) -> None:
        raise ValueError("bad")

    task = asyncio.create_task(common.handle_one(ev, fails))
    await until(lambda: dlq.failures < 10**9 - 3)  # retrying
    task.cancel()  # the worker stops
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dlq.records == []
    # Faust's stream acks the current record in a finally: that ack must not be final,
    # so the offset is never committed and the record is consumed again after a restart.
    assert ev.ack() is False and not ev.message.acked
