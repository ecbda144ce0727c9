"""Issue 13 on Apache Kafka: no event is lost to an exception (a template that fails
while rendering ends in the DLQ), idempotency is scoped to (user_id, event_id), and a
scheduling field (``send_at``, ``delay_s``) is refused instead of sent at once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from notifyd.domain.templating import DEFAULT_DIR
from notifyd.model.records import notification_id_for
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.integration.test_pipeline import contact, sms_to, wait_states
from tests.support.harness import Sinks, Stack, header, http_json, new_id, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def dead_letter_of(stack: Stack, event_id: str) -> Any:
    """The events-DLQ record holding ``event_id`` (waits for it)."""
    marker = event_id.encode()
    recs = await stack.read_topic(
        stack.names.events_dlq, lambda rs: any(marker in (r.value or b"") for r in rs)
    )
    found = [r for r in recs if marker in (r.value or b"")]
    assert found, f"no dead letter for {event_id}"
    return found[0]


# --------------------------------------------------------------------------------------
# 1. A template that raises while rendering (TypeError inside Jinja) is a dead letter
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tpl_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A worker whose templates are the shipped ones plus an operator's ``counter``."""
    templates = tmp_path_factory.mktemp("templates")
    for path in DEFAULT_DIR.glob("*.json"):
        shutil.copy(path, templates / path.name)
    (templates / "counter.json").write_bytes(
        orjson.dumps({"locales": {"en": {"title": "{{ n + 1 }}", "body": "{{ n }} new"}}})
    )
    st = start_stack(
        kafka.url,
        kafka.bootstrap,
        tmp_path_factory.mktemp("tpl"),
        "tpl",
        sinks,
        {"NOTIFYD_TEMPLATES_DIR": str(templates)},
        redis_url=redis.url,
    )
    yield st
    for w in st.workers:
        w.stop()


async def test_template_that_raises_while_rendering_ends_in_the_dlq(tpl_stack: Stack) -> None:
    st = tpl_stack
    user = new_id("u-tpl-err")
    c = contact(st.sinks, user)
    await st.set_preferences(user, c)
    bad, good = new_id("evt-bad"), new_id("evt-good")
    bad_event = {"event_id": bad, "user_id": user, "template": "counter",
                 "data": {"n": "x"}, "channels": ["sms"]}
    await st.send_events(bad_event)
    await st.send_events({**bad_event, "event_id": good, "data": {"n": 41}})

    rec = await dead_letter_of(st, bad)
    reason = header(rec, "notifyd-reason")
    assert reason is not None and reason.startswith("template_error: counter: TypeError: "), reason
    assert rec.value == orjson.dumps(bad_event)  # the original bytes, for a re-drive
    assert rec.key == user.encode()
    assert header(rec, "notifyd-source-topic") == st.names.events
    # The event after it is delivered; the bad one was neither sent nor given a status.
    await wait_states(st, notification_id_for(user, good), {"sms": "sent"})
    assert [d["payload"]["body"] for d in sms_to(st, c["phone"])] == ["41 new"]
    assert st.worker.table("status", notification_id_for(user, bad)) is None
    assert st.worker.alive()


# --------------------------------------------------------------------------------------
# 2. The same event_id for two users is two notifications
# --------------------------------------------------------------------------------------


async def test_same_event_id_for_two_users_is_delivered_to_both(stack: Stack) -> None:
    buyer, seller = new_id("u-buyer"), new_id("u-seller")
    cb, cs = contact(stack.sinks, buyer), contact(stack.sinks, seller)
    await stack.set_preferences(buyer, cb)
    await stack.set_preferences(seller, cs)
    eid = new_id("order-42-shipped")
    await stack.send_events(
        {"event_id": eid, "user_id": buyer, "title": "Shipped", "body": "to you",
         "channels": ["sms"]},
        {"event_id": eid, "user_id": seller, "title": "Shipped", "body": "by you",
         "channels": ["sms"]},
    )
    # Both get their SMS: the seller's is not dropped as the buyer's duplicate.
    await wait_for(lambda: sms_to(stack, cb["phone"]) and sms_to(stack, cs["phone"]),
                   what="an SMS to the buyer and one to the seller")
    nb, ns = notification_id_for(buyer, eid), notification_id_for(seller, eid)
    assert nb != ns
    await wait_states(stack, nb, {"sms": "sent"})
    await wait_states(stack, ns, {"sms": "sent"})
    assert stack.worker.table("status", nb)["user_id"] == buyer
    assert stack.worker.table("status", ns)["user_id"] == seller

    # The same (user, event_id) re-sent is still a duplicate, for each of them.
    await stack.send_events(
        {"event_id": eid, "user_id": seller, "title": "Shipped", "body": "again",
         "channels": ["sms"]},
        {"event_id": eid, "user_id": buyer, "title": "Shipped", "body": "again",
         "channels": ["sms"]},
    )
    marker = new_id("evt-marker")  # after the re-sends in the seller's partition
    await stack.send_events({"event_id": marker, "user_id": seller, "title": "m", "body": "m",
                             "channels": ["sms"]})
    await wait_states(stack, notification_id_for(seller, marker), {"sms": "sent"})
    buyer_marker = new_id("evt-marker")
    await stack.send_events({"event_id": buyer_marker, "user_id": buyer, "title": "m",
                             "body": "m", "channels": ["sms"]})
    await wait_states(stack, notification_id_for(buyer, buyer_marker), {"sms": "sent"})
    assert sorted(d["payload"]["body"] for d in sms_to(stack, cb["phone"])) == ["m", "to you"]
    assert sorted(d["payload"]["body"] for d in sms_to(stack, cs["phone"])) == ["by you", "m"]


# --------------------------------------------------------------------------------------
# 5. send_at / delay_s: bad or absurd values are dead-lettered, never sent now
# --------------------------------------------------------------------------------------


async def test_bad_scheduling_fields_are_dead_lettered_not_sent_now(stack: Stack) -> None:
    user = new_id("u-sched")
    c = contact(stack.sinks, user)
    await stack.set_preferences(user, c)
    cases = {
        new_id("evt-both"): ({"send_at": "2031-01-01T09:00:00+01:00", "delay_s": 5},
                             "ambiguous_schedule: give send_at or delay_s, not both"),
        new_id("evt-naive"): ({"send_at": "2031-01-01T09:00:00"},
                              "invalid_send_at: '2031-01-01T09:00:00' is not RFC 3339 with "
                              "an offset"),
        new_id("evt-far"): ({"delay_s": 400 * 86400},
                            "schedule_too_far: more than 365 days ahead "
                            "(NOTIFYD_MAX_SCHEDULE_DAYS)"),
        new_id("evt-neg"): ({"delay_s": -3},
                            "invalid_delay_s: delay_s must be a finite number >= 0"),
    }
    await stack.send_events(*(
        {"event_id": eid, "user_id": user, "title": "t", "body": eid, "channels": ["sms"],
         **fields}
        for eid, (fields, _) in cases.items()
    ))
    for eid, (_, reason) in cases.items():
        rec = await dead_letter_of(stack, eid)
        assert header(rec, "notifyd-reason") == reason
    # Processed in order after them: once the marker is sent, nothing else was.
    marker = new_id("evt-marker")
    await stack.send_events({"event_id": marker, "user_id": user, "title": "m", "body": "now",
                             "channels": ["sms"]})
    await wait_states(stack, notification_id_for(user, marker), {"sms": "sent"})
    assert [d["payload"]["body"] for d in sms_to(stack, c["phone"])] == ["now"]
    for eid in cases:
        assert stack.worker.table("status", notification_id_for(user, eid)) is None

    # The HTTP API refuses them the same way, with a JSON {code, detail} ...
    for fields, reason in cases.values():
        code, body = http_json(
            "POST", f"{stack.worker.url}/api/v1/notifications",
            {"user_id": user, "title": "t", "body": "b", "channels": ["sms"], **fields},
            headers=stack.worker.op_headers,
        )
        # 400: the document refuses it; 422: it matches the document and a rule refuses
        # it (a date too far ahead: errors.Unprocessable).
        want_status = 422 if reason.startswith("schedule_too_far") else 400
        assert code == want_status, (code, body)
        want_code, _, detail = reason.partition(": ")
        assert body == {"code": want_code, "detail": detail}
    # ... and accepts a valid one: scheduled, with its time, not sent.
    code, body = http_json(
        "POST", f"{stack.worker.url}/api/v1/notifications",
        {"user_id": user, "title": "t", "body": "later", "channels": ["sms"], "delay_s": 3600},
        headers=stack.worker.op_headers,
    )
    assert code == 202, (code, body)
    chans = await wait_states(stack, body["notification_id"], {"sms": "scheduled"})
    assert chans["sms"]["deliver_at"] > chans["sms"]["ts"] + 3500
