"""Wire records of notifyd: preferences, deliveries and status updates; the event
model lives in :mod:`notifyd.model.event` and is re-exported here for old imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import CHANNELS
from .errors import InvalidEvent
from .model.event import (
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
from .model.limits import (
    DIGEST_WINDOW_RE,
    E164_RE,
    EMAIL_RE,
    HHMM_RE,
    MAX_BODY_LEN,
    MAX_CATEGORY_LEN,
    MAX_DATA_BYTES,
    MAX_DIGEST_WINDOW_S,
    MAX_ID_LEN,
    MAX_TITLE_LEN,
    PRIORITIES,
)
from .model.preferences import (
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
    "E164_RE",
    "EMAIL_RE",
    "HHMM_RE",
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


@dataclass(slots=True)
class Delivery:
    """One notification for one channel, as it travels on ``notifyd.deliver.<channel>``."""

    notification_id: str
    event_id: str
    user_id: str
    channel: str
    title: str
    body: str
    category: str = "general"
    priority: str = "normal"
    #: email address, E.164 phone number or webhook URL, depending on the channel.
    address: str | None = None
    #: push device tokens (push channel) or Apprise URLs.
    tokens: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    locale: str | None = None
    attempt: int = 1
    #: epoch seconds when notifyd accepted the event (end-to-end latency origin).
    accepted_at: float = 0.0
    #: epoch seconds when the producer wrote the event (Kafka timestamp), if known.
    produced_at: float | None = None
    #: set by an operator's re-drive of a dead letter: a "dead" ledger entry may be retried.
    redrive: bool = False
    #: e-mail only: the HTML part rendered from the template (autoescaped), if it has one.
    #: Absent from records written before HTML e-mail existed (``from_dict`` accepts them).
    html: str | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and re-processing: what providers deduplicate on."""
        return f"{self.notification_id}:{self.channel}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "channel": self.channel,
            "title": self.title,
            "body": self.body,
            "category": self.category,
            "priority": self.priority,
            "address": self.address,
            "tokens": self.tokens,
            "data": self.data,
            "locale": self.locale,
            "attempt": self.attempt,
            "accepted_at": self.accepted_at,
            "produced_at": self.produced_at,
            "redrive": self.redrive,
            "html": self.html,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Delivery:
        return cls(**{k: d[k] for k in _DELIVERY_FIELDS if k in d})

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())


_DELIVERY_FIELDS = tuple(Delivery.__dataclass_fields__)
