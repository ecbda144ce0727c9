"""The route registry of the web view and the OpenAPI 3.1 document built from it.

Every route is declared once, on a :class:`Registry`: method, path, summary, who may
call it, the JSON schema of its body, its query parameters and its responses.  The
same declaration registers the aiohttp handler (``notifyd.web.api.v1``), validates the
request and feeds :func:`build_document`, so the document and the routes cannot
drift.  Routes whose handlers live elsewhere (``web.routes``: health, readiness,
table queries) are declared with :meth:`Registry.document`; a unit test compares
the document with the aiohttp router.

Request bodies are checked against a small subset of JSON Schema (``type``,
``properties``, ``required``, ``additionalProperties``, ``enum``, lengths, bounds,
``pattern``, ``items``, ``$ref``) by :func:`validate`, so schemas here are the
contract clients see *and* the check the server runs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from notifyd.config import CHANNELS
from notifyd.errors import BadRequest
from notifyd.model.contact import HHMM_PATTERN
from notifyd.model.records import PRIORITIES

Auth = Literal["public", "user", "operator"]
Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
REF_PREFIX = "#/components/schemas/"


def ref(name: str) -> Schema:
    return {"$ref": REF_PREFIX + name}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null, written the 3.1 way (type arrays / anyOf with null)."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    out = dict(schema)
    t = out.get("type")
    out["type"] = [*(t if isinstance(t, list) else [t]), "null"]
    return out


_STR = {"type": "string"}
_HHMM = {"type": "string", "pattern": f"^{HHMM_PATTERN}$", "examples": ["22:00"]}
_DIGEST_WINDOW = {
    "type": "string",
    "pattern": rf"^(?:\d{{1,4}}[mhd]|daily@{HHMM_PATTERN})$",
    "description": "a period aligned to the epoch (30m, 1h, 1d; 1m to 7d) or a daily time "
    "in the user's zone (daily@09:00)",
}

#: components/schemas: the wire shapes of the API.
SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error answer: a stable machine-readable code and a human detail.",
        "required": ["code", "detail"],
        "properties": {
            "code": {"type": "string", "examples": ["invalid_json"]},
            "detail": {"type": "string"},
        },
    },
    "User": {
        "type": "object",
        "required": ["user_id", "username", "roles", "created_at", "disabled"],
        "properties": {
            "user_id": _STR,
            "username": _STR,
            "email": nullable(_STR),
            "phone": nullable(_STR),
            "roles": {"type": "array", "items": {"type": "string", "enum": ["user", "operator"]}},
            "created_at": {"type": "string", "format": "date-time"},
            "disabled": {"type": "boolean"},
        },
    },
    "UserCreate": {
        "type": "object",
        "required": ["username", "password", "email"],
        "additionalProperties": False,
        "properties": {
            "username": {
                "type": "string",
                "minLength": 3,
                "maxLength": 64,
                "pattern": r"^[A-Za-z0-9_.-]{3,64}$",
            },
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
            "email": {"type": "string", "format": "email", "maxLength": 254},
            "phone": nullable(
                {"type": "string", "description": "E.164", "examples": ["+14155550123"]}
            ),
        },
    },
    "TokenRequest": {
        "type": "object",
        "description": "Password login; also accepted form-encoded (OAuth2 password grant).",
        "required": ["username", "password"],
        "additionalProperties": False,
        "properties": {
            "username": {"type": "string", "maxLength": 256},
            "password": {"type": "string", "maxLength": 1024},
            "grant_type": {"type": "string", "enum": ["password"]},
            "scope": {"type": "string", "maxLength": 1024},
            "client_id": {"type": "string", "maxLength": 256},
            "client_secret": {"type": "string", "maxLength": 1024},
        },
    },
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string", "description": "HS256 JWT"},
            "token_type": {"type": "string", "enum": ["bearer"]},
            "expires_in": {"type": "integer", "description": "seconds"},
            "refresh_token": {"type": "string", "description": "opaque, single use"},
        },
    },
    "RefreshRequest": {
        "type": "object",
        "required": ["refresh_token"],
        "additionalProperties": False,
        "properties": {"refresh_token": {"type": "string", "minLength": 1, "maxLength": 256}},
    },
    "LogoutRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "refresh_token": {
                "type": "string",
                "maxLength": 256,
                "description": "also revoke this refresh token",
            }
        },
    },
    "QuietHours": {
        "type": "object",
        "required": ["start", "end", "timezone"],
        "additionalProperties": False,
        "properties": {
            "start": _HHMM,
            "end": _HHMM,
            "timezone": {"type": "string", "examples": ["Europe/Berlin"]},
        },
    },
    "PreferencesInput": {
        "type": "object",
        "description": "PUT replaces the document (fields not given reset); PATCH merges.",
        "additionalProperties": False,
        "properties": {
            "user_id": {"type": "string", "description": "if given, must be the target user"},
            "email": nullable({"type": "string", "format": "email"}),
            "phone": nullable({"type": "string", "description": "E.164"}),
            "push_tokens": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
            "webhook_url": nullable({"type": "string", "format": "uri"}),
            "apprise_urls": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
            "channels": {
                "type": "object",
                "description": f"channel ({', '.join(CHANNELS)}) -> enabled",
                "additionalProperties": {"type": "boolean"},
            },
            "opt_out": {
                "type": "object",
                "description": "category ('*' = all) -> channels ('*' = all) opted out of",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "quiet_hours": nullable(ref("QuietHours")),
            "locale": nullable({"type": "string", "examples": ["en", "de-DE"]}),
            "fallback": nullable({
                "type": "object",
                "description": "category (or *) -> channel fallback chain for its events",
                "additionalProperties": ref("FallbackChain"),
            }),
            "updated_at": nullable({"type": "number"}),
            "timezone": nullable({"type": "string", "examples": ["Europe/Berlin"],
                                  "description": "IANA zone (daily digests)"}),
            "digests": {"type": "array", "maxItems": 50, "items": ref("DigestPreference")},
        },
    },
    "Preferences": {
        "type": "object",
        "required": [
            "user_id", "email", "phone", "push_tokens", "webhook_url", "apprise_urls",
            "channels", "opt_out", "quiet_hours", "locale", "updated_at",
        ],
        "properties": {
            "user_id": _STR,
            "email": nullable(_STR),
            "phone": nullable(_STR),
            "push_tokens": {"type": "array", "items": _STR},
            "webhook_url": nullable(_STR),
            "apprise_urls": {"type": "array", "items": _STR},
            "channels": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "opt_out": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": _STR},
            },
            "quiet_hours": nullable(ref("QuietHours")),
            "locale": nullable(_STR),
            "updated_at": nullable({"type": "number", "description": "epoch seconds"}),
            "fallback": nullable(
                {"type": "object", "additionalProperties": ref("FallbackChain")}
            ),
            "timezone": nullable(_STR),
            "digests": {"type": "array", "items": ref("DigestPreference")},
        },
    },
    "FallbackChain": {
        "type": "array",
        "minItems": 1,
        "maxItems": len(CHANNELS),
        "description": "Ordered channels: the first at once, each later one after_s seconds "
        "after acceptance unless the condition holds (read: the in-app item was read; "
        "delivered: an earlier step was sent). A failed/dead/suppressed step makes the "
        "next one due at once.",
        "items": {
            "type": "object",
            "required": ["channel"],
            "additionalProperties": False,
            "properties": {
                "channel": {"type": "string", "enum": list(CHANNELS)},
                "after_s": {"type": "number", "minimum": 0, "maximum": 30 * 24 * 3600},
                "unless": {"type": "string", "enum": ["read", "delivered"]},
            },
        },
    },
    "DigestPreference": {
        "type": "object",
        "required": ["category", "window"],
        "additionalProperties": False,
        "properties": {
            "category": {"type": "string", "maxLength": 100,
                         "pattern": r"^[A-Za-z0-9_.:\-]+$"},
            "window": _DIGEST_WINDOW,
        },
    },
    "DigestRequest": {
        "type": "object",
        "required": ["window"],
        "additionalProperties": False,
        "description": "Collect this event into a digest (critical events bypass it).",
        "properties": {
            "window": _DIGEST_WINDOW,
            "category": {"type": "string", "maxLength": 100,
                         "description": "digest to join (default: the event's category)"},
        },
    },
    "NotificationCreate": {
        "type": "object",
        "description": "An event, as on the events topic; fields not listed are kept as extras.",
        "properties": {
            "event_id": {
                "type": "string",
                "maxLength": 200,
                "description": "idempotency key, per recipient (user_id); a uuid4 when omitted",
            },
            "user_id": {
                "type": "string",
                "maxLength": 200,
                "description": "recipient; defaults to the caller, only operators may name another",
            },
            "category": {"type": "string", "maxLength": 100, "pattern": r"^[A-Za-z0-9_.:\-]+$"},
            "title": {"type": "string", "maxLength": 1000},
            "body": {"type": "string", "maxLength": 20000},
            "template": {"type": "string", "maxLength": 100},
            "data": {"type": "object"},
            "channels": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": list(CHANNELS)},
            },
            "priority": {"type": "string", "enum": list(PRIORITIES)},
            "created_at": {"type": "string", "format": "date-time"},
            "topic": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_.:\-]{1,100}$",
                "description": "operators, without user_id: every subscriber of the topic "
                "gets their own notification (fan-out); with user_id: recorded only",
            },
            "callback_url": {
                "type": "string",
                "format": "uri",
                "maxLength": 2000,
                "description": "POSTed each terminal state per channel (signed, retried, "
                "egress policy); default NOTIFYD_CALLBACK_URL",
            },
            "fallback": ref("FallbackChain"),
            "send_at": {"type": "string", "format": "date-time",
                        "description": "send then (RFC 3339 with offset; past = now); "
                        "not with delay_s"},
            "delay_s": {"type": "number", "minimum": 0,
                        "description": "send this many seconds after acceptance"},
            "digest": ref("DigestRequest"),
        },
    },
    "NotificationAccepted": {
        "type": "object",
        "required": ["notification_id", "event_id"],
        "properties": {
            "notification_id": nullable({
                "type": "string",
                "description": "null for a topic: each subscriber's id is derived from "
                "(user_id, event_id)",
            }),
            "event_id": _STR,
            "topic": {"type": "string", "description": "set when sent to a topic"},
        },
    },
    "InboxItem": {
        "type": "object",
        "required": ["id", "title", "body", "read", "archived"],
        "properties": {
            "id": {"type": "string", "description": "notification id"},
            "title": _STR,
            "body": _STR,
            "category": _STR,
            "priority": {"type": "string", "enum": list(PRIORITIES)},
            "data": {"type": "object"},
            "created_at": {"type": "number", "description": "epoch seconds"},
            "read": {"type": "boolean"},
            "archived": {"type": "boolean"},
        },
    },
    "InboxPage": {
        "type": "object",
        "required": ["items", "unread", "total", "limit", "offset"],
        "properties": {
            "items": {"type": "array", "items": ref("InboxItem")},
            "unread": {"type": "integer", "description": "unread, unarchived items"},
            "total": {"type": "integer", "description": "items matching the filter"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "InboxItemUpdate": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {"read": {"type": "boolean"}, "archived": {"type": "boolean"}},
    },
    "ChannelStatus": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {
                "type": "string",
                "examples": ["queued", "sent", "failed", "suppressed", "deferred", "retrying",
                             "dead", "scheduled", "cancelled", "digested", "pending",
                             "skipped"],
                "description": "pending/skipped: a later step of a fallback chain",
            },
            "reason": _STR,
            "deliver_at": {"type": "number",
                           "description": "scheduled/deferred/retrying/digested: when it goes"},
            "digest_id": {"type": "string",
                          "description": "digested: the digest's notification id"},
            "attempts": {"type": "integer"},
            "ts": {"type": "number"},
            "history": {"type": "array", "items": {"type": "object"}},
        },
    },
    "NotificationStatus": {
        "type": "object",
        "required": ["notification_id", "channels"],
        "properties": {
            "notification_id": _STR,
            "user_id": _STR,
            "event_id": _STR,
            "category": _STR,
            "priority": _STR,
            "title": _STR,
            "body": _STR,
            "template": nullable(_STR),
            "created_at": nullable({"type": "number"}),
            "accepted_at": {"type": "number"},
            "send_at": {"type": "number", "description": "scheduled send: when it is due"},
            "cancelled_at": {"type": "number"},
            "digest_id": {"type": "string"},
            "channels": {"type": "object", "additionalProperties": ref("ChannelStatus")},
            "topic": {"type": "string", "description": "the topic it was fanned out from"},
            "callback_url": _STR,
            "fallback": ref("FallbackChain"),
            "callbacks": {
                "type": "object",
                "description": "Idempotency-Key -> outcome of the delivery callback",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "channel": _STR,
                        "state": _STR,
                        "result": {"type": "string", "enum": ["delivered", "failed", "dead"]},
                        "attempts": {"type": "integer"},
                        "reason": _STR,
                        "ts": {"type": "number"},
                    },
                },
            },
        },
    },
    "DeadLetter": {
        "type": "object",
        "required": [
            "topic", "partition", "offset", "timestamp", "key", "key_base64",
            "reason", "headers", "value", "value_base64",
        ],
        "properties": {
            "topic": _STR,
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "timestamp": {"type": "integer", "description": "Kafka timestamp, epoch ms"},
            "key": nullable(_STR),
            "key_base64": {"type": "boolean", "description": "key is base64 (not UTF-8)"},
            "reason": nullable({"type": "string", "description": "header notifyd-reason"}),
            "headers": {"type": "object", "additionalProperties": _STR},
            "value": nullable(_STR),
            "value_base64": {"type": "boolean", "description": "value is base64 (not UTF-8)"},
        },
    },
    "RedriveRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["topic"],
        "properties": {
            "topic": {"type": "string", "enum": ["events", "deliveries"]},
            "notification_ids": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 200},
                "maxItems": 1000,
                "description": "re-drive only the dead letters of these notifications",
            },
            "all": {"type": "boolean", "description": "re-drive every dead letter"},
        },
    },
    "RedriveResult": {
        "type": "object",
        "required": ["scanned", "redriven", "skipped", "ids"],
        "properties": {
            "scanned": {"type": "integer"},
            "redriven": {"type": "integer"},
            "skipped": {"type": "integer"},
            "ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "DeadLetterPage": {
        "type": "object",
        "required": ["topic", "items"],
        "properties": {
            "topic": _STR,
            "items": {"type": "array", "items": ref("DeadLetter")},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "worker"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}, "worker": _STR},
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "recovery_done", "rebalancing", "partitions", "worker"],
        "properties": {
            "code": {"type": "string", "description": "not_ready (503 only)"},
            "detail": _STR,
            "ready": {"type": "boolean"},
            "recovery_done": {"type": "boolean"},
            "rebalancing": {"type": "boolean"},
            "partitions": {"type": "array", "items": {"type": "integer"}},
            "worker": _STR,
        },
    },
    "TableEntry": {
        "type": "object",
        "required": ["table", "key", "value", "worker"],
        "properties": {"table": _STR, "key": _STR, "value": {}, "worker": _STR},
    },
    "Subscription": {
        "type": "object",
        "required": ["topic", "user_id", "subscribed_at"],
        "properties": {
            "topic": _STR,
            "user_id": _STR,
            "subscribed_at": {"type": "number", "description": "epoch seconds"},
        },
    },
    "SubscriptionList": {
        "type": "object",
        "required": ["user_id", "topics"],
        "properties": {
            "user_id": _STR,
            "topics": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["topic", "subscribed_at"],
                    "properties": {"topic": _STR, "subscribed_at": {"type": "number"}},
                },
            },
        },
    },
    "SubscriberPage": {
        "type": "object",
        "required": ["topic", "items", "next_cursor", "total", "limit"],
        "properties": {
            "topic": _STR,
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["user_id", "subscribed_at"],
                    "properties": {"user_id": _STR, "subscribed_at": {"type": "number"}},
                },
            },
            "next_cursor": nullable({"type": "string", "description": "null on the last page"}),
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
        },
    },
}

_ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Invalid request (body, JSON, field or parameter)"),
    401: ("Unauthorized", "Missing, invalid, expired or revoked credentials"),
    403: ("Forbidden", "Authenticated but not allowed"),
    404: ("NotFound", "No such resource (or not yours)"),
    409: ("Conflict", "Conflicts with the current state"),
    413: ("PayloadTooLarge", "Request body exceeds the size limit"),
    429: ("TooManyRequests", "Too many attempts; see Retry-After"),
    503: ("ServiceUnavailable", "Not ready, rebalancing, owner unreachable or timed out"),
}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "Access token from POST /api/v1/auth/token or the OIDC callback.",
    },
    "passwordLogin": {
        "type": "oauth2",
        "description": "Username and password exchanged for a bearer token.",
        "flows": {"password": {"tokenUrl": "/api/v1/auth/token", "scopes": {}}},
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "notifyd_session",
        "description": "Browser session from the OIDC login; unsafe methods need same origin.",
    },
}
_SECURED: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


# --- the registry -----------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query parameter: parsed from the string form by its schema's type."""

    name: str
    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Resp:
    description: str
    schema: Schema | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description


@dataclass
class Call:
    """What a registry handler gets: the request plus its checked inputs."""

    request: web.Request
    user: Any  # CurrentUser | None (typed loosely to keep this module auth-agnostic)
    body: Any
    query: dict[str, Any]

    @property
    def path(self) -> Mapping[str, str]:
        return self.request.match_info


CallHandler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass
class Endpoint:
    method: str
    path: str
    summary: str
    auth: Auth
    tags: tuple[str, ...]
    responses: dict[int, Resp]
    handler: CallHandler | None = None  # None: handler registered elsewhere (documented only)
    description: str = ""
    body: Schema | None = None
    body_required: bool = True
    #: Check the body against ``body`` (else the handler validates it itself).
    validate_body: bool = True
    #: Also accept ``application/x-www-form-urlencoded`` bodies.
    form: bool = False
    query: tuple[Param, ...] = ()
    path_params: dict[str, Schema] = field(default_factory=dict)
    #: Error statuses besides the ones implied by auth, body and routing.
    errors: tuple[int, ...] = ()
    #: Key-addressed: may be proxied to the partition owner (503 while rebalancing).
    routed: bool = False
    operation_id: str = ""

    def error_statuses(self) -> list[int]:
        out = set(self.errors)
        if self.auth != "public":
            out.add(401)
        if self.auth == "operator":
            out.add(403)
        if self.body is not None:
            out.update((400, 413))
        if self.query or self.path_params:
            out.add(400)
        if self.routed:
            out.add(503)
        return sorted(out)


class Registry:
    """Routes declared once: for aiohttp (see ``web.api``) and for the OpenAPI document."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def _add(self, ep: Endpoint) -> Endpoint:
        key = (ep.method, ep.path)
        if any((e.method, e.path) == key for e in self.endpoints):
            raise ValueError(f"route {ep.method} {ep.path} declared twice")
        self.endpoints.append(ep)
        return ep

    def route(
        self, method: str, path: str, *, summary: str, auth: Auth, tags: tuple[str, ...],
        responses: dict[int, Resp], **kw: Any,
    ) -> Callable[[CallHandler], CallHandler]:
        def deco(fn: CallHandler) -> CallHandler:
            self._add(
                Endpoint(
                    method=method.upper(), path=path, summary=summary, auth=auth, tags=tags,
                    responses=responses, handler=fn,
                    operation_id=kw.pop("operation_id", "") or fn.__name__, **kw,
                )
            )
            return fn

        return deco

    def document(
        self, method: str, path: str, *, summary: str, auth: Auth, tags: tuple[str, ...],
        responses: dict[int, Resp], operation_id: str, **kw: Any,
    ) -> None:
        """Declare a route whose handler is registered elsewhere (spec only)."""
        self._add(
            Endpoint(
                method=method.upper(), path=path, summary=summary, auth=auth, tags=tags,
                responses=responses, operation_id=operation_id, **kw,
            )
        )


# --- request validation (a JSON Schema subset) ---------------------------------------


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _JSON_TYPES[name](value):
            return name
    return type(value).__name__


def _resolve(schema: Schema) -> Schema:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].removeprefix(REF_PREFIX)]
    return schema


def _name(path: str) -> str:
    return f"field '{path}'" if path else "request body"


def validate(schema: Schema, value: Any, path: str = "") -> None:
    """Raise BadRequest (code missing_field / wrong_type / unknown_field / invalid_value)
    naming the first offending field; ``path`` is the dotted location of ``value``."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        errors: list[BadRequest] = []
        for option in schema["anyOf"]:
            try:
                validate(option, value, path)
                return
            except BadRequest as exc:
                errors.append(exc)
        # Report the error of the non-null option: that is what the client meant.
        raise next((e for e in errors if e.code != "wrong_type"), errors[0])
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_JSON_TYPES[x](value) for x in types):
            expected = " or ".join(types)
            raise BadRequest(
                f"{_name(path)} must be {expected}, not {json_type(value)}", code="wrong_type"
            )
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(x) for x in schema["enum"])
        raise BadRequest(f"{_name(path)} must be one of: {allowed}", code="invalid_value")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise BadRequest(
                f"{_name(path)} must be at least {schema['minLength']} characters",
                code="invalid_value",
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise BadRequest(
                f"{_name(path)} must be at most {schema['maxLength']} characters",
                code="invalid_value",
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise BadRequest(f"{_name(path)} has an invalid format", code="invalid_value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise BadRequest(
                f"{_name(path)} must be at least {schema['minimum']}", code="invalid_value"
            )
        if "maximum" in schema and value > schema["maximum"]:
            raise BadRequest(
                f"{_name(path)} must be at most {schema['maximum']}", code="invalid_value"
            )
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise BadRequest(
                f"{_name(path)} needs at least {schema['minItems']} item(s)", code="invalid_value"
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise BadRequest(
                f"{_name(path)} holds at most {schema['maxItems']} items", code="invalid_value"
            )
        if "items" in schema:
            for i, item in enumerate(value):
                validate(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0):
            raise BadRequest(
                f"{_name(path)} needs at least {schema['minProperties']} field(s)",
                code="missing_field",
            )
        for name in schema.get("required", ()):
            if name not in value:
                raise BadRequest(
                    f"{_name(_join(path, name))} is required", code="missing_field"
                )
        props: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub = _join(path, str(name))
            if name in props:
                validate(props[name], item, sub)
            elif extra is False:
                known = ", ".join(sorted(props)) or "none"
                raise BadRequest(
                    f"{_name(sub)} is not allowed (known fields: {known})", code="unknown_field"
                )
            elif isinstance(extra, dict):
                validate(extra, item, sub)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def parse_query(query: Mapping[str, str], params: tuple[Param, ...]) -> dict[str, Any]:
    """Typed query values (defaults filled in); 400 ``invalid_parameter`` naming the one."""
    out: dict[str, Any] = {}
    for p in params:
        raw = query.get(p.name)
        if raw is None:
            if "default" in p.schema:
                out[p.name] = p.schema["default"]
            elif p.required:
                raise BadRequest(
                    f"query parameter '{p.name}' is required", code="missing_parameter"
                )
            continue
        t = p.schema.get("type", "string")
        value: Any = raw
        if t == "boolean":
            if raw.lower() not in _TRUE | _FALSE:
                raise BadRequest(
                    f"query parameter '{p.name}' must be true or false", code="invalid_parameter"
                )
            value = raw.lower() in _TRUE
        elif t == "integer":
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(
                    f"query parameter '{p.name}' must be an integer", code="invalid_parameter"
                ) from None
        try:
            validate(p.schema, value, p.name)
        except BadRequest as exc:
            raise BadRequest(
                "query parameter " + exc.detail.removeprefix("field "), code="invalid_parameter"
            ) from None
        out[p.name] = value
    return out


# --- the document ------------------------------------------------------------------------


def _path_param_names(path: str) -> list[str]:
    return re.findall(r"{([^}:]+)}", path)


def _content(resp: Resp) -> dict[str, Any]:
    schema = resp.schema if resp.schema is not None else {}
    return {resp.content_type: {"schema": schema}}


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "tags": list(ep.tags),
        "security": [] if ep.auth == "public" else copy.deepcopy(_SECURED),
        "x-notifyd-auth": ep.auth,
    }
    description = ep.description
    if ep.auth == "operator":
        description = (description + "\n\n" if description else "") + "Operators only."
    if description:
        op["description"] = description
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": ep.path_params.get(name, {"type": "string"}),
        }
        for name in _path_param_names(ep.path)
    ]
    for p in ep.query:
        q: dict[str, Any] = {"name": p.name, "in": "query", "required": p.required,
                             "schema": p.schema}
        if p.description:
            q["description"] = p.description
        params.append(q)
    if params:
        op["parameters"] = params
    if ep.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": ep.body}}
        if ep.form:
            content["application/x-www-form-urlencoded"] = {"schema": ep.body}
        op["requestBody"] = {"required": ep.body_required, "content": content}
    responses: dict[str, Any] = {}
    for status, resp in sorted(ep.responses.items()):
        r: dict[str, Any] = {"description": resp.description}
        if (status != 204 and resp.schema is not None) or resp.content_type != "application/json":
            r["content"] = _content(resp)
        if resp.headers:
            r["headers"] = {
                name: {"description": desc, "schema": {"type": "string"}}
                for name, desc in resp.headers.items()
            }
        responses[str(status)] = r
    for status in ep.error_statuses():
        responses.setdefault(
            str(status), {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
        )
    op["responses"] = responses
    return op


def build_document(
    registry: Registry, *, title: str = "notifyd", version: str = "0.1.0"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint in ``registry``."""
    paths: dict[str, dict[str, Any]] = {}
    for ep in registry.endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    tags = sorted({t for ep in registry.endpoints for t in ep.tags})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Streaming notification daemon on Kafka. Every error is JSON "
                "`{code, detail}` with a stable `code`. Key-addressed requests may be "
                "answered by another worker (the partition owner); the answer is the same."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": t} for t in tags],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": {
                name: {
                    "description": desc,
                    "content": {"application/json": {"schema": ref("Error")}},
                }
                for name, desc in _ERROR_RESPONSES.values()
            },
            "securitySchemes": copy.deepcopy(SECURITY_SCHEMES),
        },
    }


def _downgrade_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_downgrade_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _downgrade_schema(v) for k, v in node.items()}
    if "$ref" in out and len(out) > 1:
        out = {"$ref": out["$ref"]}
    t = out.get("type")
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        if len(rest) != 1:
            raise ValueError(f"cannot express type {t!r} in OpenAPI 3.0")
        out["type"] = rest[0]
        if "null" in t:
            out["nullable"] = True
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[key]
            if len(rest) == 1:
                out["allOf"] = rest
            else:
                out[key] = rest
            out["nullable"] = True
    if "examples" in out and isinstance(out["examples"], list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def to_openapi_30(doc: dict[str, Any]) -> dict[str, Any]:
    """The same document as OpenAPI 3.0.3, for tools that do not read 3.1 yet
    (the bundled Swagger UI 4 among them)."""
    out = copy.deepcopy(doc)
    out["openapi"] = "3.0.3"
    out.pop("jsonSchemaDialect", None)
    out["info"].get("license", {}).pop("identifier", None)
    components = out["components"]
    components["schemas"] = {k: _downgrade_schema(v) for k, v in components["schemas"].items()}
    components["responses"] = _downgrade_schema(components["responses"])
    for item in out["paths"].values():
        for op in item.values():
            for p in op.get("parameters", ()):
                p["schema"] = _downgrade_schema(p["schema"])
            body = op.get("requestBody")
            if body:
                for media in body["content"].values():
                    media["schema"] = _downgrade_schema(media["schema"])
            for resp in op["responses"].values():
                for media in resp.get("content", {}).values():
                    media["schema"] = _downgrade_schema(media["schema"])
    return out
