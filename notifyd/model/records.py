"""Wire records of notifyd: inbound events, preferences, deliveries and status updates.

Inbound events are plain JSON written by other services with any Kafka client, so
they are parsed and validated here by hand (no Faust metadata, no Faust Records on
the hot path): a single ``orjson.loads`` and a few type checks per event.  Every
rejection carries a reason ``"<code>: <detail>"`` for the dead-letter topic.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from notifyd.config import CHANNELS
from notifyd.errors import InvalidEvent
from notifyd.model.chains import InvalidChain, parse_preferences_chains
from notifyd.model.contact import HHMM_PATTERN, is_e164, is_email, is_hhmm
from notifyd.model.fields import CATEGORY_RE as _CATEGORY_RE

PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")
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
MAX_ID_LEN = 200
MAX_CATEGORY_LEN = 100
MAX_TITLE_LEN = 1_000
MAX_BODY_LEN = 20_000
MAX_DATA_BYTES = 64 * 1024
_NAMESPACE = uuid.UUID("6f1d2c8e-7d0b-4c1e-9a55-0b5f3f1e2a10")


#: Namespace of notification ids scoped to (user_id, event_id).  Another namespace than
#: the legacy ids', so a scoped id can never equal a legacy one.
_SCOPED_NAMESPACE = uuid.UUID("3ca1e1c5-ff3c-4ef2-83b8-72a7520bc597")


def idempotency_scope(user_id: str, event_id: str) -> str:
    """The unambiguous text of ``(user_id, event_id)``: ``"<len(user_id)>:<user_id>:<event_id>"``.

    The idempotency scope of an event is its recipient *and* its ``event_id``: two
    producers may use ``order-42-shipped`` for the buyer and for the seller.  User ids
    may hold any character (``:`` included); the length prefix makes the split unique.
    It is also the key of the ``seen`` table (see :func:`split_scope`).
    """
    return f"{len(user_id)}:{user_id}:{event_id}"


def split_scope(key: str) -> tuple[str, str] | None:
    """``(user_id, event_id)`` of an :func:`idempotency_scope` text; None if it is not one
    (e.g. a legacy ``seen`` key, the bare event id)."""
    size, sep, rest = key.partition(":")
    if not sep or not (size.isascii() and size.isdigit()) or size != str(int(size)):
        return None
    n = int(size)
    if len(rest) <= n or rest[n] != ":":
        return None
    return rest[:n], rest[n + 1 :]


@functools.lru_cache(maxsize=8192)  # asked several times per event on the hot path
def notification_id_for(user_id: str, event_id: str) -> str:
    """Deterministic notification id of ``event_id`` sent to ``user_id``, so a re-processed
    event maps to the same id, and the same ``event_id`` for two users to two ids."""
    return str(uuid.uuid5(_SCOPED_NAMESPACE, idempotency_scope(user_id, event_id)))


def legacy_notification_id_for(event_id: str) -> str:
    """The id events got before ids were scoped to the user (``uuid5(event_id)``): still
    used for an event first processed by an older worker (see ``pipeline.handle_event``)."""
    return str(uuid.uuid5(_NAMESPACE, event_id))


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


@dataclass(slots=True)
class Event:
    """A validated notification event from ``notifyd.events``."""

    event_id: str
    user_id: str
    category: str = "general"
    title: str | None = None
    body: str | None = None
    template: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    priority: str = "normal"
    created_at: float | None = None  # epoch seconds
    extra: dict[str, Any] = field(default_factory=dict)
    #: Set by the ingest agent for a record first processed before ids were scoped to
    #: the user: it keeps the notification id it got then.
    legacy_ids: bool = False
    #: Scheduled send (epoch seconds, from ``send_at``) or delay after arrival (``delay_s``).
    send_at: float | None = None
    delay_s: float | None = None
    #: ``{"window": "1h" | "daily@09:00", "category"?}``: collect into a digest.
    digest: dict[str, str] | None = None

    @property
    def notification_id(self) -> str:
        if self.legacy_ids:
            return legacy_notification_id_for(self.event_id)
        return notification_id_for(self.user_id, self.event_id)

    @property
    def dedupe_key(self) -> str:
        """Key of this event in the ``seen`` table."""
        return idempotency_scope(self.user_id, self.event_id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            event_id=self.event_id,
            user_id=self.user_id,
            category=self.category,
            priority=self.priority,
        )
        for name in ("title", "body", "template"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.data:
            out["data"] = self.data
        if self.channels is not None:
            out["channels"] = list(self.channels)
        if self.created_at is not None:
            out["created_at"] = datetime.fromtimestamp(self.created_at, UTC).isoformat()
        if self.send_at is not None:
            out["send_at"] = datetime.fromtimestamp(self.send_at, UTC).isoformat()
        if self.delay_s is not None:
            out["delay_s"] = self.delay_s
        if self.digest is not None:
            out["digest"] = dict(self.digest)
        return out

    def due(self, now: float, max_days: float) -> float | None:
        """When a scheduled event is due (None: not scheduled); a past time is ``now``.

        ``delay_s`` counts from ``now``, the moment notifyd accepts the event.  Raises
        :class:`InvalidEvent` (``schedule_too_far``) beyond ``max_days`` from now."""
        if self.send_at is not None:
            due = self.send_at
        elif self.delay_s is not None:
            due = now + self.delay_s
        else:
            return None
        if due - now > max_days * 86400:
            raise InvalidEvent(
                f"schedule_too_far: more than {max_days:g} days ahead "
                "(NOTIFYD_MAX_SCHEDULE_DAYS)"
            )
        return max(due, now)


#: Fields that schedule a send (``send_at``: RFC 3339 with offset; ``delay_s``: seconds).
SCHEDULING_FIELDS: tuple[str, ...] = ("send_at", "delay_s")
#: A digest window: a period (``30m``, ``1h``, ``2d``) or a daily time (``daily@09:00``).
DIGEST_WINDOW_RE = re.compile(rf"^(?:(\d{{1,4}})([mhd])|daily@{HHMM_PATTERN})$")
MAX_DIGEST_WINDOW_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """``{"op": "cancel", "user_id", "event_id"}`` on ``notifyd.events``."""

    user_id: str
    event_id: str

    @property
    def notification_id(self) -> str:
        return notification_id_for(self.user_id, self.event_id)

    @property
    def dedupe_key(self) -> str:
        return idempotency_scope(self.user_id, self.event_id)


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

_KNOWN_FIELDS = frozenset(
    {
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
        "send_at",
        "delay_s",
        "digest",
    }
)


def _req_str(obj: dict[str, Any], name: str, max_len: int) -> str:
    if name not in obj or obj[name] is None:
        raise InvalidEvent(f"missing_field: {name} is required")
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidEvent(f"wrong_type: {name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidEvent(f"empty_field: {name} must not be empty")
    if len(value) > max_len:
        raise InvalidEvent(f"too_long: {name} is longer than {max_len} characters")
    return value


def _opt_str(obj: dict[str, Any], name: str, max_len: int) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"wrong_type: {name} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidEvent(f"too_long: {name} is longer than {max_len} characters")
    return value


def parse_rfc3339(value: str) -> float:
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("timezone offset required")
    return dt.timestamp()


def parse_event(raw: bytes | None, max_bytes: int = 256 * 1024) -> Event:
    """Validate one raw Kafka value into an :class:`Event` or raise :class:`InvalidEvent`."""
    parsed = parse_input(raw, max_bytes)
    if isinstance(parsed, CancelRequest):
        raise InvalidEvent("not_an_event: a cancel request is not an event")
    return parsed


def parse_input(raw: bytes | None, max_bytes: int = 256 * 1024) -> Event | CancelRequest:
    """A record of ``notifyd.events``: an event, or ``{"op": "cancel", ...}``."""
    if raw is None:
        raise InvalidEvent("empty: message has no value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"too_large: {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)  # orjson rejects invalid UTF-8 itself
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("invalid_utf8: value is not valid UTF-8") from None
        raise InvalidEvent(f"invalid_json: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not_an_object: value must be a JSON object, got {type(obj).__name__}")
    op = obj.get("op")
    if op is not None:
        if op != "cancel":
            raise InvalidEvent(f"unknown_op: {str(op)[:40]!r} (the only op is \"cancel\")")
        return CancelRequest(
            user_id=_req_str(obj, "user_id", MAX_ID_LEN),
            event_id=_req_str(obj, "event_id", MAX_ID_LEN),
        )
    event_id = _req_str(obj, "event_id", MAX_ID_LEN)
    user_id = _req_str(obj, "user_id", MAX_ID_LEN)
    send_at, delay_s = _schedule_fields(obj)
    digest: dict[str, str] | None = None
    if obj.get("digest") is not None:
        try:
            digest = parse_digest_spec(obj["digest"])
        except ValueError as exc:
            raise InvalidEvent(f"invalid_digest: {exc}") from None
    category = _opt_str(obj, "category", MAX_CATEGORY_LEN) or "general"
    if not _CATEGORY_RE.match(category):
        raise InvalidEvent("invalid_category: use letters, digits and _ . : -")
    title = _opt_str(obj, "title", MAX_TITLE_LEN)
    body = _opt_str(obj, "body", MAX_BODY_LEN)
    template = _opt_str(obj, "template", MAX_CATEGORY_LEN)
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise InvalidEvent(f"wrong_type: data must be an object, got {type(data).__name__}")
    elif data:
        try:
            encoded = orjson.dumps(data)
        except TypeError:  # orjson parses 1024 levels of nesting but writes only 254
            raise InvalidEvent("too_deep: data nests too deeply") from None
        if len(encoded) > MAX_DATA_BYTES:
            raise InvalidEvent(f"too_large: data exceeds {MAX_DATA_BYTES} bytes")
    if template is None and not (title or body):
        raise InvalidEvent("missing_content: give title/body or template")
    channels: tuple[str, ...] | None = None
    raw_channels = obj.get("channels")
    if raw_channels is not None:
        if not isinstance(raw_channels, list) or not raw_channels:
            raise InvalidEvent("wrong_type: channels must be a non-empty list")
        for ch in raw_channels:
            if not isinstance(ch, str) or ch not in CHANNELS:
                raise InvalidEvent(
                    f"unknown_channel: {str(ch)[:40]!r} is not one of {', '.join(CHANNELS)}"
                )
        channels = tuple(dict.fromkeys(raw_channels))
    priority = obj.get("priority", "normal")
    if priority is None:
        priority = "normal"
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise InvalidEvent(f"invalid_priority: must be one of {', '.join(PRIORITIES)}")
    created_at: float | None = None
    raw_created = obj.get("created_at")
    if raw_created is not None:
        if not isinstance(raw_created, str):
            raise InvalidEvent("wrong_type: created_at must be an RFC 3339 string")
        try:
            created_at = parse_rfc3339(raw_created)
        except ValueError:
            raise InvalidEvent(f"invalid_timestamp: created_at {raw_created[:40]!r}") from None
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
    return Event(
        event_id=event_id,
        user_id=user_id,
        category=category,
        title=title,
        body=body,
        template=template,
        data=data,
        channels=channels,
        priority=priority,
        created_at=created_at,
        extra=extra,
        send_at=send_at,
        delay_s=delay_s,
        digest=digest,
    )


def _schedule_fields(obj: dict[str, Any]) -> tuple[float | None, float | None]:
    raw_at, raw_delay = obj.get("send_at"), obj.get("delay_s")
    if raw_at is not None and raw_delay is not None:
        raise InvalidEvent("ambiguous_schedule: give send_at or delay_s, not both")
    send_at: float | None = None
    delay_s: float | None = None
    if raw_at is not None:
        if not isinstance(raw_at, str):
            raise InvalidEvent("wrong_type: send_at must be an RFC 3339 string")
        try:
            send_at = parse_rfc3339(raw_at)
        except (ValueError, OverflowError):
            raise InvalidEvent(
                f"invalid_send_at: {raw_at[:40]!r} is not RFC 3339 with an offset"
            ) from None
    if raw_delay is not None:
        if isinstance(raw_delay, bool) or not isinstance(raw_delay, int | float):
            raise InvalidEvent("wrong_type: delay_s must be a number of seconds")
        if not math.isfinite(raw_delay) or raw_delay < 0:
            raise InvalidEvent("invalid_delay_s: delay_s must be a finite number >= 0")
        delay_s = float(raw_delay)
    return send_at, delay_s


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
        if email is not None and not is_email(email):
            raise InvalidPreferences(f"email {email!r} is not a valid address")
        out["email"] = email
    if "phone" in data:
        phone = opt_str("phone")
        if phone is not None and not is_e164(phone):
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
                if not is_hhmm(qh[k]):
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
    if "fallback" in data:  # per-category channel fallback chains (notifyd.model.chains)
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
