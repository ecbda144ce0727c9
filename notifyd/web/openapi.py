"""The route registry of the web view and the OpenAPI 3.1 document built from it.

Every route is declared once, on a :class:`Registry`: method, path, summary, who may
call it, the JSON schema of its body, its query parameters and its responses.  The
same declaration registers the aiohttp handler (``notifyd.web.api.v1``), validates the
request and feeds :func:`build_document`, so the document and the routes cannot
drift.  Routes whose handlers live elsewhere (``web.routes``: health, readiness,
table queries) are declared with :meth:`Registry.document`; a unit test compares
the document with the aiohttp router.

A body is declared by its model (``notifyd.model``): the registry converts the body
through it before the handler runs (:func:`check_body`), and the document's component
schemas are generated from the same classes (``msgspec.json.schema_components``), so
the contract clients see is the check the server runs.  Answers are declared by their
models too (``notifyd.model.responses``).  Query and path parameters are declared by
their types the same way.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta

from notifyd.errors import BadRequest
from notifyd.model.api import (
    InboxItemUpdate,
    LogoutRequest,
    RedriveRequest,
    RefreshRequest,
    TokenRequest,
    UserCreate,
)
from notifyd.model.event import NotificationCreate, expected_type, json_type_name
from notifyd.model.limits import MAX_ID_LEN
from notifyd.model.preferences import Preferences, PreferencesInput
from notifyd.model.responses import RESPONSES
from notifyd.model.status import NotificationStatus

T = TypeVar("T")

Auth = Literal["public", "user", "operator"]
Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
REF_PREFIX = "#/components/schemas/"


def ref(name: str) -> Schema:
    return {"$ref": REF_PREFIX + name}


#: The models whose schemas the document carries (with the ones they refer to): every
#: request body, and every answer.
MODELS: tuple[type[msgspec.Struct], ...] = (
    UserCreate, TokenRequest, RefreshRequest, LogoutRequest, PreferencesInput, Preferences,
    NotificationCreate, InboxItemUpdate, RedriveRequest, NotificationStatus, *RESPONSES,
)

#: A path parameter that names something by id (a user, a notification).
PATH_ID = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]


def _tidy(node: Any) -> Any:
    """msgspec's schema, as OpenAPI wants it: no empty ``required`` (3.0 forbids it)."""
    if isinstance(node, list):
        return [_tidy(x) for x in node]
    if not isinstance(node, dict):
        return node
    return {k: _tidy(v) for k, v in node.items() if not (k == "required" and v == [])}


@functools.cache
def _generated() -> dict[str, Schema]:
    _, components = msgspec.json.schema_components(MODELS, ref_template=REF_PREFIX + "{name}")
    out: dict[str, Schema] = _tidy(components)
    for model in MODELS:
        extra = getattr(model, "json_schema_extra", None)
        if extra:
            out[model.__name__].update(extra)
    return out


def schemas() -> dict[str, Schema]:
    """components/schemas: generated from :data:`MODELS`."""
    return copy.deepcopy(_generated())


_ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Invalid request (body, JSON, field or parameter)"),
    401: ("Unauthorized", "Missing, invalid, expired or revoked credentials"),
    403: ("Forbidden", "Authenticated but not allowed"),
    404: ("NotFound", "No such resource (or not yours)"),
    409: ("Conflict", "Conflicts with the current state"),
    413: ("PayloadTooLarge", "Request body exceeds the size limit"),
    422: ("Unprocessable", "Matches the schema, but a rule the schema cannot state refuses "
          "it (an impossible phone number, quiet hours that end when they start, a "
          "fallback chain out of order, a date too far ahead, a host the egress policy "
          "refuses)"),
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

#: A path parameter without a declared schema: an id.
ID_SCHEMA: Schema = {"type": "string", "minLength": 1, "maxLength": 200}


@dataclass(frozen=True)
class Param:
    """A query parameter: parsed from the string form, then checked by its type ``type``
    (e.g. ``Annotated[int, Meta(ge=1)]``), which also writes its schema."""

    name: str
    type: Any
    description: str = ""
    required: bool = False
    default: Any = UNSET
    #: The error code of a value its type refuses.
    code: str = "invalid_parameter"

    @property
    def schema(self) -> Schema:
        return type_schema(self.type, self.default)


def type_schema(tp: Any, default: Any = UNSET) -> Schema:
    """The JSON Schema of a parameter's type (no components: parameters are scalars)."""
    out = msgspec.json.schema(tp)
    if default is not UNSET:
        out["default"] = default
    return out


@dataclass(frozen=True)
class Resp:
    description: str
    schema: Schema | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description
    #: OpenAPI links: name -> Link object (what a client can call next with this answer).
    links: Mapping[str, dict[str, Any]] = field(default_factory=dict)


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
    #: The body's model: converted through it before the handler runs.
    body: type[msgspec.Struct] | None = None
    body_required: bool = True
    #: False: the handler converts the body through the same model itself, answering its
    #: own codes (``invalid_preferences``; an event's DLQ reason codes).
    validate_body: bool = True
    #: Also accept ``application/x-www-form-urlencoded`` bodies.
    form: bool = False
    query: tuple[Param, ...] = ()
    #: Path parameter name -> type (default :data:`PATH_ID`).
    path_params: dict[str, Any] = field(default_factory=dict)
    #: Error statuses besides the ones implied by auth, body and routing.
    errors: tuple[int, ...] = ()
    #: Key-addressed: may be proxied to the partition owner (503 while rebalancing).
    routed: bool = False
    operation_id: str = ""

    def path_param_schema(self, name: str) -> Schema:
        """The schema of path parameter ``name``: declared, else an id (1-200 chars)."""
        return type_schema(self.path_params.get(name, PATH_ID))

    def error_statuses(self) -> list[int]:
        out = set(self.errors)
        if self.auth != "public":
            out.add(401)
        if self.auth == "operator":
            out.add(403)
        if self.body is not None:
            out.update((400, 413, 422))
        if self.query or _path_param_names(self.path):
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

    def router_path(self, path: str) -> str:
        """``path`` for aiohttp's router.  In OpenAPI a concrete path wins over a
        templated one (``/notifications/stream`` is not ``/notifications/{id}`` with id
        ``stream``); aiohttp would try the template too, and answer a method only the
        template has (``DELETE /notifications/stream``), or list it in a 405's
        ``Allow``.  So a parameter never matches a literal segment that another declared
        path has in its place."""
        segs = path.split("/")
        shape = [_shape(s) for s in segs]
        out = list(segs)
        for i, seg in enumerate(segs):
            if shape[i] != "{}":
                continue
            literals = sorted({
                other[i]
                for other in (e.path.split("/") for e in self.endpoints)
                if len(other) == len(segs) and _shape(other[i]) != "{}"
                and [_shape(x) for x in other[:i]] == shape[:i]
                and [_shape(x) for x in other[i + 1:]] == shape[i + 1:]
            })
            if literals:
                taken = "|".join(re.escape(x) for x in literals)
                out[i] = f"{{{seg[1:-1]}:(?!(?:{taken})(?:/|$))[^{{}}/]+}}"
        return "/".join(out)

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


def _shape(segment: str) -> str:
    """A path segment with any parameter name erased: ``{}`` or the literal."""
    return "{}" if segment.startswith("{") and segment.endswith("}") else segment


# --- request checks: through the models -----------------------------------------------


def json_type(value: Any) -> str:
    return json_type_name(value)


def _name(path: str) -> str:
    return f"field '{path}'" if path else "request body"


def _value_at(data: Any, path: str) -> Any:
    """The value at a msgspec path (``.a[1].b``) of ``data``; None if there is none."""
    for dotted, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            data = data[dotted] if dotted else data[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _check_error(exc: msgspec.ValidationError, data: Any, root: str = "") -> BadRequest:
    """The 400 of a value a model refused, naming the field (its dotted location under
    ``root``) with the codes clients know: missing_field, wrong_type, unknown_field,
    invalid_value."""
    text = str(exc)
    m = re.search(r" - at (`key` in )?`\$(.*)`$", text)
    msg = text[: m.start()] if m else text
    at = m.group(2) if m else ""
    path = root + at if at.startswith("[") else _join(root, at.lstrip("."))
    if missing := re.match(r"Object missing required field `([^`]+)`", msg):
        return BadRequest(f"{_name(_join(path, missing.group(1)))} is required",
                          code="missing_field")
    if unknown := re.match(r"Object contains unknown field `([^`]+)`", msg):
        return BadRequest(f"{_name(_join(path, unknown.group(1)))} is not allowed",
                          code="unknown_field")
    if (expected := expected_type(msg)) is not None:
        actual = json_type(_value_at(data, at))
        return BadRequest(f"{_name(path)} must be {expected.replace(' or null', '')}, "
                          f"not {actual}", code="wrong_type")
    if bound := re.match(r"Expected `(str|array|object)` of length ([<>]=) (\d+)", msg):
        kind, op, n = bound.groups()
        if kind == "str":
            most = "at most" if op == "<=" else "at least"
            detail = f"must be {most} {n} characters"
        else:
            detail = f"holds at most {n} items" if op == "<=" else f"needs at least {n} item(s)"
        return BadRequest(f"{_name(path)} {detail}", code="invalid_value")
    if bound := re.match(r"Expected `(?:int|float)` ([<>]=?) (\S+)", msg):
        op, n = bound.groups()
        most = "at most" if op.startswith("<") else "at least"
        return BadRequest(f"{_name(path)} must be {most} {n}", code="invalid_value")
    if msg.startswith("Expected `str` matching regex"):
        return BadRequest(f"{_name(path)} has an invalid format", code="invalid_value")
    if msg.startswith("Invalid enum value"):
        return BadRequest(f"{_name(path)} is not one of the allowed values",
                          code="invalid_value")
    if not at and msg.startswith("needs at least"):  # a model's own rule (__post_init__)
        return BadRequest(f"request body {msg}", code="missing_field")
    return BadRequest(f"{_name(path)}: {msg}", code="invalid_value")


def check_body(model: type[T], data: Any) -> T:
    """``data`` (a decoded JSON object) converted through ``model``; 400 naming the field."""
    try:
        return msgspec.convert(data, model, strict=True)
    except msgspec.ValidationError as exc:
        raise _check_error(exc, data) from None


def check_value(tp: Any, value: Any, name: str) -> Any:
    """A single value (query or path parameter) converted through its type ``tp``."""
    try:
        return msgspec.convert(value, tp, strict=True)
    except msgspec.ValidationError as exc:
        raise _check_error(exc, value, name) from None


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
            if p.default is not UNSET:
                out[p.name] = p.default
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
            out[p.name] = check_value(p.type, value, p.name)
        except BadRequest as exc:
            raise BadRequest(
                "query parameter " + exc.detail.removeprefix("field "), code=p.code
            ) from None
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
            "schema": ep.path_param_schema(name),
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
        body = ref(ep.body.__name__)
        content: dict[str, Any] = {"application/json": {"schema": body}}
        if ep.form:
            content["application/x-www-form-urlencoded"] = {"schema": body}
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
        if resp.links:
            r["links"] = copy.deepcopy(dict(resp.links))
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
            "schemas": schemas(),
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
