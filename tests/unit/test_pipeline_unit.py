"""Pipeline pieces without a broker: pure functions, and table writes through the real
agents run in Faust's ``agent.test_context()`` (an in-memory channel: table writes
happen inside a real stream event, changelog records only go to the producer buffer)."""

from __future__ import annotations

import copy
import itertools
import random
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from faust.streams import current_event
from hypothesis import given
from hypothesis import strategies as st

from notifyd import clock
from notifyd.model.records import Delivery
from notifyd.providers import registry
from notifyd.stream.app import settings
from notifyd.stream.handlers import deliver, queueing, schedule
from notifyd.stream.handlers import inapp as inapp_handlers
from notifyd.stream.handlers.inapp import deliver_inapp
from notifyd.stream.handlers.status import fold_status, sent_update, status_update
from notifyd.stream.runtime import Runtime
from notifyd.stream.tables import inbox, ledger, status
from notifyd.stream.topics import control_topic, deliver_topics, partition_for
from tests.support.app import app_agent, build_app
from tests.support.dead_letters import DeadLetters
from tests.support.statuses import capture_statuses
from tests.support.waiting import until

# --------------------------------------------------------------------------------------
# fold_status
# --------------------------------------------------------------------------------------


def upd(channel: str, status: str, ts: float = 1.0, **kw: Any) -> dict[str, Any]:
    return {"channel": channel, "status": status, "ts": ts, **kw}


def fold(current: dict[str, Any] | None, *updates: dict[str, Any], **msg: Any) -> dict[str, Any]:
    return fold_status(
        current, {"notification_id": "n1", "updates": list(updates), **msg}, 3
    )


def test_fold_new_document_with_content() -> None:
    doc = fold(
        None,
        upd("email", "queued"),
        upd("sms", "suppressed", reason="no_address: x"),
        content={"title": "T", "user_id": "u1"},
    )
    assert doc["notification_id"] == "n1"
    assert doc["p"] == 3
    assert doc["title"] == "T" and doc["user_id"] == "u1"
    assert doc["channels"]["email"]["status"] == "queued"
    assert doc["channels"]["sms"] == {
        "status": "suppressed",
        "ts": 1.0,
        "reason": "no_address: x",
        "history": [{"status": "suppressed", "ts": 1.0, "reason": "no_address: x"}],
        "attempts": 0,
    }


def test_fold_content_merges_into_existing() -> None:
    doc = fold(None, upd("email", "queued"), content={"title": "T", "body": "B"})
    doc = fold(doc, upd("email", "sent", 2.0, attempt=1))
    assert doc["title"] == "T" and doc["body"] == "B"
    doc = fold(doc, content={"body": "B2"})
    assert doc["title"] == "T" and doc["body"] == "B2"
    assert doc["channels"]["email"]["status"] == "sent"


def test_fold_progression_and_reason_cleared() -> None:
    doc = fold(None, upd("email", "deferred", 1.0, reason="quiet_hours: x", deliver_at=9.0))
    doc = fold(doc, upd("email", "queued", 9.0, attempt=1))
    entry = doc["channels"]["email"]
    assert entry["status"] == "queued"
    assert "reason" not in entry
    doc = fold(doc, upd("email", "retrying", 10.0, attempt=1, reason="timeout"))
    assert doc["channels"]["email"]["reason"] == "timeout"
    doc = fold(doc, upd("email", "sent", 12.0, attempt=2, provider_id="p-1"))
    entry = doc["channels"]["email"]
    assert entry["status"] == "sent"
    assert entry["provider_id"] == "p-1"
    assert "reason" not in entry
    assert entry["attempts"] == 2
    assert [h["status"] for h in entry["history"]] == ["deferred", "queued", "retrying", "sent"]


@pytest.mark.parametrize("terminal", ["sent", "failed", "dead", "suppressed"])
@pytest.mark.parametrize("later", ["queued", "deferred", "retrying"])
def test_fold_terminal_never_regresses(terminal: str, later: str) -> None:
    doc = fold(None, upd("email", "queued", 1.0), upd("email", terminal, 2.0, attempt=1))
    before = copy.deepcopy(doc["channels"]["email"])
    doc = fold(doc, upd("email", later, 3.0))  # a re-processed record
    assert doc["channels"]["email"] == before


def test_fold_terminal_can_be_replaced_by_terminal() -> None:
    doc = fold(None, upd("email", "suppressed", 1.0, reason="throttled"))
    doc = fold(doc, upd("email", "sent", 2.0, attempt=1))
    assert doc["channels"]["email"]["status"] == "sent"


def test_fold_history_capped_at_20() -> None:
    doc: dict[str, Any] | None = None
    for i in range(30):
        doc = fold(doc, upd("email", "retrying", float(i), attempt=i + 1))
    assert doc is not None
    hist = doc["channels"]["email"]["history"]
    assert len(hist) == 20
    assert [h["ts"] for h in hist] == [float(i) for i in range(10, 30)]


def test_fold_attempts_is_max_seen() -> None:
    doc = fold(None, upd("email", "retrying", 1.0, attempt=4))
    doc = fold(doc, upd("email", "queued", 2.0))  # no attempt given
    assert doc["channels"]["email"]["attempts"] == 4
    doc = fold(doc, upd("email", "retrying", 3.0, attempt=2))  # late, older record
    assert doc["channels"]["email"]["attempts"] == 4
    doc = fold(doc, upd("email", "sent", 4.0, attempt=5))
    assert doc["channels"]["email"]["attempts"] == 5


def test_fold_channels_independent() -> None:
    doc = fold(None, upd("email", "sent", 1.0, attempt=1), upd("sms", "queued", 1.0))
    doc = fold(doc, upd("sms", "failed", 2.0, attempt=1, reason="bad number"))
    assert doc["channels"]["email"]["status"] == "sent"
    assert doc["channels"]["sms"]["status"] == "failed"
    assert doc["channels"]["sms"]["reason"] == "bad number"


# --------------------------------------------------------------------------------------
# backoff
# --------------------------------------------------------------------------------------


@pytest.fixture
async def retry_settings() -> None:
    build_app(retry_base_s=2.0, retry_max_s=60.0)


@pytest.mark.usefixtures("retry_settings")
@pytest.mark.parametrize(
    ("attempt", "cap"), [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (30, 60.0)]
)
def test_backoff_bounds(attempt: int, cap: float) -> None:
    delays = [deliver.backoff(attempt, None) for _ in range(300)]
    assert all(cap / 2 <= d <= cap for d in delays)
    assert len(set(delays)) > 1  # jittered


@pytest.mark.usefixtures("retry_settings")
def test_backoff_extremes_of_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda a, b: a)
    assert deliver.backoff(3, None) == 4.0
    monkeypatch.setattr(random, "uniform", lambda a, b: b)
    assert deliver.backoff(3, None) == 8.0


@pytest.mark.usefixtures("retry_settings")
def test_backoff_honours_retry_after() -> None:
    for _ in range(100):
        assert deliver.backoff(1, 30.0) == 30.0  # longer than the jittered 1..2 s
        assert 1.0 <= deliver.backoff(1, 0.5) <= 2.0  # shorter hint: backoff wins
        assert deliver.backoff(1, 3600.0) == 60.0  # capped at retry_max_s
        assert 30.0 <= deliver.backoff(6, 10.0) <= 60.0


@pytest.mark.usefixtures("retry_settings")
def test_backoff_huge_attempt_stays_capped() -> None:
    assert 30.0 <= deliver.backoff(2000, None) <= 60.0


# --------------------------------------------------------------------------------------
# partition_for
# --------------------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=60), st.integers(min_value=1, max_value=256))
def test_partition_for_matches_aiokafka_default_partitioner(key: str, n: int) -> None:
    parts = list(range(n))
    expected = DefaultPartitioner()(key.encode("utf-8"), parts, parts)
    assert partition_for(key, n) == expected


# Java client test vectors (Kafka UtilsTest.testMurmur2): signed 32-bit murmur2 values.
KAFKA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize("key", sorted(KAFKA_MURMUR2))
@pytest.mark.parametrize("n", [1, 3, 8, 12, 1024])
def test_partition_for_matches_java_client(key: str, n: int) -> None:
    # Utils.toPositive(murmur2(key)) % numPartitions
    assert partition_for(key, n) == (KAFKA_MURMUR2[key] & 0x7FFFFFFF) % n


@pytest.mark.parametrize("key", sorted(KAFKA_MURMUR2))
def test_murmur2_matches_java_client(key: str) -> None:
    from notifyd.stream.partitioner import murmur2

    assert murmur2(key.encode()) == KAFKA_MURMUR2[key] & 0xFFFFFFFF


async def test_partition_for_defaults_to_settings() -> None:
    keys = [f"user-{i}" for i in range(200)]
    for n in (3, 8):
        build_app(topic_partitions=n)
        parts = list(range(n))
        for k in keys:
            assert partition_for(k) == DefaultPartitioner()(k.encode(), parts, parts)
        assert {partition_for(k) for k in keys} == set(parts)


# --------------------------------------------------------------------------------------
# Inbox through the real agents (Faust test context)
# --------------------------------------------------------------------------------------

_ids = itertools.count()


def new_user() -> str:
    # Tables are process-wide; a fresh user per test keeps them independent.
    return f"test-user-{uuid.uuid4().hex[:8]}-{next(_ids)}"


def delivery(user: str, nid: str, **kw: Any) -> Delivery:
    return Delivery(
        notification_id=nid,
        event_id=f"ev-{nid}",
        user_id=user,
        channel="inapp",
        title=kw.pop("title", f"title {nid}"),
        body="body",
        **kw,
    )


@pytest.fixture
def statuses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[dict[str, Any]]]]:
    """Status updates the channel agent publishes, kept instead of produced to Kafka."""
    return capture_statuses(monkeypatch)


class InappDriver:
    def __init__(self, agent: Any, statuses: list[tuple[str, list[dict[str, Any]]]]) -> None:
        self.agent = agent
        self.statuses = statuses

    async def deliver(self, d: Delivery) -> None:
        n = len(self.statuses)
        await self.agent.put(d.dumps(), key=d.user_id.encode())
        # Deliveries run concurrently: wait for this one's own status update.
        await until(
            lambda: any(nid == d.notification_id for nid, _ in self.statuses[n:])
        )


class ControlDriver:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    async def op(self, user: str, action: str, ids: list[str], **kw: Any) -> None:
        msg = {"op": "inbox", "user_id": user, "action": action, "ids": ids, **kw}
        await self.agent.put(orjson.dumps(msg), key=user.encode())
        await self.flush()

    async def flush(self) -> None:
        # The agent takes one record at a time, so once it has taken this harmless
        # record every earlier one was fully handled.
        noop = {"op": "unschedule", "id": "no-such-entry", "due": 0}
        await self.agent.put(orjson.dumps(noop), key=b"flush")
        await self.agent.put(orjson.dumps(noop), key=b"flush")


@pytest.fixture
async def inapp(
    runtime: Runtime, statuses: list[tuple[str, list[dict[str, Any]]]]
) -> AsyncIterator[InappDriver]:
    async with app_agent("agent.inapp", runtime).test_context() as tc:
        yield InappDriver(tc, statuses)


@pytest.fixture
async def control(runtime: Runtime) -> AsyncIterator[ControlDriver]:
    async with app_agent("control", runtime).test_context() as tc:
        yield ControlDriver(tc)


def box(user: str) -> dict[str, Any]:
    value = inbox.get(user)
    assert value is not None
    return value


def ids(user: str) -> list[str]:
    return [it["id"] for it in box(user)["items"]]


async def test_table_write_outside_event_is_refused() -> None:
    # Why the agents are needed: Faust refuses table writes outside a stream event.
    with pytest.raises((RuntimeError, TypeError)):
        deliver_inapp(delivery(new_user(), "n-out"))


async def test_deliver_inapp_adds_newest_first(inapp: InappDriver) -> None:
    user = new_user()
    await inapp.deliver(delivery(user, "n1", data={"k": 1}, category="billing", priority="high"))
    await inapp.deliver(delivery(user, "n2"))
    b = box(user)
    assert ids(user) == ["n2", "n1"]
    assert b["unread"] == 2
    first = b["items"][1]
    assert first["title"] == "title n1" and first["body"] == "body"
    assert first["data"] == {"k": 1}
    assert (first["category"], first["priority"]) == ("billing", "high")
    assert first["read"] is False and first["archived"] is False
    # the channel agent recorded the send in the ledger and published "sent"
    assert ledger.get("n1:inapp")["s"] == "sent"
    nid, updates = inapp.statuses[-1]
    assert nid == "n2"
    assert updates[0]["status"] == "sent" and updates[0]["provider_id"] == "n2"


async def test_deliver_inapp_idempotent_by_notification_id(inapp: InappDriver) -> None:
    user = new_user()
    await inapp.deliver(delivery(user, "dup"))
    # same notification again on a new attempt (ledger says sent: agent skips it)
    await inapp.agent.put(delivery(user, "dup", attempt=2).dumps(), key=user.encode())
    await inapp.deliver(delivery(user, "other"))
    assert ids(user) == ["other", "dup"]
    assert box(user)["unread"] == 2


async def test_deliver_inapp_idempotent_without_ledger(
    inapp: InappDriver, control: ControlDriver
) -> None:
    # If the ledger entry is gone (expired, or lost between the inbox write and the
    # ledger write), the provider runs again: the inbox must still hold one copy.
    user = new_user()
    await inapp.deliver(delivery(user, "x1", title="first"))
    await inapp.deliver(delivery(user, "x2"))
    assert ledger.get("x1:inapp") is not None
    await control.agent.put(
        orjson.dumps({"op": "expire", "table": "ledger", "keys": ["x1:inapp"]}), key=b"x"
    )
    await control.flush()
    assert ledger.get("x1:inapp") is None
    await inapp.deliver(delivery(user, "x1", title="second", attempt=2))
    nid, updates = inapp.statuses[-1]
    assert nid == "x1" and updates[0]["status"] == "sent"  # provider ran again
    assert ids(user) == ["x2", "x1"]
    assert box(user)["items"][1]["title"] == "first"
    assert box(user)["unread"] == 2


async def test_inbox_bounded(statuses: list[tuple[str, list[dict[str, Any]]]]) -> None:
    rt = build_app(inbox_max_items=3)
    user = new_user()
    async with app_agent("agent.inapp", rt).test_context() as tc:
        inapp = InappDriver(tc, statuses)
        for i in range(5):
            await inapp.deliver(delivery(user, f"b{i}"))
    assert ids(user) == ["b4", "b3", "b2"]
    assert box(user)["unread"] == 3


async def test_inbox_ops_update_unread(inapp: InappDriver, control: ControlDriver) -> None:
    user = new_user()
    for i in range(4):
        await inapp.deliver(delivery(user, f"m{i}"))
    assert box(user)["unread"] == 4

    await control.op(user, "read", ["m0", "m1"])
    items = {it["id"]: it for it in box(user)["items"]}
    assert items["m0"]["read"] and items["m1"]["read"] and not items["m2"]["read"]
    assert box(user)["unread"] == 2

    await control.op(user, "unread", ["m1"])
    assert box(user)["unread"] == 3

    await control.op(user, "archive", ["m2"])
    items = {it["id"]: it for it in box(user)["items"]}
    assert items["m2"]["archived"] is True
    assert box(user)["unread"] == 2  # archived items are not unread

    await control.op(user, "unarchive", ["m2"])
    assert box(user)["unread"] == 3

    await control.op(user, "delete", ["m3", "no-such-id"])
    assert ids(user) == ["m2", "m1", "m0"]
    assert box(user)["unread"] == 2

    await control.op(user, "read", [], all=True)
    assert box(user)["unread"] == 0
    assert all(it["read"] for it in box(user)["items"])

    await control.op(user, "delete", ["m0", "m1", "m2"])
    assert box(user) == {"items": [], "unread": 0}


async def test_inbox_op_for_unknown_user_creates_nothing(control: ControlDriver) -> None:
    user = new_user()
    await control.op(user, "read", ["x"])
    assert inbox.get(user) is None


async def test_inbox_op_other_users_untouched(inapp: InappDriver, control: ControlDriver) -> None:
    a, b = new_user(), new_user()
    await inapp.deliver(delivery(a, "shared-id"))
    await inapp.deliver(delivery(b, "b-only"))
    await control.op(a, "read", ["shared-id", "b-only"], all=False)
    assert box(a)["unread"] == 0
    assert box(b)["unread"] == 1


async def test_apply_inbox_op_unknown_action_rejected(
    inapp: InappDriver, control: ControlDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq = DeadLetters().install(monkeypatch)
    user = new_user()
    await inapp.deliver(delivery(user, "k1"))
    await control.op(user, "explode", ["k1"])  # dead-lettered by the agent, must not apply
    assert dlq.reasons() == ["internal_error: KeyError: 'explode'"]
    assert box(user)["unread"] == 1
    assert box(user)["items"][0]["read"] is False
    # the control agent keeps running after the bad record
    await control.op(user, "read", ["k1"])
    assert box(user)["unread"] == 0


# --------------------------------------------------------------------------------------
# In-app written by the ingest agent itself (no notifyd.deliver.inapp round trip)
# --------------------------------------------------------------------------------------


async def test_ingest_writes_inbox_inline(
    runtime: Runtime,
    statuses: list[tuple[str, list[dict[str, Any]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routed: list[Any] = []

    async def no_hop(*a: Any, **kw: Any) -> None:
        routed.append((a, kw))

    monkeypatch.setattr(deliver_topics["inapp"], "send", no_hop)
    user = new_user()
    event = {
        "event_id": f"ev-{user}",
        "user_id": user,
        "title": "Hello",
        "body": "inline",
        "channels": ["inapp", "sms"],  # sms: no address, suppressed
    }
    async with app_agent("ingest", runtime).test_context() as tc:
        for _ in range(2):  # a replayed record must not add a second item
            await tc.put(
                orjson.dumps(event), key=user.encode(), partition=partition_for(user)
            )
            await until(lambda: inbox.get(user) is not None)
    assert routed == []
    assert [it["title"] for it in box(user)["items"]] == ["Hello"]
    assert box(user)["unread"] == 1
    nid, updates = statuses[0]
    by_channel = {u["channel"]: u for u in updates}
    assert by_channel["inapp"]["status"] == "sent"
    assert by_channel["inapp"]["provider_id"] == nid
    assert by_channel["sms"]["status"] == "suppressed"


# --------------------------------------------------------------------------------------
# Status fold in batches: one table write per notification, on the record's partition
# --------------------------------------------------------------------------------------


async def test_status_agent_folds_a_batch_with_one_write_per_notification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = build_app(status_batch_max=4, status_batch_wait_s=5.0)  # only a full batch flushes
    status = rt.tables.status
    writes: list[tuple[int | None, str]] = []

    def record(partition: int | None, key: Any, value: Any, *a: Any, **kw: Any) -> Any:
        writes.append((partition, key))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    monkeypatch.setattr(status, "send_changelog", record)
    # RocksDB reads only the current event's partition: each read must see its record's.

    reads: list[tuple[str, int]] = []
    real_get = status.get

    def get(key: str, default: Any = None) -> Any:
        ev = current_event()
        assert ev is not None
        reads.append((key, ev.message.partition))
        return real_get(key, default)

    monkeypatch.setattr(status, "get", get)
    a, b = f"n-a-{uuid.uuid4().hex[:6]}", f"n-b-{uuid.uuid4().hex[:6]}"
    records = [
        (a, 2, {"updates": [upd("webhook", "queued", 1.0)], "content": {"title": "T"}}),
        (b, 5, {"updates": [upd("email", "queued", 1.0)]}),
        (a, 2, {"updates": [upd("webhook", "sent", 2.0, attempt=1)]}),
        (a, 2, {"updates": [upd("inapp", "sent", 3.0, attempt=1)]}),
    ]
    async with app_agent("status", rt).test_context() as tc:
        for nid, partition, body in records:
            msg = orjson.dumps({"notification_id": nid, **body})
            await tc.put(msg, key=nid.encode(), partition=partition)
        await until(lambda: len(writes) == 2)
    assert sorted(writes) == [(2, a), (5, b)]
    assert sorted(set(reads)) == sorted([(a, 2), (b, 5)])
    doc = real_get(a)
    assert doc is not None and doc["title"] == "T" and doc["p"] == 2
    assert {ch: e["status"] for ch, e in doc["channels"].items()} == {
        "webhook": "sent",
        "inapp": "sent",
    }
    assert [h["status"] for h in doc["channels"]["webhook"]["history"]] == ["queued", "sent"]


async def test_a_due_delivery_is_queued_then_unscheduled(
    statuses: list[tuple[str, list[dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``release``: the delivery to its channel topic, its ``queued`` update (with the
    attempt it is at), then the control message that drops the row, in that order."""
    produced: list[tuple[str, bytes, Any]] = []

    def recorder(name: str) -> Any:
        async def send(*, key: bytes, value: bytes, **kw: Any) -> None:
            produced.append((name, key, orjson.loads(value)))

        return send

    monkeypatch.setattr(deliver_topics["email"], "send", recorder("email"))
    monkeypatch.setattr(control_topic, "send", recorder("control"))
    monkeypatch.setattr(clock, "now", lambda: 1234.5)
    user = new_user()
    d = Delivery(notification_id="n-due", event_id="e-due", user_id=user, channel="email",
                 title="t", body="b", address="a@example.org", attempt=3).to_dict()
    await schedule.release("n-due:email", {"due": 1200.0, "p": 0, "delivery": d})
    assert produced == [
        ("email", user.encode(), d),
        ("control", user.encode(), {"op": "unschedule", "id": "n-due:email", "due": 1200.0}),
    ]
    assert statuses == [
        ("n-due", [{"channel": "email", "status": "queued", "attempt": 3, "ts": 1234.5,
                    "delivery": d}]),
    ]


def test_status_update_holds_only_the_fields_given() -> None:
    """Absent and ``None`` differ in the fold: an update without a reason keeps the
    channel's previous one, so the builder never adds a field it was not given."""
    assert status_update("sms", "queued", 2.0) == {"channel": "sms", "status": "queued", "ts": 2.0}
    assert status_update("sms", "suppressed", 2.0, reason=None) == {
        "channel": "sms", "status": "suppressed", "ts": 2.0, "reason": None,
    }
    d = delivery(new_user(), "n-sent")
    assert "provider" not in sent_update(d, None, d.accepted_at + 1.0)
    assert sent_update(d, None, d.accepted_at + 1.0, "inapp") == {
        "channel": "inapp", "status": "sent", "ts": d.accepted_at + 1.0, "attempt": d.attempt,
        "provider_id": None, "latency_ms": 1000.0, "provider": "inapp",
    }


async def test_the_reconciler_requeues_only_overdue_pending_deliveries_of_its_partitions(
    statuses: list[tuple[str, list[dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of this worker's partitions, channels still pending (with the delivery they wait
    for) longer than ``requeue_after_s`` are produced again, each with a queued update."""
    build_app(requeue_after_s=60.0)
    produced: list[tuple[bytes, Any]] = []

    async def send(*, key: bytes, value: bytes, **kw: Any) -> None:
        produced.append((key, orjson.loads(value)))

    monkeypatch.setattr(deliver_topics["sms"], "send", send)
    user = new_user()
    d = Delivery(notification_id="n-late", event_id="e-late", user_id=user, channel="sms",
                 title="t", body="b", address="+15550001111", attempt=2).to_dict()
    docs = {
        "n-late": {"p": 97, "channels": {"sms": {"status": "retrying", "ts": 100.0,
                                                "deliver_at": 130.0, "delivery": d}}},
        "n-recent": {"p": 97, "channels": {"sms": {"status": "queued", "ts": 150.0,
                                                  "delivery": d}}},
        "n-done": {"p": 97, "channels": {"sms": {"status": "sent", "ts": 10.0}}},
        "n-elsewhere": {"p": 98, "channels": {"sms": {"status": "queued", "ts": 10.0,
                                                     "delivery": d}}},
    }
    status.data.update(docs)
    try:
        # Partition 97: no other test has documents there.
        assert await queueing.requeue_overdue(frozenset({97}), 200.0) == 1
    finally:
        for nid in docs:
            status.data.pop(nid, None)
    assert produced == [(user.encode(), d)]
    assert statuses == [("n-late", [{
        "channel": "sms", "status": "queued", "ts": 200.0, "delivery": d, "attempt": 2,
        "reason": "requeued: no outcome 60s after it was due",
    }])]



async def test_inbox_listeners_get_each_new_item_once(
    inapp: InappDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish hook the web view's live streams register with (no core -> web
    import): every new item, once per listener however often it registered, none for a
    delivery already in the inbox, none after the listener is removed."""
    monkeypatch.setattr(inapp_handlers, "_listeners", [])
    got: list[tuple[str, str, int]] = []

    def listener(user_id: str, item: dict[str, Any], unread: int) -> None:
        got.append((user_id, item["id"], unread))

    user = new_user()
    remove = inapp_handlers.on_new_inbox_item(listener)
    assert inapp_handlers.on_new_inbox_item(listener) is not None
    await inapp.deliver(delivery(user, "n-1"))
    await inapp.deliver(delivery(user, "n-1"))  # already there: nothing new
    await inapp.deliver(delivery(user, "n-2"))
    remove()
    await inapp.deliver(delivery(user, "n-3"))
    assert got == [(user, "n-1", 1), (user, "n-2", 2)]
    assert ids(user) == ["n-3", "n-2", "n-1"]


def test_the_inapp_channel_gets_the_inbox_provider_of_the_core() -> None:
    """The in-app provider is part of the streaming core (it writes a table); the
    provider registry, which the core imports, builds only configurable providers."""
    provider = deliver.build_provider("inapp", settings)
    assert isinstance(provider, inapp_handlers.InboxProvider) and provider.name == "inapp"
    assert deliver.build_provider("webhook", settings).channel == "webhook"
    with pytest.raises(ValueError):
        registry.build_provider("inapp", settings)
