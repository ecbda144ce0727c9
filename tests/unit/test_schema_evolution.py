"""Schema evolution: every record carries ``schema_version``; readers accept the records
written before the field existed (version 1, no field), byte for byte as that code wrote
them, and refuse a version from the future with a stable reason."""

from __future__ import annotations

import orjson
import pytest

from notifyd.errors import InvalidEvent
from notifyd.model.event import CancelRequest, Event, parse_event, parse_input
from notifyd.model.limits import SCHEMA_VERSION

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
