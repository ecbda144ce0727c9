"""Schema evolution: every record carries ``schema_version``; readers accept the records
written before the field existed (version 1, no field), byte for byte as that code wrote
them, and refuse a version from the future with a stable reason."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from notifyd.errors import InvalidEvent
from notifyd.model.control import check_control, check_preferences_command
from notifyd.model.delivery import Delivery
from notifyd.model.event import CancelRequest, Event, parse_event, parse_input
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.preferences import (
    InvalidPreferences,
    Preferences,
    merge_preferences,
    validate_preferences,
)
from notifyd.model.rows import (
    EXPIRY_STAMPS,
    CancelRow,
    DeliveryTimer,
    DigestTimer,
    EventTimer,
    FallbackTimer,
    LedgerRow,
    SeenRow,
    check_scheduled_row,
)
from notifyd.model.status import StatusRecord, check_status_document
from notifyd.stream.handlers.status import fold_status

#: ``Event.to_dict()`` of the code before the models (b1a3908), e.g. the ``event`` of a
#: scheduled row or a fallback step: no ``schema_version``.
EVENT_V1 = (
    b'{"callback_url":"https://example.com/cb","event_id":"order-42","user_id":"u-1",'
    b'"category":"orders","priority":"high","title":"Shipped","data":{"n":1},'
    b'"channels":["email","inapp"],"created_at":"2024-05-01T12:00:00+00:00",'
    b'"send_at":"2024-05-02T08:00:00+00:00","digest":{"window":"1h","category":"orders"}}'
)
#: What ``POST /api/v1/notifications`` produced (the body with the ids filled in).
API_EVENT_V1 = b'{"title":"t","channels":["push"],"user_id":"u-2","event_id":"e-9"}'
CANCEL_V1 = b'{"op":"cancel","user_id":"u-1","event_id":"order-42"}'


def test_event_v1_as_written_before_the_models() -> None:
    ev = parse_event(EVENT_V1)
    assert (ev.event_id, ev.user_id, ev.category, ev.priority) == ("order-42", "u-1",
                                                                   "orders", "high")
    assert ev.channels == ("email", "inapp") and ev.data == {"n": 1}
    assert ev.digest == {"window": "1h", "category": "orders"}
    assert ev.extra == {"callback_url": "https://example.com/cb"}
    assert parse_event(API_EVENT_V1).channels == ("push",)


def test_event_written_now_carries_the_version_and_reads_back() -> None:
    ev = parse_event(EVENT_V1)
    out = ev.to_dict()
    assert out["schema_version"] == SCHEMA_VERSION
    again = parse_event(orjson.dumps(out))
    assert again == ev
    assert "schema_version" not in again.extra


def test_cancel_v1_and_v2() -> None:
    assert parse_input(CANCEL_V1) == CancelRequest(user_id="u-1", event_id="order-42")
    v2 = orjson.dumps({**orjson.loads(CANCEL_V1), "schema_version": SCHEMA_VERSION})
    assert parse_input(v2) == CancelRequest(user_id="u-1", event_id="order-42")


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "2", None])
def test_unknown_version_is_refused_or_defaulted(version: object) -> None:
    raw = orjson.dumps({**orjson.loads(API_EVENT_V1), "schema_version": version})
    if version is None:  # null: as absent
        assert isinstance(parse_event(raw), Event)
        return
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.reason.startswith("unsupported_version: ")


# --- preferences ------------------------------------------------------------------------

#: A ``preferences`` row as ``merge_preferences`` wrote it before the models: no version.
PREFS_ROW_V1: dict[str, object] = {
    "user_id": "u-1", "email": "ann@example.com", "phone": "+15551234567",
    "push_tokens": ["tok"], "webhook_url": None, "apprise_urls": [],
    "channels": {"sms": False}, "opt_out": {"marketing": ["email"]},
    "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
    "locale": "fr", "updated_at": 1_700_000_000.0, "timezone": None,
    "digests": [{"window": "daily@09:00", "category": "news"}],
    "fallback": {"*": [{"channel": "inapp", "after_s": 0},
                       {"channel": "email", "after_s": 600, "unless": "read"}]},
}
#: A ``notifyd.preferences`` command as the API wrote it before the models.
PREFS_COMMAND_V1 = (
    b'{"op":"patch","user_id":"u-1","fields":{"email":"new@example.org",'
    b'"digests":[{"window":"1h","category":"orders"}]},"request_id":"r-1"}'
)


def test_preferences_row_v1_reads_and_can_be_put_back() -> None:
    prefs = Preferences.from_dict(PREFS_ROW_V1)
    assert prefs.quiet_hours is not None and prefs.quiet_hours.timezone == "Europe/Paris"
    assert prefs.schema_version is None  # version 1
    # A client that GETs its document and PUTs it back (user_id, updated_at included).
    fields = validate_preferences("u-1", PREFS_ROW_V1)
    assert fields["fallback"] == PREFS_ROW_V1["fallback"]
    assert fields["digests"] == PREFS_ROW_V1["digests"]


def test_preferences_command_v1_is_applied() -> None:
    msg = orjson.loads(PREFS_COMMAND_V1)
    fields = validate_preferences(msg["user_id"], msg["fields"], partial=True)
    row = merge_preferences(PREFS_ROW_V1, "u-1", fields, 1_700_000_001.0)
    assert row["email"] == "new@example.org" and row["phone"] == "+15551234567"
    assert row["schema_version"] == SCHEMA_VERSION
    # the row written now reads back, and is a valid body again
    assert Preferences.from_dict(row).email == "new@example.org"
    validate_preferences("u-1", row)


def test_preferences_from_the_future_are_refused() -> None:
    with pytest.raises(InvalidPreferences, match="schema_version"):
        validate_preferences("u-1", {"schema_version": SCHEMA_VERSION + 1})


# --- deliveries -------------------------------------------------------------------------

#: ``Delivery.dumps()`` before the models (a dataclass's to_dict): no version.
DELIVERY_V1 = (
    b'{"notification_id":"n-1","event_id":"e-1","user_id":"u-1","channel":"email",'
    b'"title":"T","body":"B","category":"orders","priority":"high",'
    b'"address":"ann@example.com","tokens":[],"data":{"k":1},"locale":"fr","attempt":2,'
    b'"accepted_at":1700000000.5,"produced_at":null,"redrive":false,"html":"<p>B</p>"}'
)
#: From before HTML e-mail (no ``html``), as still found in old ``scheduled`` rows.
DELIVERY_V1_NO_HTML = (
    b'{"notification_id":"n-2","event_id":"e-2","user_id":"u-1","channel":"sms",'
    b'"title":"T","body":"B","category":"general","priority":"normal","address":"+15551234567",'
    b'"tokens":[],"data":{},"locale":null,"attempt":1,"accepted_at":1.0,"produced_at":0.5,'
    b'"redrive":false}'
)


@pytest.mark.parametrize("raw", [DELIVERY_V1, DELIVERY_V1_NO_HTML])
def test_delivery_v1_reads(raw: bytes) -> None:
    d = Delivery.decode(raw)
    assert d == Delivery.from_dict(orjson.loads(raw))
    old = orjson.loads(raw)
    assert {k: getattr(d, k) for k in old} == old
    assert d.html == old.get("html")
    # written now: the same fields plus the version, and it reads back equal
    written = orjson.loads(d.dumps())
    assert written == {**old, "html": old.get("html"), "schema_version": SCHEMA_VERSION}
    assert Delivery.decode(d.dumps()) == d


def test_delivery_malformed_keeps_its_error_types() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        Delivery.decode(b"{1: 2}")
    with pytest.raises(ValueError, match="notification_id"):
        Delivery.decode(b'{"event_id": "e"}')


# --- status -----------------------------------------------------------------------------

#: ``notifyd.status`` records as ``publish_status`` wrote them before the models.
STATUS_V1 = [
    {"notification_id": "n-1",
     "updates": [{"channel": "email", "status": "queued", "ts": 10.0,
                  "delivery": orjson.loads(DELIVERY_V1)},
                 {"channel": "inapp", "status": "sent", "attempt": 1, "ts": 10.0,
                  "provider_id": "n-1", "latency_ms": 0.4, "provider": "inapp"},
                 {"channel": "sms", "status": "suppressed", "reason": "opted out", "ts": 10.0},
                 {"channel": "push", "status": "pending", "deliver_at": 70.0, "ts": 10.0,
                  "reason": "fallback: after 60s unless read"}],
     "content": {"event_id": "e-1", "user_id": "u-1", "category": "orders",
                 "priority": "high", "title": "T", "body": "B", "template": None,
                 "created_at": None, "accepted_at": 10.0, "callback_url": "https://x.example/cb",
                 "fallback": [{"channel": "inapp", "after_s": 0},
                              {"channel": "push", "after_s": 60, "unless": "read"}]}},
    {"notification_id": "n-1",
     "updates": [{"channel": "email", "status": "retrying", "attempt": 1, "ts": 11.0,
                  "reason": "timeout", "deliver_at": 13.0,
                  "delivery": {**orjson.loads(DELIVERY_V1), "attempt": 2}}]},
    {"notification_id": "n-1", "updates": [],
     "callbacks": [{"key": "n-1:inapp", "channel": "inapp", "state": "sent", "ts": 12.0,
                    "result": "delivered", "attempts": 1}]},
    {"notification_id": "n-1",
     "updates": [{"channel": "push", "status": "cancelled", "reason": "cancelled", "ts": 14.0,
                  "force": True}],
     "cancel": {"at": 14.0}},
]


def test_status_records_v1_convert_and_fold_into_a_valid_document() -> None:
    doc = None
    for record in STATUS_V1:
        msgspec.convert(record, StatusRecord)
        doc = fold_status(doc, record, 3)
    assert doc is not None
    checked = check_status_document(doc)
    assert checked.channels["inapp"].status == "sent"
    email = checked.channels["email"]  # retrying, then cancelled by the cancel
    assert [h.status for h in email.history] == ["queued", "retrying", "cancelled"]
    assert checked.callbacks is not msgspec.UNSET and "n-1:inapp" in checked.callbacks
    assert doc["schema_version"] == SCHEMA_VERSION  # written now
    # a row folded before the version existed reads too
    old_row = {k: v for k, v in doc.items() if k != "schema_version"}
    assert check_status_document(old_row).schema_version is msgspec.UNSET


# --- table rows and commands ------------------------------------------------------------

#: Rows as the code before the models wrote them (no version anywhere).
SEEN_V1 = [1700000000.0, 3, "notifyd.events", "u-1"]
SEEN_V1_DIGESTED = [*SEEN_V1, "digest:5:u-1:news|1h|1700000000"]
SEEN_LEGACY = [1600000000.0, 3, "notifyd.events"]  # before ids were scoped to the user
CANCEL_ROW_V1 = [1700000000.0, 3, "u-1"]
LEDGER_V1 = {"s": "sent", "ts": 1700000000.0, "p": 3}
SCHEDULED_V1: list[dict[str, object]] = [
    {"due": 1700000100.0, "p": 3, "delivery": orjson.loads(DELIVERY_V1),
     "reason": "quiet hours"},
    {"due": 1700000600.0, "p": 3, "reason": "fallback",
     "fallback": {"step": 1, "steps": [{"channel": "inapp", "after_s": 0},
                                       {"channel": "email", "after_s": 600, "unless": "read"}],
                  "event": {"event_id": "e-1", "user_id": "u-1", "title": "T"},
                  "user_id": "u-1", "nid": "n-1", "accepted_at": 1700000000.0}},
    {"kind": "event", "due": 1700003600.0, "p": 3, "user_id": "u-1", "event_id": "e-2",
     "nid": "n-2", "channels": ["email"], "event": '{"event_id":"e-2"}',
     "scheduled_at": 1700000000.0, "title": "Later"},
    {"kind": "digest", "due": 1700003600.0, "p": 3, "user_id": "u-1", "category": "news",
     "window": "1h", "start": 1700000000.0, "event_id": "digest-news", "digest_id": "n-3",
     "items": [{"id": "n-4", "event_id": "e-4", "title": "A", "channels": None,
                "ts": 1700000001.0}], "count": 1},
]
CONTROL_V1: list[dict[str, object]] = [
    {"op": "unschedule", "id": "n-1:email", "due": 1700000100.0},
    {"op": "expire", "table": "seen", "keys": ["5:u-1:e-1"]},
    {"op": "fallback_step", "id": "fallback:n-1:email", "due": 1700000600.0},
    {"op": "inbox", "user_id": "u-1", "action": "read", "ids": ["n-1"], "request_id": "r"},
    {"op": "inbox", "user_id": "u-1", "action": "read", "all": True},
]
PREFERENCES_COMMANDS_V1: list[dict[str, object]] = [
    orjson.loads(PREFS_COMMAND_V1),
    {"op": "put", "user_id": "u-1", "fields": {"email": "a@b.co"}, "request_id": "r-2"},
    {"op": "delete", "user_id": "u-1", "request_id": "r-3"},
    {"op": "opt_out", "user_id": "u-1", "category": "news", "channel": "email"},
]


def test_rows_v1_convert() -> None:
    for row in (SEEN_V1, SEEN_V1_DIGESTED, SEEN_LEGACY):
        seen = msgspec.convert(row, SeenRow)
        assert (seen.first_seen, seen.partition) == EXPIRY_STAMPS["seen"](row)
    assert msgspec.convert(SEEN_LEGACY, SeenRow).user_id is msgspec.UNSET
    assert msgspec.convert(CANCEL_ROW_V1, CancelRow).user_id == "u-1"
    assert EXPIRY_STAMPS["cancels"](CANCEL_ROW_V1) == (1700000000.0, 3)
    assert msgspec.convert(LEDGER_V1, LedgerRow).s == "sent"
    assert EXPIRY_STAMPS["ledger"](LEDGER_V1) == (1700000000.0, 3)
    kinds = [type(check_scheduled_row(row)) for row in SCHEDULED_V1]
    assert kinds == [DeliveryTimer, FallbackTimer, EventTimer, DigestTimer]


def test_commands_v1_convert() -> None:
    assert [type(check_control(m)).__name__ for m in CONTROL_V1] == [
        "Unschedule", "Expire", "FallbackStepDue", "InboxOp", "InboxOp"]
    assert [type(check_preferences_command(m)).__name__ for m in PREFERENCES_COMMANDS_V1] == [
        "PreferencesPatch", "PreferencesWrite", "PreferencesDelete", "OptOut"]
    with pytest.raises(msgspec.ValidationError):
        check_control({"op": "reboot"})


def test_rows_and_commands_written_now_carry_the_version() -> None:
    v = {"schema_version": SCHEMA_VERSION}
    assert msgspec.convert({**LEDGER_V1, **v}, LedgerRow).schema_version == SCHEMA_VERSION
    for row in SCHEDULED_V1:
        assert check_scheduled_row({**row, **v}).schema_version == SCHEMA_VERSION
    for msg in CONTROL_V1:
        assert check_control({**msg, **v}).schema_version == SCHEMA_VERSION
    for msg in PREFERENCES_COMMANDS_V1:
        assert check_preferences_command({**msg, **v}).schema_version == SCHEMA_VERSION
    with pytest.raises(msgspec.ValidationError):
        check_control({**CONTROL_V1[0], "schema_version": SCHEMA_VERSION + 1})


def test_an_integral_float_schema_version_is_the_integer_json_schema_takes_it_for() -> None:
    """JSON Schema's ``integer`` admits ``1.0``; so do the readers (a float like 1.5 not)."""
    from notifyd.errors import InvalidEvent
    from notifyd.model.records import InvalidPreferences, parse_event, validate_preferences

    ev = parse_event(b'{"event_id":"e","user_id":"u","title":"t","schema_version":1.0}')
    assert ev.event_id == "e"
    validate_preferences("u", {"schema_version": 2.0}, partial=True)
    with pytest.raises(InvalidEvent, match="unsupported_version"):
        parse_event(b'{"event_id":"e","user_id":"u","title":"t","schema_version":1.5}')
    with pytest.raises(InvalidPreferences):
        validate_preferences("u", {"schema_version": 1.5}, partial=True)
