"""Wire records: event parsing, preferences validation, deliveries, notification ids."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifyd.config import CHANNELS
from notifyd.errors import InvalidEvent
from notifyd.model.records import (
    MAX_DATA_BYTES,
    MAX_ID_LEN,
    PREFERENCE_FIELDS,
    Delivery,
    Event,
    InvalidPreferences,
    Preferences,
    idempotency_scope,
    legacy_notification_id_for,
    merge_preferences,
    notification_id_for,
    parse_event,
    split_scope,
    validate_preferences,
)

BASE: dict[str, Any] = {"event_id": "ev-1", "user_id": "user-1", "title": "Hello"}


def raw(**overrides: Any) -> bytes:
    doc = {**BASE, **overrides}
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


_DROP = object()


def code_of(exc: pytest.ExceptionInfo[InvalidEvent]) -> str:
    reason = exc.value.reason
    assert str(exc.value) == reason
    code, sep, detail = reason.partition(": ")
    assert sep, f"reason {reason!r} is not '<code>: <detail>'"
    assert detail.strip(), f"reason {reason!r} has no detail"
    return code


def reject(value: bytes | None, **kw: Any) -> str:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(value, **kw)
    return code_of(exc)


# --------------------------------------------------------------------------------------
# parse_event: happy path and defaults
# --------------------------------------------------------------------------------------


def test_minimal_event_gets_defaults() -> None:
    ev = parse_event(raw())
    assert isinstance(ev, Event)
    assert ev.event_id == "ev-1"
    assert ev.user_id == "user-1"
    assert ev.title == "Hello"
    assert ev.body is None and ev.template is None
    assert ev.category == "general"
    assert ev.priority == "normal"
    assert ev.channels is None
    assert ev.created_at is None
    assert ev.data == {}
    assert ev.extra == {}
    assert ev.notification_id == notification_id_for("user-1", "ev-1")


def test_null_optional_fields_mean_defaults() -> None:
    ev = parse_event(raw(category=None, priority=None, data=None, channels=None, created_at=None))
    assert ev.category == "general"
    assert ev.priority == "normal"
    assert ev.data == {}
    assert ev.channels is None
    assert ev.created_at is None


def test_full_event() -> None:
    ev = parse_event(
        raw(
            title=None,
            body="Body",
            template="welcome",
            category="billing.invoice:v2",
            priority="critical",
            data={"name": "Ann", "n": 3},
            channels=["sms", "email"],
            created_at="2024-05-01T12:00:00Z",
        )
    )
    assert ev.title is None
    assert ev.body == "Body"
    assert ev.template == "welcome"
    assert ev.category == "billing.invoice:v2"
    assert ev.priority == "critical"
    assert ev.data == {"name": "Ann", "n": 3}
    assert ev.channels == ("sms", "email")
    assert ev.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("priority", ["low", "normal", "high", "critical"])
def test_every_priority_accepted(priority: str) -> None:
    assert parse_event(raw(priority=priority)).priority == priority


def test_template_alone_is_content() -> None:
    ev = parse_event(raw(title=_DROP, template="welcome"))
    assert ev.template == "welcome" and ev.title is None


def test_body_alone_is_content() -> None:
    assert parse_event(raw(title=_DROP, body="only body")).body == "only body"


def test_unknown_fields_kept_in_extra_and_round_trip() -> None:
    ev = parse_event(raw(trace_id="abc", nested={"a": [1, 2]}, body="b"))
    assert ev.extra == {"trace_id": "abc", "nested": {"a": [1, 2]}}
    out = ev.to_dict()
    assert out["trace_id"] == "abc"
    assert out["nested"] == {"a": [1, 2]}
    # to_dict feeds parse_event back to an equal event
    again = parse_event(orjson.dumps(out))
    assert again == ev


def test_extra_cannot_override_known_fields_in_to_dict() -> None:
    ev = Event(event_id="e", user_id="u", title="t", extra={"user_id": "evil"})
    assert ev.to_dict()["user_id"] == "u"


def test_channels_deduplicated_in_order() -> None:
    ev = parse_event(raw(channels=["push", "email", "push", "email", "inapp"]))
    assert ev.channels == ("push", "email", "inapp")


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-01T22:04:05-05:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.250Z", datetime(2024, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)),
        (
            "2024-01-02T08:34:05+05:30",
            datetime(2024, 1, 2, 8, 34, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
    ],
)
def test_created_at_parsing(stamp: str, expected: datetime) -> None:
    ev = parse_event(raw(created_at=stamp))
    assert ev.created_at == pytest.approx(expected.timestamp())
    # serialised back as UTC RFC 3339 that parses to the same instant
    again = parse_event(orjson.dumps(ev.to_dict()))
    assert again.created_at == pytest.approx(ev.created_at)


def test_ids_at_max_length_accepted() -> None:
    ev = parse_event(raw(event_id="e" * MAX_ID_LEN, user_id="u" * MAX_ID_LEN))
    assert len(ev.event_id) == MAX_ID_LEN


# --------------------------------------------------------------------------------------
# parse_event: every rejection reason
# --------------------------------------------------------------------------------------


def test_tombstone() -> None:
    assert reject(None) == "empty"


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b"{'a': 1}", b'{"a":1,}', b"NaN"])
def test_not_json(value: bytes) -> None:
    assert reject(value) == "invalid_json"


@pytest.mark.parametrize("value", [b'{"event_id": "\xff\xfe"}', b"\xc3\x28", b'"\xed\xa0\x80"'])
def test_invalid_utf8(value: bytes) -> None:
    assert reject(value) == "invalid_utf8"


@pytest.mark.parametrize("value", [b"[]", b"[1,2]", b'"str"', b"42", b"null", b"true", b"1.5"])
def test_not_an_object(value: bytes) -> None:
    assert reject(value) == "not_an_object"


@pytest.mark.parametrize("name", ["event_id", "user_id"])
def test_missing_id(name: str) -> None:
    assert reject(raw(**{name: _DROP})) == "missing_field"
    assert reject(raw(**{name: None})) == "missing_field"


@pytest.mark.parametrize("name", ["event_id", "user_id"])
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_empty_id(name: str, value: str) -> None:
    assert reject(raw(**{name: value})) == "empty_field"


@pytest.mark.parametrize("name", ["event_id", "user_id"])
@pytest.mark.parametrize("value", [1, 1.5, True, ["a"], {"a": 1}])
def test_wrong_typed_id(name: str, value: Any) -> None:
    assert reject(raw(**{name: value})) == "wrong_type"


@pytest.mark.parametrize("name", ["event_id", "user_id"])
def test_too_long_id(name: str) -> None:
    assert reject(raw(**{name: "x" * (MAX_ID_LEN + 1)})) == "too_long"


@pytest.mark.parametrize("name", ["title", "body", "template", "category"])
def test_wrong_typed_optional_string(name: str) -> None:
    assert reject(raw(**{name: 5})) == "wrong_type"


def test_too_long_title() -> None:
    assert reject(raw(title="x" * 1_001)) == "too_long"


def test_too_large() -> None:
    value = raw(body="x" * 2_000)
    assert reject(value, max_bytes=len(value) - 1) == "too_large"
    assert parse_event(value, max_bytes=len(value)).body == "x" * 2_000


def test_too_large_checked_before_parsing() -> None:
    # Over the limit is rejected as too large even when it is not JSON at all.
    assert reject(b"\xff" * 300 * 1024) == "too_large"


@pytest.mark.parametrize("category", ["has space", "ünïcode", "a/b", "semi;colon"])
def test_invalid_category(category: str) -> None:
    assert reject(raw(category=category)) == "invalid_category"


@pytest.mark.parametrize("channel", ["fax", "EMAIL", "", 3, None, ["email"]])
def test_unknown_channel(channel: Any) -> None:
    assert reject(raw(channels=["email", channel])) == "unknown_channel"


@pytest.mark.parametrize("channels", [[], "email", {"email": True}, 1])
def test_channels_wrong_shape(channels: Any) -> None:
    assert reject(raw(channels=channels)) == "wrong_type"


@pytest.mark.parametrize("priority", ["urgent", "HIGH", "", 1, ["high"], {"p": 1}, True])
def test_bad_priority(priority: Any) -> None:
    assert reject(raw(priority=priority)) == "invalid_priority"


@pytest.mark.parametrize(
    "stamp",
    ["yesterday", "2024-01-02T03:04:05", "2024-13-01T00:00:00Z", "2024-01-02 25:00:00Z", ""],
)
def test_bad_created_at(stamp: str) -> None:
    # A naive timestamp (no offset) is ambiguous and rejected too.
    assert reject(raw(created_at=stamp)) == "invalid_timestamp"


@pytest.mark.parametrize("stamp", [1714557600, 1.5, ["2024-01-01T00:00:00Z"], True])
def test_created_at_not_a_string(stamp: Any) -> None:
    assert reject(raw(created_at=stamp)) == "wrong_type"


@pytest.mark.parametrize("data", [[1, 2], "s", 3, True])
def test_data_not_object(data: Any) -> None:
    assert reject(raw(data=data)) == "wrong_type"


def test_huge_data() -> None:
    data = {"blob": "x" * MAX_DATA_BYTES}
    assert reject(raw(data=data)) == "too_large"
    # just under the limit passes
    ok = {"blob": "x" * (MAX_DATA_BYTES - 20)}
    assert len(orjson.dumps(ok)) <= MAX_DATA_BYTES
    assert parse_event(raw(data=ok)).data == ok


def test_deeply_nested_data_is_invalid_event_not_crash() -> None:
    depth = 300  # orjson.loads accepts up to 1024 levels, orjson.dumps only 254
    value = b'{"event_id":"e","user_id":"u","title":"t","data":{"x":' + b"[" * depth
    value += b"]" * depth + b"}}"
    with pytest.raises(InvalidEvent):
        parse_event(value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"title": _DROP},
        {"title": None},
        {"title": ""},
        {"title": "", "body": ""},
        {"title": None, "body": None, "template": None},
    ],
)
def test_missing_content(overrides: dict[str, Any]) -> None:
    assert reject(raw(**overrides)) == "missing_content"


# --------------------------------------------------------------------------------------
# Property: parse_event only ever returns an Event or raises InvalidEvent
# --------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    json_values,
    st.sampled_from([*CHANNELS, "low", "normal", "high", "critical", "fax", ""]),
    st.lists(st.sampled_from([*CHANNELS, "fax"]), max_size=4),
    st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()),
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        name: field_values
        for name in (
            "event_id",
            "user_id",
            "category",
            "title",
            "body",
            "template",
            "data",
            "channels",
            "priority",
            "created_at",
        )
    },
)


def _check(value: bytes) -> None:
    try:
        ev = parse_event(value)
    except InvalidEvent as exc:
        code, sep, _ = exc.reason.partition(": ")
        assert sep and code.isidentifier()
    else:
        assert isinstance(ev, Event)
        assert ev.event_id.strip() and ev.user_id.strip()
        assert ev.priority in ("low", "normal", "high", "critical")
        assert ev.template is not None or ev.title or ev.body
        assert ev.channels is None or set(ev.channels) <= set(CHANNELS)


@given(st.binary(max_size=300))
def test_property_arbitrary_bytes(value: bytes) -> None:
    _check(value)


@given(json_values)
def test_property_arbitrary_json(value: Any) -> None:
    _check(json.dumps(value).encode())  # stdlib json: big ints, Infinity pass through


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(event_like)
def test_property_event_like_objects(doc: dict[str, Any]) -> None:
    _check(json.dumps(doc).encode())


# --------------------------------------------------------------------------------------
# validate_preferences / merge_preferences / Preferences
# --------------------------------------------------------------------------------------

FULL: dict[str, Any] = {
    "email": "ann@example.com",
    "phone": "+15551234567",
    "push_tokens": ["tok-a", "tok-b", "tok-a"],
    "webhook_url": "https://hooks.example.com/ann",
    "apprise_urls": ["mailto://x"],
    "channels": {"sms": False, "email": True},
    "opt_out": {"marketing": ["email", "sms", "email"], "*": ["push"]},
    "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
    "locale": "fr-CA",
}


def test_valid_full_document() -> None:
    out = validate_preferences("u1", {**FULL, "user_id": "u1", "updated_at": 5.0})
    assert set(out) == PREFERENCE_FIELDS
    assert out["email"] == "ann@example.com"
    assert out["phone"] == "+15551234567"
    assert out["push_tokens"] == ["tok-a", "tok-b"]  # deduplicated, order kept
    assert out["opt_out"] == {"marketing": ["email", "sms"], "*": ["push"]}
    assert out["channels"] == {"sms": False, "email": True}
    assert out["quiet_hours"] == FULL["quiet_hours"]
    assert out["locale"] == "fr-CA"
    # the result loads into Preferences
    prefs = Preferences.from_dict({"user_id": "u1", **out})
    assert prefs.quiet_hours is not None and prefs.quiet_hours.timezone == "Europe/Paris"
    assert Preferences.from_dict(prefs.to_dict()) == prefs


def test_full_document_resets_missing_fields() -> None:
    out = validate_preferences("u1", {"email": "a@b.co"})
    defaults = Preferences(user_id="u1").to_dict()
    assert out["email"] == "a@b.co"
    for name in PREFERENCE_FIELDS - {"email"}:
        assert out[name] == defaults[name]


def test_partial_document_only_given_fields() -> None:
    assert validate_preferences("u1", {"phone": "+4915112345678"}, partial=True) == {
        "phone": "+4915112345678"
    }
    assert validate_preferences("u1", {}, partial=True) == {}


def test_empty_strings_and_nulls_clear_fields() -> None:
    out = validate_preferences(
        "u1", {"email": "", "phone": None, "quiet_hours": None, "channels": None}, partial=True
    )
    assert out == {"email": None, "phone": None, "quiet_hours": None, "channels": {}}


def test_merge_preferences() -> None:
    ts = 1_700_000_000.0
    first = merge_preferences(None, "u1", validate_preferences("u1", FULL), ts)
    assert first["user_id"] == "u1" and first["updated_at"] == ts
    patched = merge_preferences(
        first, "u1", validate_preferences("u1", {"email": "new@example.org"}, partial=True), ts + 1
    )
    assert patched["email"] == "new@example.org"
    assert patched["phone"] == FULL["phone"]
    assert patched["updated_at"] == ts + 1
    # a fields dict cannot rename the user
    assert merge_preferences(first, "u1", {"user_id": "u2"}, ts)["user_id"] == "u1"


def _bad(doc: Any, match: str, partial: bool = True) -> None:
    with pytest.raises(InvalidPreferences, match=match):
        validate_preferences("u1", doc, partial=partial)


@pytest.mark.parametrize("doc", [None, [], "email", 3])
def test_preferences_not_an_object(doc: Any) -> None:
    _bad(doc, "JSON object")


@pytest.mark.parametrize(
    "email",
    ["plain", "a@b", "@example.com", "a b@example.com", "a@exa mple.com", "a@@b.com", 5,
     "a@example.com\n"],  # "$" would have matched before the newline
)
def test_invalid_email(email: Any) -> None:
    _bad({"email": email}, "email")


@pytest.mark.parametrize("email", ["a@b.co", "first.last+tag@sub.example.org", "x_y@a-b.io"])
def test_valid_email(email: str) -> None:
    assert validate_preferences("u1", {"email": email}, partial=True)["email"] == email


@pytest.mark.parametrize(
    "phone",
    ["15551234567", "+05551234567", "+1555", "+1234567890123456", "+1 555 123 4567", "+1-555",
     "+15551234567\n",  # "$" would have matched before the newline
     "+1555123456\uff17"],  # a fullwidth digit, which "\\d" matches
)
def test_invalid_phone(phone: str) -> None:
    _bad({"phone": phone}, "E.164")


@pytest.mark.parametrize(
    "phone", ["+15551234567", "+33612345678", "+4915112345678", "+818012345678"]
)
def test_valid_phone(phone: str) -> None:
    assert validate_preferences("u1", {"phone": phone}, partial=True)["phone"] == phone


# E.164-shaped but impossible by libphonenumber (too short / too long for +1); the former
# pattern accepted them, test_valid_phone listed them, providers refuse them.
@pytest.mark.parametrize("phone", ["+1234567", "+123456789012345", "+33123456", "+99912345678"])
def test_impossible_phone(phone: str) -> None:
    _bad({"phone": phone}, "E.164")


@pytest.mark.parametrize("url", ["ftp://x", "hooks.example.com", "javascript:alert(1)", "HTTP//x"])
def test_invalid_webhook_url(url: str) -> None:
    _bad({"webhook_url": url}, "webhook_url")


def test_overlong_string_rejected() -> None:
    _bad({"webhook_url": "https://x/" + "a" * 2000}, "webhook_url must be a string")


@pytest.mark.parametrize("locale", ["english", "e", "fr CA", "fr-", "12", "fr-CA-toolongsubtag"])
def test_invalid_locale(locale: str) -> None:
    _bad({"locale": locale}, "BCP 47")


@pytest.mark.parametrize("locale", ["en", "fr-CA", "pt_BR", "zh-Hant-TW", "ast"])
def test_valid_locale(locale: str) -> None:
    assert validate_preferences("u1", {"locale": locale}, partial=True)["locale"] == locale


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"channels": {"fax": True}}, "unknown channel"),
        ({"channels": {"email": "yes"}}, "true or false"),
        ({"channels": {"email": 1}}, "true or false"),
        ({"channels": ["email"]}, "channel -> true/false"),
    ],
)
def test_invalid_channels(doc: dict[str, Any], match: str) -> None:
    _bad(doc, match)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"opt_out": ["marketing"]}, "category -> \\[channels\\]"),
        ({"opt_out": {"marketing": "email"}}, "must be a list"),
        ({"opt_out": {"marketing": ["fax"]}}, "unknown channel"),
        ({"opt_out": {"bad category": ["email"]}}, "invalid category"),
        ({"opt_out": {"": ["email"]}}, "invalid category"),
    ],
)
def test_invalid_opt_out(doc: dict[str, Any], match: str) -> None:
    _bad(doc, match)


def test_opt_out_wildcards_accepted() -> None:
    out = validate_preferences("u1", {"opt_out": {"*": ["*"], "news": ["*", "sms"]}}, partial=True)
    assert out["opt_out"] == {"*": ["*"], "news": ["*", "sms"]}


@pytest.mark.parametrize(
    ("qh", "match"),
    [
        ({"start": "22:00", "end": "07:00"}, "exactly start, end and timezone"),
        ({"start": "22:00", "end": "07:00", "timezone": "UTC", "x": 1}, "exactly"),
        ("22:00-07:00", "exactly"),
        ({"start": "24:00", "end": "07:00", "timezone": "UTC"}, "quiet_hours.start must be HH:MM"),
        ({"start": "7:00", "end": "08:00", "timezone": "UTC"}, "quiet_hours.start must be HH:MM"),
        ({"start": "22:00", "end": "07:60", "timezone": "UTC"}, "quiet_hours.end must be HH:MM"),
        ({"start": "22:00", "end": 700, "timezone": "UTC"}, "quiet_hours.end must be HH:MM"),
        ({"start": "22:00\n", "end": "07:00", "timezone": "UTC"}, "quiet_hours.start must be"),
        ({"start": "22:00", "end": "0\u0667:00", "timezone": "UTC"}, "quiet_hours.end must be"),
        ({"start": "08:00", "end": "08:00", "timezone": "UTC"}, "must differ"),
        ({"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}, "IANA"),
        ({"start": "22:00", "end": "07:00", "timezone": "../../etc/passwd"}, "IANA"),
        ({"start": "22:00", "end": "07:00", "timezone": ""}, "IANA"),
        ({"start": "22:00", "end": "07:00", "timezone": 1}, "IANA"),
    ],
)
def test_invalid_quiet_hours(qh: Any, match: str) -> None:
    _bad({"quiet_hours": qh}, match)


def test_unknown_fields() -> None:
    _bad({"email": "a@b.co", "favourite_colour": "blue", "zzz": 1}, "favourite_colour, zzz")


def test_user_id_mismatch() -> None:
    _bad({"user_id": "someone-else"}, "does not match")
    assert validate_preferences("u1", {"user_id": "u1"}, partial=True) == {}


@pytest.mark.parametrize(
    "doc",
    [
        {"push_tokens": "tok"},
        {"push_tokens": ["ok", ""]},
        {"push_tokens": ["ok", 3]},
        {"apprise_urls": [None]},
        {"push_tokens": [f"t{i}" for i in range(21)]},
    ],
)
def test_invalid_token_lists(doc: dict[str, Any]) -> None:
    _bad(doc, "push_tokens|apprise_urls")


# --------------------------------------------------------------------------------------
# Delivery and notification ids
# --------------------------------------------------------------------------------------


def test_delivery_round_trip() -> None:
    d = Delivery(
        notification_id="n1",
        event_id="e1",
        user_id="u1",
        channel="push",
        title="T",
        body="B",
        category="c",
        priority="high",
        address="push",
        tokens=["t1", "t2"],
        data={"k": [1, {"x": None}]},
        locale="fr",
        attempt=3,
        accepted_at=12.5,
        produced_at=11.0,
    )
    assert Delivery.from_dict(orjson.loads(d.dumps())) == d
    assert Delivery.from_dict(d.to_dict()) == d
    assert set(d.to_dict()) == set(Delivery.__struct_fields__)


def test_delivery_from_dict_ignores_unknown_and_defaults_missing() -> None:
    d = Delivery.from_dict(
        {
            "notification_id": "n",
            "event_id": "e",
            "user_id": "u",
            "channel": "email",
            "title": "t",
            "body": "b",
            "future_field": 1,
        }
    )
    assert d.attempt == 1 and d.tokens == [] and d.category == "general"


def test_idempotency_key_stable_across_attempts() -> None:
    d = Delivery("n1", "e1", "u1", "email", "t", "b")
    retry = Delivery.from_dict({**d.to_dict(), "attempt": 4})
    assert d.idempotency_key == retry.idempotency_key == "n1:email"
    other = Delivery.from_dict({**d.to_dict(), "channel": "sms"})
    assert other.idempotency_key != d.idempotency_key


def test_notification_id_deterministic() -> None:
    a = notification_id_for("user-1", "ev-42")
    assert a == notification_id_for("user-1", "ev-42")
    assert a != notification_id_for("user-1", "ev-43")
    assert uuid.UUID(a).version == 5
    assert parse_event(raw(event_id="ev-42")).notification_id == a


def test_notification_id_scoped_to_the_user() -> None:
    # order-42-shipped for the buyer and for the seller are two notifications.
    buyer = notification_id_for("buyer", "order-42-shipped")
    seller = notification_id_for("seller", "order-42-shipped")
    assert buyer != seller
    assert parse_event(raw(user_id="seller", event_id="order-42-shipped")).notification_id == (
        seller
    )
    # Neither can equal the id the event had before ids were scoped (other namespace).
    assert legacy_notification_id_for("order-42-shipped") not in (buyer, seller)


def test_idempotency_scope_is_unambiguous() -> None:
    # A separator alone would collide: ("a:b", "c") and ("a", "b:c").
    assert idempotency_scope("a:b", "c") != idempotency_scope("a", "b:c")
    assert notification_id_for("a:b", "c") != notification_id_for("a", "b:c")
    assert split_scope(idempotency_scope("a:b", "c")) == ("a:b", "c")
    assert split_scope(idempotency_scope("1:x", "")) == ("1:x", "")
    for legacy in ("order-42", "12:ab", "2:ab", "02:ab:c", "²:ab:c", ":x", "3:ab"):
        assert split_scope(legacy) is None, legacy


@given(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1), st.text(min_size=1))
def test_notification_id_injective_in_practice(u1: str, e1: str, u2: str, e2: str) -> None:
    same = (u1, e1) == (u2, e2)
    assert (notification_id_for(u1, e1) == notification_id_for(u2, e2)) == same
    assert (idempotency_scope(u1, e1) == idempotency_scope(u2, e2)) == same
    assert split_scope(idempotency_scope(u1, e1)) == (u1, e1)
    assert legacy_notification_id_for(e1) != notification_id_for(u1, e1)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"send_at": 0}, "wrong_type: send_at must be an RFC 3339 string"),
        ({"delay_s": "10"}, "wrong_type: delay_s must be a number of seconds"),
        ({"send_at": "2030-01-01T09:00:00"},
         "invalid_send_at: '2030-01-01T09:00:00' is not RFC 3339 with an offset"),
        ({"delay_s": -1}, "invalid_delay_s: delay_s must be a finite number >= 0"),
        ({"send_at": "2030-01-01T09:00:00Z", "delay_s": 60},
         "ambiguous_schedule: give send_at or delay_s, not both"),
    ],
)
def test_bad_scheduling_fields_are_rejected_not_sent_now(
    fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(raw(**fields))
    assert exc.value.reason == reason


def test_scheduling_fields_are_kept_for_the_scheduler() -> None:
    at = parse_event(raw(send_at="2030-01-01T09:00:00Z"))
    assert at.send_at == 1893488400.0 and at.delay_s is None
    assert parse_event(raw(delay_s=60)).delay_s == 60.0
    assert at.extra == {}


def test_null_scheduling_field_means_send_now() -> None:
    ev = parse_event(raw(send_at=None, delay_s=None))
    assert ev.send_at is None and ev.delay_s is None
    assert ev.due(1000.0, 365) is None


@given(st.text(max_size=120))
def test_uuid5_str_is_the_standard_librarys(name: str) -> None:
    """The hot path's uuid5 gives the ids ``uuid.uuid5`` gives (ids are stored)."""
    from notifyd.model.event import uuid5_str

    ns = uuid.UUID("3ca1e1c5-ff3c-4ef2-83b8-72a7520bc597")
    try:
        expected = str(uuid.uuid5(ns, name))
    except UnicodeEncodeError:  # a lone surrogate: neither can encode it
        with pytest.raises(UnicodeEncodeError):
            uuid5_str(ns.bytes, name)
        return
    assert uuid5_str(ns.bytes, name) == expected
