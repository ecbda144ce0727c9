"""Wire records of notifyd: preferences, deliveries and status updates; the event
model lives in :mod:`notifyd.model.event` and is re-exported here for old imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from .model.limits import CATEGORY_RE as _CATEGORY_RE
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

__all__ = [
    "CHANNELS", "DIGEST_WINDOW_RE", "E164_RE", "EMAIL_RE", "HHMM_RE", "MAX_BODY_LEN",
    "MAX_CATEGORY_LEN", "MAX_DATA_BYTES", "MAX_DIGEST_WINDOW_S", "MAX_ID_LEN",
    "MAX_TITLE_LEN", "PRIORITIES", "SCHEDULING_FIELDS", "STATUSES", "CancelRequest",
    "Delivery", "Event", "InvalidEvent", "InvalidPreferences", "Preferences", "QuietHours",
    "add_opt_out", "dumps", "idempotency_scope", "legacy_notification_id_for", "loads",
    "merge_preferences", "notification_id_for", "parse_digest_spec", "parse_event",
    "parse_input", "parse_rfc3339", "split_scope", "validate_preferences",
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


def parse_digest_spec(value: Any, where: str = "digest") -> dict[str, str]:
    """Validate ``{"window", "category"?}``; raises ``ValueError`` with the reason."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object like {{\"window\": \"1h\"}}")
    unknown = set(value) - {"window", "category"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    window = value.get("window")
    if not isinstance(window, str) or not (m := DIGEST_WINDOW_RE.match(window)):
        raise ValueError(f"{where}.window must be like 30m, 1h, 1d or daily@09:00")
    if m.group(1) is not None:
        seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
        if not 60 <= seconds <= MAX_DIGEST_WINDOW_S:
            raise ValueError(f"{where}.window must be between 1m and 7d")
    out = {"window": window}
    category = value.get("category")
    if category is not None:
        if not isinstance(category, str) or not _CATEGORY_RE.match(category):
            raise ValueError(f"{where}.category: use letters, digits and _ . : -")
        if len(category) > MAX_CATEGORY_LEN:
            raise ValueError(f"{where}.category is longer than {MAX_CATEGORY_LEN} characters")
        out["category"] = category
    return out


# ---------------------------------------------------------------------------------------
# Preferences
# ---------------------------------------------------------------------------------------


class InvalidPreferences(ValueError):
    """Preferences that fail validation; the message says which field and why."""


@dataclass(slots=True)
class QuietHours:
    start: str  # "HH:MM" local time
    end: str
    timezone: str

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start, "end": self.end, "timezone": self.timezone}


@dataclass(slots=True)
class Preferences:
    user_id: str
    email: str | None = None
    phone: str | None = None
    push_tokens: list[str] = field(default_factory=list)
    webhook_url: str | None = None
    apprise_urls: list[str] = field(default_factory=list)
    #: channel -> enabled; a channel not listed is enabled.
    channels: dict[str, bool] = field(default_factory=dict)
    #: category ("*" for all) -> channels ("*" for all) the user opted out of.
    opt_out: dict[str, list[str]] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    locale: str | None = None
    updated_at: float | None = None
    #: IANA zone of the user (daily digests); else the quiet hours' zone, else UTC.
    timezone: str | None = None
    #: ``[{"category", "window"}]``: categories the user wants as digests.
    digests: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "email": self.email,
            "phone": self.phone,
            "push_tokens": list(self.push_tokens),
            "webhook_url": self.webhook_url,
            "apprise_urls": list(self.apprise_urls),
            "channels": dict(self.channels),
            "opt_out": {k: list(v) for k, v in self.opt_out.items()},
            "quiet_hours": self.quiet_hours.to_dict() if self.quiet_hours else None,
            "locale": self.locale,
            "updated_at": self.updated_at,
            "timezone": self.timezone,
            "digests": [dict(d) for d in self.digests],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preferences:
        """Trusting constructor for data already validated (table contents)."""
        qh = data.get("quiet_hours")
        return cls(
            user_id=data["user_id"],
            email=data.get("email"),
            phone=data.get("phone"),
            push_tokens=list(data.get("push_tokens") or []),
            webhook_url=data.get("webhook_url"),
            apprise_urls=list(data.get("apprise_urls") or []),
            channels=dict(data.get("channels") or {}),
            opt_out={k: list(v) for k, v in (data.get("opt_out") or {}).items()},
            quiet_hours=QuietHours(**qh) if qh else None,
            locale=data.get("locale"),
            updated_at=data.get("updated_at"),
            timezone=data.get("timezone"),
            digests=[dict(d) for d in data.get("digests") or ()],
        )


PREFERENCE_FIELDS = frozenset(
    {
        "email",
        "phone",
        "push_tokens",
        "webhook_url",
        "apprise_urls",
        "channels",
        "opt_out",
        "quiet_hours",
        "locale",
        "timezone",
        "digests",
    }
)
MAX_DIGEST_PREFERENCES = 50


def validate_preferences(user_id: str, data: Any, *, partial: bool = False) -> dict[str, Any]:
    """Check a (partial) preferences document; returns the normalised fields.

    Raises :class:`InvalidPreferences` naming the offending field.
    """
    if not isinstance(data, dict):
        raise InvalidPreferences("preferences must be a JSON object")
    unknown = set(data) - PREFERENCE_FIELDS - {"user_id", "updated_at", "fallback"}
    if unknown:
        raise InvalidPreferences(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "user_id" in data and data["user_id"] != user_id:
        raise InvalidPreferences("user_id in the body does not match the target user")
    out: dict[str, Any] = {}

    def opt_str(name: str) -> str | None:
        v = data.get(name)
        if v is not None and (not isinstance(v, str) or len(v) > 2000):
            raise InvalidPreferences(f"{name} must be a string")
        return v or None

    if "email" in data:
        email = opt_str("email")
        if email is not None and not EMAIL_RE.match(email):
            raise InvalidPreferences(f"email {email!r} is not a valid address")
        out["email"] = email
    if "phone" in data:
        phone = opt_str("phone")
        if phone is not None and not E164_RE.match(phone):
            raise InvalidPreferences(f"phone {phone!r} is not an E.164 number like +15551234567")
        out["phone"] = phone
    if "webhook_url" in data:
        url = opt_str("webhook_url")
        if url is not None and not url.startswith(("http://", "https://")):
            raise InvalidPreferences("webhook_url must be an http(s) URL")
        out["webhook_url"] = url
    if "locale" in data:
        loc = opt_str("locale")
        if loc is not None and not re.match(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$", loc):
            raise InvalidPreferences(f"locale {loc!r} is not a BCP 47 tag")
        out["locale"] = loc
    for list_name in ("push_tokens", "apprise_urls"):
        if list_name in data:
            v = data[list_name] or []
            if not isinstance(v, list) or not all(isinstance(t, str) and t for t in v):
                raise InvalidPreferences(f"{list_name} must be a list of non-empty strings")
            if len(v) > 20:
                raise InvalidPreferences(f"{list_name} holds at most 20 entries")
            out[list_name] = list(dict.fromkeys(v))
    if "channels" in data:
        v = data["channels"] or {}
        if not isinstance(v, dict):
            raise InvalidPreferences("channels must be an object of channel -> true/false")
        for ch, on in v.items():
            if ch not in CHANNELS:
                raise InvalidPreferences(f"channels: unknown channel {ch!r}")
            if not isinstance(on, bool):
                raise InvalidPreferences(f"channels.{ch} must be true or false")
        out["channels"] = dict(v)
    if "opt_out" in data:
        v = data["opt_out"] or {}
        if not isinstance(v, dict):
            raise InvalidPreferences("opt_out must be an object of category -> [channels]")
        norm: dict[str, list[str]] = {}
        for cat, chans in v.items():
            if not isinstance(cat, str) or not (cat == "*" or _CATEGORY_RE.match(cat)):
                raise InvalidPreferences(f"opt_out: invalid category {cat!r}")
            if not isinstance(chans, list):
                raise InvalidPreferences(f"opt_out.{cat} must be a list of channels")
            for ch in chans:
                if ch != "*" and ch not in CHANNELS:
                    raise InvalidPreferences(f"opt_out.{cat}: unknown channel {ch!r}")
            norm[cat] = list(dict.fromkeys(chans))
        out["opt_out"] = norm
    if "quiet_hours" in data:
        qh = data["quiet_hours"]
        if qh is None:
            out["quiet_hours"] = None
        else:
            if not isinstance(qh, dict) or set(qh) != {"start", "end", "timezone"}:
                raise InvalidPreferences("quiet_hours needs exactly start, end and timezone")
            for k in ("start", "end"):
                if not isinstance(qh[k], str) or not HHMM_RE.match(qh[k]):
                    raise InvalidPreferences(f"quiet_hours.{k} must be HH:MM (24 h)")
            if qh["start"] == qh["end"]:
                raise InvalidPreferences("quiet_hours.start and end must differ")
            try:
                if not isinstance(qh["timezone"], str):
                    raise ValueError
                ZoneInfo(qh["timezone"])
            except (ZoneInfoNotFoundError, ValueError):
                raise InvalidPreferences(
                    f"quiet_hours.timezone {qh['timezone']!r} is not an IANA time zone"
                ) from None
            out["quiet_hours"] = {
                "start": qh["start"],
                "end": qh["end"],
                "timezone": qh["timezone"],
            }
    if "fallback" in data:  # per-category channel fallback chains (notifyd.fallback)
        from .fallback import InvalidChain, parse_preferences_chains

        try:
            out["fallback"] = parse_preferences_chains(data["fallback"])
        except InvalidChain as exc:
            raise InvalidPreferences(str(exc)) from None
    if "timezone" in data:
        tz = data["timezone"]
        if tz is not None:
            try:
                if not isinstance(tz, str) or not tz:
                    raise ValueError
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise InvalidPreferences(f"timezone {tz!r} is not an IANA time zone") from None
        out["timezone"] = tz
    if "digests" in data:
        v = data["digests"] or []
        if not isinstance(v, list) or len(v) > MAX_DIGEST_PREFERENCES:
            raise InvalidPreferences(
                f"digests must be a list of at most {MAX_DIGEST_PREFERENCES} "
                '{"category", "window"} objects'
            )
        specs: dict[str, dict[str, str]] = {}
        for i, item in enumerate(v):
            try:
                spec = parse_digest_spec(item, f"digests[{i}]")
            except ValueError as exc:
                raise InvalidPreferences(str(exc)) from None
            if "category" not in spec:
                raise InvalidPreferences(f"digests[{i}].category is required")
            specs[spec["category"]] = spec  # the last one per category wins
        out["digests"] = list(specs.values())
    if not partial:
        # A full document resets every field not given.
        defaults = Preferences(user_id=user_id).to_dict()
        for name in PREFERENCE_FIELDS:
            out.setdefault(name, defaults[name])
    return out


def merge_preferences(
    current: dict[str, Any] | None, user_id: str, fields: dict[str, Any], ts: float
) -> dict[str, Any]:
    base = current or Preferences(user_id=user_id).to_dict()
    merged = {**base, **fields, "user_id": user_id, "updated_at": ts}
    return merged


def add_opt_out(
    current: dict[str, Any] | None, category: Any, channel: Any
) -> dict[str, list[str]] | None:
    """The ``opt_out`` of ``current`` with ``category`` on ``channel`` added, keeping every
    other opt-out; None if the user is already opted out of it (nothing to write).

    Applied by the preferences agent on the owner of the user's partition (the
    ``opt_out`` op of ``notifyd.preferences``), so it cannot race another write."""
    if not isinstance(category, str) or not _CATEGORY_RE.match(category):
        raise InvalidPreferences(f"opt_out: invalid category {str(category)[:100]!r}")
    if channel not in CHANNELS:
        raise InvalidPreferences(f"opt_out: unknown channel {str(channel)[:40]!r}")
    opt_out: dict[str, list[str]] = {
        k: list(v) for k, v in ((current or {}).get("opt_out") or {}).items()
    }
    for cat in (category, "*"):
        chans = opt_out.get(cat) or []
        if channel in chans or "*" in chans:
            return None
    opt_out[category] = [*opt_out.get(category, []), channel]
    return opt_out


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
