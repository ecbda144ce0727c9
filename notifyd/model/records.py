"""Wire records of notifyd: preferences, deliveries and status updates; the event
model lives in :mod:`notifyd.model.event` and is re-exported here for old imports.
"""

from __future__ import annotations

from typing import Any

import orjson

from notifyd.config import CHANNELS
from notifyd.errors import InvalidEvent
from notifyd.model.delivery import Delivery
from notifyd.model.event import (
    SCHEDULING_FIELDS,
    CancelRequest,
    Event,
    idempotency_scope,
    legacy_notification_id_for,
    notification_id_for,
    parse_event,
    parse_input,
    parse_rfc3339,
    split_scope,
)
from notifyd.model.limits import (
    DIGEST_WINDOW_RE,
    MAX_BODY_LEN,
    MAX_CATEGORY_LEN,
    MAX_DATA_BYTES,
    MAX_DIGEST_WINDOW_S,
    MAX_ID_LEN,
    MAX_TITLE_LEN,
    PRIORITIES,
)
from notifyd.model.preferences import (
    PREFERENCE_FIELDS,
    InvalidPreferences,
    Preferences,
    QuietHours,
    add_opt_out,
    merge_preferences,
    parse_digest_spec,
    validate_preferences,
)

__all__ = [
    "CHANNELS",
    "DIGEST_WINDOW_RE",
    "MAX_BODY_LEN",
    "MAX_CATEGORY_LEN",
    "MAX_DATA_BYTES",
    "MAX_DIGEST_WINDOW_S",
    "MAX_ID_LEN",
    "MAX_TITLE_LEN",
    "PREFERENCE_FIELDS",
    "PRIORITIES",
    "SCHEDULING_FIELDS",
    "STATUSES",
    "CancelRequest",
    "Delivery",
    "Event",
    "InvalidEvent",
    "InvalidPreferences",
    "Preferences",
    "QuietHours",
    "add_opt_out",
    "dumps",
    "idempotency_scope",
    "legacy_notification_id_for",
    "loads",
    "merge_preferences",
    "notification_id_for",
    "parse_digest_spec",
    "parse_event",
    "parse_input",
    "parse_rfc3339",
    "split_scope",
    "validate_preferences",
]

STATUSES: tuple[str, ...] = (
    "queued",
    "sent",
    "failed",
    "suppressed",
    "deferred",
    "retrying",
    "dead",
    "scheduled",
    "cancelled",
    "digested",
)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


# ---------------------------------------------------------------------------------------
# Deliveries (channel topics) and status updates (notifyd.status)
# ---------------------------------------------------------------------------------------
