"""The inbound event (``notifyd.events``) and the API body that becomes one.

Events are plain JSON written by other services with any Kafka client.  One model,
:class:`EventRecord`, states their shape and limits: msgspec checks a decoded record
against it in C on the hot path, and the OpenAPI document's ``NotificationCreate``
is generated from the same field types.  What a type cannot say (an RFC 3339 instant
with an offset, a content rule spanning fields, the encoded size of ``data``) is
checked after conversion.  Every rejection carries a stable reason
``"<code>: <detail>"`` for the dead-letter topic (:func:`reason_of`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import orjson
from msgspec import Meta

from notifyd.config import CHANNELS
from notifyd.errors import InvalidEvent
from notifyd.model.limits import (
    CATEGORY_PATTERN,
    CATEGORY_RE,
    DIGEST_WINDOW_PATTERN,
    MAX_BODY_LEN,
    MAX_CATEGORY_LEN,
    MAX_DATA_BYTES,
    MAX_DIGEST_WINDOW_S,
    MAX_FALLBACK_AFTER_S,
    MAX_ID_LEN,
    MAX_TEMPLATE_LEN,
    MAX_TITLE_LEN,
    MAX_URL_LEN,
    NOT_BLANK_PATTERN,
    PRIORITIES,
    SCHEMA_VERSION,
    TOPIC_PATTERN,
    integral_version,
)

# --- field types shared by the models -----------------------------------------------

Channel = Literal["email", "sms", "push", "webhook", "inapp"]
Priority = Literal["low", "normal", "high", "critical"]
assert Channel.__args__ == CHANNELS and Priority.__args__ == PRIORITIES  # type: ignore[attr-defined]

# Patterns on the hot path are stated for the document (``extra_json_schema``) and checked
# in code with the compiled ``notifyd.model.limits`` regexes: msgspec runs a Python regex
# per pattern, which tripled the cost of converting an event, and Python's "$" also
# matches before a final newline where JSON Schema's does not.
Id = Annotated[
    str,
    Meta(min_length=1, max_length=MAX_ID_LEN, extra_json_schema={"pattern": NOT_BLANK_PATTERN}),
]
Category = Annotated[
    str, Meta(max_length=MAX_CATEGORY_LEN, extra_json_schema={"pattern": CATEGORY_PATTERN})
]
#: An event's category: empty (or absent) means ``general``.
EventCategory = Annotated[
    str,
    Meta(max_length=MAX_CATEGORY_LEN,
         extra_json_schema={"pattern": CATEGORY_PATTERN.replace("]+$", "]*$")},
         description="letters, digits and _ . : -; empty or absent: general"),
]
Instant = Annotated[
    str,
    Meta(extra_json_schema={"format": "date-time"},
         description="RFC 3339 with an offset (a naive time is ambiguous)"),
]
DigestWindow = Annotated[
    str,
    Meta(pattern=DIGEST_WINDOW_PATTERN,
         description="a period aligned to the epoch (30m, 1h, 1d; 1m to 7d) or a daily "
         "time in the user's zone (daily@09:00)"),
]
#: ``schema_version`` of a record: absent (1) in records written before it existed.
Version = Annotated[
    int, Meta(ge=1, le=SCHEMA_VERSION, description="record schema version; absent means 1")
]


class DigestRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Collect this event into a digest (critical events bypass it)."""

    window: DigestWindow
    category: Annotated[
        Category, Meta(description="digest to join (default: the event's category)")
    ] | None = None


class FallbackStep(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One step of a fallback chain (the rules between steps: ``notifyd.fallback``)."""

    channel: Channel
    after_s: Annotated[float, Meta(ge=0, le=MAX_FALLBACK_AFTER_S)] = 0
    unless: Literal["read", "delivered"] | None = None


FallbackChain = Annotated[
    list[FallbackStep],
    Meta(min_length=1, max_length=len(CHANNELS),
         description="Ordered channels: the first at once, each later one after_s seconds "
         "after acceptance unless the condition holds (read: the in-app item was read; "
         "delivered: an earlier step was sent). A failed/dead/suppressed step makes the "
         "next one due at once."),
]


class _EventContent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields an event and the API body share (both models inherit them)."""

    schema_version: Version | None = None
    category: EventCategory | None = None
    title: Annotated[str, Meta(max_length=MAX_TITLE_LEN)] | None = None
    body: Annotated[str, Meta(max_length=MAX_BODY_LEN)] | None = None
    template: Annotated[str, Meta(max_length=MAX_TEMPLATE_LEN)] | None = None
    data: dict[str, Any] | None = None
    channels: Annotated[list[Channel], Meta(min_length=1)] | None = None
    priority: Priority | None = None
    created_at: Instant | None = None
    send_at: Annotated[
        Instant, Meta(description="send then (past = now); not with delay_s")
    ] | None = None
    delay_s: Annotated[
        float, Meta(ge=0, description="send this many seconds after acceptance")
    ] | None = None
    digest: DigestRequest | None = None


class EventRecord(_EventContent, kw_only=True, omit_defaults=True):
    """A record of ``notifyd.events``; fields not listed are kept as extras."""

    event_id: Annotated[Id, Meta(description="idempotency key, per recipient (user_id)")]
    user_id: Annotated[Id, Meta(description="recipient")]


class NotificationCreate(_EventContent, kw_only=True, omit_defaults=True):
    """``POST /api/v1/notifications``: an event, as on the events topic; fields not
    listed are kept as extras.  The handler fills the ids, then decodes it as an
    :class:`EventRecord`."""

    #: What a field type cannot say, for the document: some content (a non-empty title
    #: or body, or a template), and not both scheduling fields.
    json_schema_extra: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["template"], "properties": {"template": {"type": "string"}}},
            {"required": ["title"], "properties": {"title": {"type": "string", "minLength": 1}}},
            {"required": ["body"], "properties": {"body": {"type": "string", "minLength": 1}}},
        ],
        "not": {
            "required": ["send_at", "delay_s"],
            "properties": {"send_at": {"type": "string"}, "delay_s": {"type": "number"}},
        },
    }

    event_id: Annotated[
        Id, Meta(description="idempotency key, per recipient (user_id); a uuid4 when omitted")
    ] | None = None
    user_id: Annotated[
        Id, Meta(description="recipient; defaults to the caller, only operators may name another")
    ] | None = None
    topic: Annotated[
        str,
        Meta(extra_json_schema={"pattern": TOPIC_PATTERN},
             description="operators, without user_id: every subscriber of the topic gets "
             "their own notification (fan-out); with user_id: recorded only"),
    ] | None = None
    callback_url: Annotated[
        str,
        Meta(max_length=MAX_URL_LEN,
             extra_json_schema={"format": "uri", "pattern": "^https?://"},
             description="POSTed each terminal state per channel (signed, retried, egress "
             "policy); default NOTIFYD_CALLBACK_URL"),
    ] | None = None
    fallback: FallbackChain | None = None


class CancelRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """``{"op": "cancel", "user_id", "event_id"}`` on ``notifyd.events``."""

    op: Literal["cancel"]
    user_id: Id
    event_id: Id
    schema_version: Version | None = None


# --- ids ----------------------------------------------------------------------------

_NAMESPACE = uuid.UUID("6f1d2c8e-7d0b-4c1e-9a55-0b5f3f1e2a10")
#: Namespace of notification ids scoped to (user_id, event_id).  Another namespace than
#: the legacy ids', so a scoped id can never equal a legacy one.
_SCOPED_NAMESPACE = uuid.UUID("3ca1e1c5-ff3c-4ef2-83b8-72a7520bc597")
_SCOPED_NAMESPACE_BYTES = _SCOPED_NAMESPACE.bytes


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
    return uuid5_str(_SCOPED_NAMESPACE_BYTES, idempotency_scope(user_id, event_id))


def uuid5_str(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without building a ``UUID``
    (its int arithmetic was most of the cost of a new event's id)."""
    b = bytearray(hashlib.sha1(namespace + name.encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def legacy_notification_id_for(event_id: str) -> str:
    """The id events got before ids were scoped to the user (``uuid5(event_id)``): still
    used for an event first processed by an older worker (see ``pipeline.handle_event``)."""
    return str(uuid.uuid5(_NAMESPACE, event_id))


# --- the validated event ------------------------------------------------------------


class Event(msgspec.Struct):
    """A validated notification event from ``notifyd.events`` (a Struct, not a
    dataclass: built once per event on the hot path, and msgspec builds it faster)."""

    event_id: str
    user_id: str
    category: str = "general"
    title: str | None = None
    body: str | None = None
    template: str | None = None
    data: dict[str, Any] = {}
    channels: tuple[str, ...] | None = None
    priority: str = "normal"
    created_at: float | None = None  # epoch seconds
    extra: dict[str, Any] = {}
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
        """The record as notifyd writes it (current ``schema_version``)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            schema_version=SCHEMA_VERSION,
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
                "(NOTIFYD_MAX_SCHEDULE_DAYS)",
                rule=True,
            )
        return max(due, now)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A validated :class:`CancelRecord`."""

    user_id: str
    event_id: str

    @property
    def notification_id(self) -> str:
        return notification_id_for(self.user_id, self.event_id)

    @property
    def dedupe_key(self) -> str:
        return idempotency_scope(self.user_id, self.event_id)


# --- decoding -----------------------------------------------------------------------

_KNOWN_FIELDS = frozenset(EventRecord.__struct_fields__)
#: Fields that schedule a send (``send_at``: RFC 3339 with offset; ``delay_s``: seconds).
SCHEDULING_FIELDS: tuple[str, ...] = ("send_at", "delay_s")
_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_rfc3339(value: str) -> float:
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("timezone offset required")
    return dt.timestamp()


class WindowOutOfRange(ValueError):
    """A digest window of the right shape outside 1m to 7d (a rule the schema cannot state)."""


def check_digest_window(window: str, where: str = "digest") -> None:
    """The range of a period window (the pattern cannot say 1m to 7d)."""
    m = re.match(DIGEST_WINDOW_PATTERN, window)
    if m is not None and m.group(1) is not None:
        if not 60 <= int(m.group(1)) * _UNITS[m.group(2)] <= MAX_DIGEST_WINDOW_S:
            raise WindowOutOfRange(f"{where}.window must be between 1m and 7d")


_JSON_TYPE = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
              "object": "object", "array": "array", "null": "null"}
_AT = re.compile(r" - at (`key` in )?`\$(.*)`$")
_FIELD = re.compile(r"^\.([A-Za-z_][A-Za-z0-9_]*)(.*)$")


def error_location(exc: msgspec.ValidationError) -> tuple[str, str, str]:
    """``(field, rest of the path, message)`` of a msgspec error on an object; field is
    the top-level name (``""`` if none), rest e.g. ``"[1]"``, ``".window"`` or ``"{key}"``
    (a mapping's key, not its value, is wrong)."""
    text = str(exc)
    m = _AT.search(text)
    msg = text[: m.start()] if m else text
    path = (m.group(2) + ("{key}" if m.group(1) else "")) if m else ""
    missing = re.match(r"Object missing required field `([^`]+)`", msg)
    if missing and not path:
        return missing.group(1), "", msg
    f = _FIELD.match(path)
    return (f.group(1), f.group(2), msg) if f else ("", path, msg)


#: Python type -> JSON type name; bool before int (a bool is an int to isinstance).
_JSON_TYPE_OF: tuple[tuple[type, str], ...] = (
    (type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"),
    (str, "string"), (list, "array"), (dict, "object"),
)


def json_type_name(value: Any) -> str:
    """The JSON type of a decoded value: ``string``, ``integer``, ``object``..."""
    return next((name for tp, name in _JSON_TYPE_OF if isinstance(value, tp)),
                type(value).__name__)


def expected_type(msg: str) -> str | None:
    """``"string"`` of ``Expected `str`, got `int```; None for other messages."""
    m = re.match(r"Expected `([^`]+)`, got `", msg)
    if m is None:
        return None
    return " or ".join(_JSON_TYPE.get(t.strip(), t.strip()) for t in m.group(1).split("|"))


def reason_of(exc: msgspec.ValidationError, obj: dict[str, Any]) -> str:
    """The stable ``"<code>: <detail>"`` of an event (or cancel) ``obj`` that msgspec
    refused, in the words notifyd used before the models existed."""
    name, rest, msg = error_location(exc)
    value = obj.get(name)
    if name in ("event_id", "user_id"):
        if value is None:
            return f"missing_field: {name} is required"
        if not isinstance(value, str):
            return f"wrong_type: {name} must be a string, got {type(value).__name__}"
        if len(value) > MAX_ID_LEN:
            return f"too_long: {name} is longer than {MAX_ID_LEN} characters"
        return f"empty_field: {name} must not be empty"
    if name == "schema_version":
        return f"unsupported_version: schema_version {str(value)[:20]!r} (this worker " \
            f"reads 1 to {SCHEMA_VERSION})"
    if name == "priority":
        return f"invalid_priority: must be one of {', '.join(PRIORITIES)}"
    if name == "digest":
        return f"invalid_digest: {name}{rest}: {msg}"
    if name == "channels":
        if rest.startswith("[") and isinstance(value, list):
            ch = value[int(rest[1:].split("]")[0])]
            return f"unknown_channel: {str(ch)[:40]!r} is not one of {', '.join(CHANNELS)}"
        return "wrong_type: channels must be a non-empty list"
    if name in ("created_at", "send_at"):
        return f"wrong_type: {name} must be an RFC 3339 string"
    if name == "delay_s":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "wrong_type: delay_s must be a number of seconds"
        return "invalid_delay_s: delay_s must be a finite number >= 0"
    if name == "data":
        return f"wrong_type: data must be an object, got {type(value).__name__}"
    if expected_type(msg) is not None:
        return f"wrong_type: {name} must be a string, got {type(value).__name__}"
    if "length <=" in msg:
        limit = msg.rsplit("<= ", 1)[1]
        return f"too_long: {name} is longer than {limit} characters"
    if name == "category":
        return "invalid_category: use letters, digits and _ . : -"
    return f"invalid_event: {name}{rest}: {msg}"


def _loads(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
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
    return obj


def parse_event(raw: bytes | None, max_bytes: int = 256 * 1024) -> Event:
    """Validate one raw Kafka value into an :class:`Event` or raise :class:`InvalidEvent`."""
    parsed = parse_input(raw, max_bytes)
    if isinstance(parsed, CancelRequest):
        raise InvalidEvent("not_an_event: a cancel request is not an event")
    return parsed


def parse_input(raw: bytes | None, max_bytes: int = 256 * 1024) -> Event | CancelRequest:
    """A record of ``notifyd.events``: an event, or ``{"op": "cancel", ...}``."""
    obj = _loads(raw, max_bytes)
    op = obj.get("op")
    if op is not None:
        if op != "cancel":
            raise InvalidEvent(f"unknown_op: {str(op)[:40]!r} (the only op is \"cancel\")")
        try:
            cancel = msgspec.convert(obj, CancelRecord)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(reason_of(exc, obj)) from None
        return CancelRequest(user_id=cancel.user_id, event_id=cancel.event_id)
    return event_from_dict(obj)


def event_from_dict(obj: dict[str, Any]) -> Event:
    """The :class:`Event` of a decoded record (its model first, then the checks a type
    cannot express)."""
    try:
        rec = msgspec.convert(integral_version(obj), EventRecord)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(reason_of(exc, obj)) from None
    for name in ("event_id", "user_id"):  # NOT_BLANK_PATTERN
        if getattr(rec, name).isspace():
            raise InvalidEvent(f"empty_field: {name} must not be empty")
    if rec.send_at is not None and rec.delay_s is not None:
        raise InvalidEvent("ambiguous_schedule: give send_at or delay_s, not both")
    send_at = _instant(rec.send_at, "send_at", "invalid_send_at")
    if rec.delay_s is not None and not math.isfinite(rec.delay_s):
        raise InvalidEvent("invalid_delay_s: delay_s must be a finite number >= 0")
    digest: dict[str, str] | None = None
    if rec.digest is not None:
        try:
            check_digest_window(rec.digest.window)
        except ValueError as exc:
            raise InvalidEvent(f"invalid_digest: {exc}",
                               rule=isinstance(exc, WindowOutOfRange)) from None
        digest = msgspec.structs.asdict(rec.digest)
        if rec.digest.category is None:
            del digest["category"]
        elif not CATEGORY_RE.match(rec.digest.category):
            raise InvalidEvent("invalid_digest: digest.category: use letters, digits and _ . : -")
    category = rec.category or "general"
    if not CATEGORY_RE.match(category):
        raise InvalidEvent("invalid_category: use letters, digits and _ . : -")
    data = rec.data
    if not data:
        data = {}
    else:
        try:
            encoded = orjson.dumps(data)
        except TypeError:  # orjson parses 1024 levels of nesting but writes only 254
            raise InvalidEvent("too_deep: data nests too deeply", rule=True) from None
        if len(encoded) > MAX_DATA_BYTES:
            raise InvalidEvent(f"too_large: data exceeds {MAX_DATA_BYTES} bytes", rule=True)
    if rec.template is None and not (rec.title or rec.body):
        raise InvalidEvent("missing_content: give title/body or template")
    created_at: float | None = None
    if rec.created_at is not None:
        try:
            created_at = parse_rfc3339(rec.created_at)
        except ValueError:
            raise InvalidEvent(f"invalid_timestamp: created_at {rec.created_at[:40]!r}") from None
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
    return Event(
        event_id=rec.event_id,
        user_id=rec.user_id,
        category=category,
        title=rec.title,
        body=rec.body,
        template=rec.template,
        data=data,
        channels=tuple(dict.fromkeys(rec.channels)) if rec.channels is not None else None,
        priority=rec.priority or "normal",
        created_at=created_at,
        extra=extra,
        send_at=send_at,
        delay_s=rec.delay_s,
        digest=digest,
    )


def _instant(value: str | None, name: str, code: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise InvalidEvent(f"{code}: {value[:40]!r} is not RFC 3339 with an offset") from None
