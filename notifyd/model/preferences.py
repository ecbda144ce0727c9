"""A user's preferences: the write body (:class:`PreferencesInput`) and the stored
document (:class:`Preferences`, a row of the ``preferences`` table).

:func:`validate_preferences` converts a body through :class:`PreferencesInput` (types,
lengths, unknown fields), then checks what a type cannot say (an address's format, an
IANA zone, a fallback chain's order) and normalises.  Refusals are
:class:`InvalidPreferences` naming the field; the API answers them as 400
``invalid_preferences`` and the preferences agent dead-letters them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import UNSET, Meta, UnsetType

from notifyd.config import CHANNELS
from notifyd.model.contact import is_e164, is_email, is_hhmm
from notifyd.model.event import (
    Category,
    Channel,
    DigestWindow,
    FallbackChain,
    Version,
    WindowOutOfRange,
    check_digest_window,
    error_location,
)
from notifyd.model.fallback import InvalidChain, parse_preferences_chains
from notifyd.model.limits import (
    CATEGORY_PATTERN,
    CATEGORY_RE,
    DIGEST_WINDOW_RE,
    E164_PATTERN,
    EMAIL_PATTERN,
    HHMM_PATTERN,
    LOCALE_PATTERN,
    LOCALE_RE,
    MAX_CATEGORY_LEN,
    MAX_DIGEST_PREFERENCES,
    MAX_PREFERENCE_STR,
    MAX_TOKENS,
    SCHEMA_VERSION,
    integral_version,
    shaped,
)


class InvalidPreferences(ValueError):
    """Preferences that fail validation; the message says which field and why.

    ``rule``: the body matches the published schema and a rule it cannot state refuses
    it (the API answers 422 rather than 400)."""

    def __init__(self, message: str, *, rule: bool = False) -> None:
        super().__init__(message)
        self.rule = rule


def _optional(pattern: str) -> str:
    """``pattern`` or the empty string (an empty string clears a field)."""
    return f"^$|{pattern}"


HHMM = Annotated[str, Meta(extra_json_schema={"pattern": HHMM_PATTERN, "examples": ["22:00"]})]
Zone = Annotated[str, Meta(min_length=1, extra_json_schema={"examples": ["Europe/Berlin"]},
                           description="IANA time zone")]
_Text = Annotated[str, Meta(max_length=MAX_PREFERENCE_STR)]
_Tokens = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=MAX_TOKENS)]
OptOutCategory = Annotated[str, Meta(pattern=r"^\*$|" + CATEGORY_PATTERN)]
T = TypeVar("T")
#: A body field: absent (UNSET: a PATCH leaves it), null or a value.
_Clearable: TypeAlias = T | UnsetType | None
_Given: TypeAlias = T | UnsetType
_CHANNELS_DOC = "channel -> enabled (a channel not listed is enabled)"
_OPT_OUT_DOC = "category ('*' = all) -> channels ('*' = all) opted out of"
_FALLBACK_DOC = "category (or *) -> channel fallback chain for its events"


def _pattern(pattern: str, description: str | None = None) -> Meta:
    """A pattern for the document only (see ``notifyd.model.event``); code checks it."""
    return Meta(extra_json_schema={"pattern": pattern}, description=description)


class QuietHours(msgspec.Struct, forbid_unknown_fields=True):
    """Local times between which only critical events are sent now (the rest deferred)."""

    start: HHMM
    end: HHMM
    timezone: Zone

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start, "end": self.end, "timezone": self.timezone}


class DigestPreference(msgspec.Struct, forbid_unknown_fields=True):
    """A category the user wants collected into digests."""

    category: Category
    window: DigestWindow


class PreferencesInput(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``PUT`` replaces the document (fields not given reset); ``PATCH`` merges.  An empty
    string or null clears a field."""

    schema_version: Version | None = None
    # readOnly: the document's own user (sent back from a GET), never a choice of the client.
    user_id: _Given[Annotated[str, Meta(description="if given, must be the target user",
                                        extra_json_schema={"readOnly": True})]] = UNSET
    email: _Clearable[Annotated[_Text, _pattern(_optional(EMAIL_PATTERN))]] = UNSET
    phone: _Clearable[Annotated[_Text, _pattern(_optional(E164_PATTERN), "E.164")]] = UNSET
    push_tokens: _Clearable[_Tokens] = UNSET
    webhook_url: _Clearable[Annotated[_Text, _pattern("^$|^https?://", "http(s) URL")]] = UNSET
    apprise_urls: _Clearable[_Tokens] = UNSET
    channels: _Clearable[Annotated[dict[Channel, bool], Meta(description=_CHANNELS_DOC)]] = UNSET
    opt_out: _Clearable[Annotated[dict[OptOutCategory, list[Channel | Literal["*"]]],
                                  Meta(description=_OPT_OUT_DOC)]] = UNSET
    quiet_hours: _Clearable[QuietHours] = UNSET
    locale: _Clearable[Annotated[_Text, _pattern(_optional(LOCALE_PATTERN), "BCP 47 tag")]] \
        = UNSET
    fallback: _Clearable[Annotated[dict[OptOutCategory, FallbackChain],
                                   Meta(description=_FALLBACK_DOC)]] = UNSET
    updated_at: _Clearable[float] = UNSET
    timezone: _Clearable[Annotated[str, Meta(
        description="IANA zone (daily digests)",
        extra_json_schema={"examples": ["Europe/Berlin"]})]] = UNSET
    digests: _Clearable[Annotated[list[DigestPreference],
                                  Meta(max_length=MAX_DIGEST_PREFERENCES)]] = UNSET


class Preferences(msgspec.Struct):
    """The stored preferences of a user (a ``preferences`` table row, and the API's
    answer).  Rows written before ``schema_version`` existed read as version 1."""

    #: Fields every answer carries (those :meth:`to_dict` writes), for the document.
    json_schema_extra: ClassVar[dict[str, object]] = {}

    user_id: str
    email: str | None = None
    phone: str | None = None
    push_tokens: list[str] = []
    webhook_url: str | None = None
    apprise_urls: list[str] = []
    #: channel -> enabled; a channel not listed is enabled.
    channels: dict[str, bool] = {}
    #: category ("*" for all) -> channels ("*" for all) the user opted out of.
    opt_out: dict[str, list[str]] = {}
    quiet_hours: QuietHours | None = None
    locale: str | None = None
    updated_at: Annotated[float, Meta(description="epoch seconds")] | None = None
    #: IANA zone of the user (daily digests); else the quiet hours' zone, else UTC.
    timezone: str | None = None
    #: ``[{"category", "window"}]``: categories the user wants as digests.
    digests: list[DigestPreference] = []
    fallback: dict[str, FallbackChain] | UnsetType | None = UNSET
    schema_version: Version | None = None

    def to_dict(self) -> dict[str, Any]:
        """The document of a user who never wrote theirs (and the fields a PUT resets)."""
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
            "digests": [msgspec.structs.asdict(d) for d in self.digests],
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
            digests=[DigestPreference(**d) for d in data.get("digests") or ()],
        )


Preferences.json_schema_extra["required"] = sorted(Preferences(user_id="").to_dict())

#: The fields a PUT resets (everything but the identity, the stamp and the fallback).
PREFERENCE_FIELDS = frozenset(PreferencesInput.__struct_fields__) - {
    "schema_version", "user_id", "updated_at", "fallback"
}


def parse_digest_spec(value: Any, where: str = "digest") -> dict[str, str]:
    """Validate ``{"window", "category"?}``; raises ``ValueError`` with the reason."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object like {{\"window\": \"1h\"}}")
    unknown = set(value) - {"window", "category"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    window = value.get("window")
    if not isinstance(window, str) or not DIGEST_WINDOW_RE.match(window):
        raise ValueError(f"{where}.window must be like 30m, 1h, 1d or daily@09:00")
    check_digest_window(window, where)
    out = {"window": window}
    category = value.get("category")
    if category is not None:
        if not isinstance(category, str) or not CATEGORY_RE.match(category):
            raise ValueError(f"{where}.category: use letters, digits and _ . : -")
        if len(category) > MAX_CATEGORY_LEN:
            raise ValueError(f"{where}.category is longer than {MAX_CATEGORY_LEN} characters")
        out["category"] = category
    return out


def _explain(exc: msgspec.ValidationError, data: dict[str, Any]) -> str:
    """The message of a body :class:`PreferencesInput` refused, naming the field."""
    name, rest, msg = error_location(exc)
    value = data.get(name)
    if "unknown field" in msg and not name:
        unknown = set(data) - set(PreferencesInput.__struct_fields__)
        return f"unknown field(s): {', '.join(sorted(map(str, unknown)))}"
    if name in ("email", "phone", "webhook_url", "locale", "updated_at"):
        return f"{name} must be a {'number' if name == 'updated_at' else 'string'}"
    if name == "user_id":
        return "user_id in the body does not match the target user"
    if name in ("push_tokens", "apprise_urls"):
        if "length <=" in msg and not rest:
            return f"{name} holds at most {MAX_TOKENS} entries"
        return f"{name} must be a list of non-empty strings"
    if name == "channels":
        if isinstance(value, dict):
            for ch, on in value.items():
                if ch not in CHANNELS:
                    return f"channels: unknown channel {ch!r}"
                if not isinstance(on, bool):
                    return f"channels.{ch} must be true or false"
        return "channels must be an object of channel -> true/false"
    if name == "opt_out":
        if isinstance(value, dict):
            for cat, chans in value.items():
                if not isinstance(cat, str) or not (cat == "*" or CATEGORY_RE.match(cat)):
                    return f"opt_out: invalid category {cat!r}"
                if not isinstance(chans, list):
                    return f"opt_out.{cat} must be a list of channels"
                for ch in chans:
                    if ch != "*" and ch not in CHANNELS:
                        return f"opt_out.{cat}: unknown channel {ch!r}"
        return "opt_out must be an object of category -> [channels]"
    if name == "quiet_hours":
        if rest in (".start", ".end"):
            return f"quiet_hours{rest} must be HH:MM (24 h)"
        if rest == ".timezone" and isinstance(value, dict):
            return f"quiet_hours.timezone {value.get('timezone')!r} is not an IANA time zone"
        return "quiet_hours needs exactly start, end and timezone"
    if name == "timezone":
        return f"timezone {value!r} is not an IANA time zone"
    if name == "digests":
        if isinstance(value, list) and rest.startswith("["):
            i = int(rest[1:].split("]")[0])
            try:
                parse_digest_spec(value[i], f"digests[{i}]")
            except ValueError as err:
                return str(err)
            return f"digests[{i}].category is required"
        return (f"digests must be a list of at most {MAX_DIGEST_PREFERENCES} "
                '{"category", "window"} objects')
    if name == "fallback":
        try:
            parse_preferences_chains(value)
        except InvalidChain as err:
            return str(err)
    if name == "schema_version":
        return f"schema_version must be 1 to {SCHEMA_VERSION}"
    return f"{name}{rest}: {msg}"


def _shaped(name: str, value: str) -> bool:
    """Whether ``value`` has the shape the published schema gives field ``name``."""
    pattern = {"phone": E164_PATTERN, "email": EMAIL_PATTERN}.get(name)
    return pattern is not None and shaped(pattern, value)


def _zone(value: str, what: str) -> None:
    try:
        if not value:
            raise ValueError
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidPreferences(f"{what} {value!r} is not an IANA time zone",
                                 rule=bool(value)) from None


def validate_preferences(user_id: str, data: Any, *, partial: bool = False) -> dict[str, Any]:
    """Check a (partial) preferences document; returns the normalised fields.

    Raises :class:`InvalidPreferences` naming the offending field.
    """
    if not isinstance(data, dict):
        raise InvalidPreferences("preferences must be a JSON object")
    try:
        doc = msgspec.convert(integral_version(data), PreferencesInput)
    except msgspec.ValidationError as exc:
        raise InvalidPreferences(_explain(exc, data)) from None
    if doc.user_id is not UNSET and doc.user_id != user_id:
        raise InvalidPreferences("user_id in the body does not match the target user")
    out: dict[str, Any] = {}
    checks: dict[str, tuple[Callable[[str], object], str]] = {
              "email": (is_email, "{v!r} is not a valid address"),
              "phone": (is_e164, "{v!r} is not an E.164 number like +15551234567"),
              "locale": (LOCALE_RE.match, "{v!r} is not a BCP 47 tag")}
    for name in ("email", "phone", "webhook_url", "locale"):
        value = getattr(doc, name)
        if value is UNSET:
            continue
        value = value or None
        if value is not None:
            if name == "webhook_url":
                if not value.startswith(("http://", "https://")):
                    raise InvalidPreferences("webhook_url must be an http(s) URL")
            elif not checks[name][0](value):
                detail = checks[name][1].format(v=value)
                # The schema states the shape; libraries judge the rest (a possible number,
                # a deliverable-looking address): shaped right but refused is a rule.
                raise InvalidPreferences(f"{name} {detail}", rule=_shaped(name, value))
        out[name] = value
    for list_name in ("push_tokens", "apprise_urls"):
        tokens = getattr(doc, list_name)
        if tokens is not UNSET:
            out[list_name] = list(dict.fromkeys(tokens or ()))
    if doc.channels is not UNSET:
        out["channels"] = dict(doc.channels or {})
    if doc.opt_out is not UNSET:
        for cat in doc.opt_out or {}:
            if cat != "*" and not CATEGORY_RE.match(cat):  # "$" before a newline
                raise InvalidPreferences(f"opt_out: invalid category {cat!r}")
        out["opt_out"] = {cat: list(dict.fromkeys(chans))
                          for cat, chans in (doc.opt_out or {}).items()}
    if doc.quiet_hours is not UNSET:
        qh = doc.quiet_hours
        if qh is None:
            out["quiet_hours"] = None
        else:
            for k in ("start", "end"):
                if not is_hhmm(getattr(qh, k)):
                    raise InvalidPreferences(f"quiet_hours.{k} must be HH:MM (24 h)")
            if qh.start == qh.end:
                raise InvalidPreferences("quiet_hours.start and end must differ", rule=True)
            _zone(qh.timezone, "quiet_hours.timezone")
            out["quiet_hours"] = qh.to_dict()
    if doc.fallback is not UNSET:  # per-category channel fallback chains (notifyd.fallback)
        try:
            out["fallback"] = parse_preferences_chains(data["fallback"])
        except InvalidChain as exc:
            raise InvalidPreferences(str(exc), rule=True) from None
    if doc.timezone is not UNSET:
        if doc.timezone:  # an empty string clears the field, as null does
            _zone(doc.timezone, "timezone")
        out["timezone"] = doc.timezone or None
    if doc.digests is not UNSET:
        specs: dict[str, dict[str, str]] = {}
        for i, item in enumerate(data["digests"] or ()):
            try:
                spec = parse_digest_spec(item, f"digests[{i}]")
            except ValueError as exc:
                raise InvalidPreferences(str(exc), rule=isinstance(exc, WindowOutOfRange)) from None
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
    """The new row: ``fields`` over ``current`` (or the defaults), stamped and versioned."""
    base = current or Preferences(user_id=user_id).to_dict()
    return {**base, **fields, "user_id": user_id, "updated_at": ts,
            "schema_version": SCHEMA_VERSION}


def add_opt_out(
    current: dict[str, Any] | None, category: Any, channel: Any
) -> dict[str, list[str]] | None:
    """The ``opt_out`` of ``current`` with ``category`` on ``channel`` added, keeping every
    other opt-out; None if the user is already opted out of it (nothing to write).

    Applied by the preferences agent on the owner of the user's partition (the
    ``opt_out`` op of ``notifyd.preferences``), so it cannot race another write."""
    if not isinstance(category, str) or not CATEGORY_RE.match(category):
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
