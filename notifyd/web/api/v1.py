"""The versioned JSON API (``/api/v1``), the OpenAPI document and the Swagger UI.

Every handler is declared on :data:`registry` (see :mod:`notifyd.web.openapi`), which
registers it with aiohttp, checks auth, query and body before the handler runs, and
feeds ``GET /api/v1/openapi.json``.

Key-addressed requests (preferences and inbox by user id, status by notification id)
are first routed to the worker that owns the key's partition
(:func:`notifyd.web.routing.route`).  Writes are commands on a topic keyed by the
user; the agent that applies them runs on that same worker and resolves a waiter, so
the answer already carries the new state (read-your-writes).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import parse_qsl

import aiohttp
import faust
import msgspec
import orjson
import structlog
from aiohttp import web
from msgspec import Meta
from swagger_ui_bundle import swagger_ui_path
from yarl import URL

from notifyd import clock
from notifyd.domain.fallback import check_extras
from notifyd.egress import EgressPolicy, url_host
from notifyd.errors import (
    BadRequest,
    Forbidden,
    InvalidEvent,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    WebError,
)
from notifyd.model.api import (
    InboxItemUpdate,
    LogoutRequest,
    RedriveRequest,
    RefreshRequest,
    TokenRequest,
    UserCreate,
)
from notifyd.model.event import NotificationCreate
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.preferences import PreferencesInput
from notifyd.model.records import (
    InvalidPreferences,
    Preferences,
    dumps,
    parse_event,
    validate_preferences,
)
from notifyd.model.responses import (
    DeadLetter,
    DeadLetterPage,
    InboxItem,
    InboxPage,
    NotificationAccepted,
)
from notifyd.stream import dlq
from notifyd.stream.app import app, settings
from notifyd.stream.audience import check_topic_event
from notifyd.stream.redrive import redrive
from notifyd.stream.tables import inbox, preferences, status
from notifyd.stream.topics import control_topic, events_topic, names, preferences_topic
from notifyd.web.api.state import TABLE_QUERY
from notifyd.web.auth.setup import services
from notifyd.web.auth.users import (
    SESSION_COOKIE,
    UserService,
    clear_session_cookie,
    current_user,
    require_operator,
    require_user,
    set_session_cookie,
)
from notifyd.web.http import WRITE_TIMEOUT_S, caller, command, json_response
from notifyd.web.openapi import (
    PATH_ID,
    Call,
    Endpoint,
    Param,
    Resp,
    build_document,
    check_body,
    check_value,
    json_type,
    parse_query,
    ref,
)
from notifyd.web.registry import registry
from notifyd.web.routing import HTTP_CLIENT, is_local, owner_of, owner_unreachable, route

log = structlog.stdlib.get_logger("notifyd.web.api.v1")


#: Cookie tying an OIDC login to the browser that started it (login CSRF).
BINDING_COOKIE = "notifyd_oidc_binding"
_BINDING_PATH = "/api/v1/auth/"
_BINDING_TTL_S = 600
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# --- plumbing -----------------------------------------------------------------------


async def _read_body(request: web.Request, ep: Endpoint) -> dict[str, Any]:
    raw = await request.read()  # over client_max_size: 413 (error middleware)
    data: Any
    if ep.form and request.content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("request body is not valid form data", code="invalid_form") from None
        data = {}
        for k, v in pairs:
            if k in data:
                raise BadRequest(f"field '{k}' is given more than once", code="invalid_value")
            data[k] = v
    elif not raw.strip():
        if ep.body_required:
            raise BadRequest("request body is empty; expected a JSON object", code="invalid_json")
        data = {}
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"request body must be a JSON object, not {json_type(data)}", code="invalid_body"
        )
    if ep.validate_body and ep.body is not None:
        check_body(ep.body, data)
    return data


def _wrap(ep: Endpoint) -> Any:
    handler = ep.handler
    assert handler is not None
    param_names = [n for n in ep.path.replace("}", "{").split("{")[1::2]]

    async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
        if ep.auth == "public":
            user = current_user(request)
        elif ep.auth == "operator":
            user = require_operator(request)
        else:
            user = require_user(request)
        for name in param_names:
            try:
                check_value(ep.path_params.get(name, PATH_ID), request.match_info[name], name)
            except BadRequest as exc:
                raise BadRequest(
                    "path parameter " + exc.detail.removeprefix("field "),
                    code="invalid_parameter",
                ) from None
        query = parse_query(request.query, ep.query)
        body = await _read_body(request, ep) if ep.body is not None else None
        return await handler(Call(request, user, body, query))

    aiohttp_handler.__name__ = ep.operation_id
    aiohttp_handler.__qualname__ = ep.operation_id
    return aiohttp_handler


async def _acked(fut: Any, what: str) -> None:
    """Wait until the broker acknowledged a produced record (503 if it does not)."""
    try:
        await asyncio.wait_for(asyncio.shield(fut), WRITE_TIMEOUT_S)
    except TimeoutError:
        raise ServiceUnavailable(
            f"the broker did not acknowledge the {what} in time", code="broker_timeout"
        ) from None


def _secure_cookies(request: web.Request) -> bool:
    """Secure cookies over TLS, or when the public URLs are https (TLS proxy)."""
    return request.secure or any(
        url.startswith("https://")
        for url in (settings.oidc_redirect_url, settings.web_canonical_url)
    )


async def _seed_contacts(user_id: str, email: str | None, phone: str | None) -> None:
    """Copy sign-up contact data into the user's preferences (fire and forget)."""
    fields: dict[str, Any] = {}
    if email:
        fields["email"] = email
    if phone:
        fields["phone"] = phone
    if not fields:
        return
    try:
        await preferences_topic.send(
            key=user_id.encode(),
            value=dumps({"op": "patch", "user_id": user_id, "fields": fields,
                         "schema_version": SCHEMA_VERSION}),
        )
    except Exception:
        # The account exists either way; the user can still set preferences later.
        log.exception("api.seed_contacts_failed", user_id=user_id)


# --- routes documented here, handled in web.api.state --------------------------------

registry.document(
    "GET", "/healthz", summary="Liveness", auth="public", tags=("operations",),
    operation_id="healthz", responses={200: Resp("The process serves", ref("Health"))},
)
registry.document(
    "GET", "/readyz", summary="Readiness: recovered, not rebalancing, partitions assigned",
    auth="public", tags=("operations",), operation_id="readyz",
    responses={
        200: Resp("Ready", ref("Readiness")),
        503: Resp("Not ready (code not_ready)", ref("Readiness")),
    },
)
registry.document(
    "GET", "/api/v1/admin/tables/{table}/{key}", summary="Read one table entry",
    auth="operator", tags=("admin",), operation_id="admin_table_get", routed=True,
    description="Answered by the worker that holds the row, through any worker. Rows of "
    "seen, ledger and scheduled live in their user's partition: name the user.",
    query=TABLE_QUERY, errors=(404,), responses={200: Resp("The entry", ref("TableEntry"))},
)


def _refused(detail: str, code: str, rule: bool) -> WebError:
    """400 for what the published schema refuses, 422 for a rule it cannot state."""
    return Unprocessable(detail, code=code) if rule else BadRequest(detail, code=code)


# --- users and auth -------------------------------------------------------------------


def _check_contacts(body: dict[str, Any]) -> None:
    # The same rules the preferences agent applies, so the seeded patch is never rejected.
    for name in ("email", "phone"):
        if body.get(name) is not None:
            try:
                validate_preferences("", {name: body[name]}, partial=True)
            except InvalidPreferences as exc:
                raise _refused(str(exc), f"invalid_{name}", exc.rule) from None


@registry.route(
    "POST", "/api/v1/users", summary="Sign up (local user)", auth="public", tags=("users",),
    body=UserCreate, errors=(409,),
    description="Creates a user with the `user` role and seeds its preferences' "
    "email/phone. A taken username answers 409 `username_taken`.",
    responses={201: Resp("The new user", ref("User"))},
)
async def create_user(call: Call) -> web.StreamResponse:
    body = call.body
    _check_contacts(body)
    user = await services(call.request).users.create(
        body["username"], body["password"], body["email"], body.get("phone")
    )
    await _seed_contacts(user.user_id, user.email, user.phone)
    log.info("api.user_created", user_id=user.user_id)
    return json_response(user.public(), 201, headers={"Location": "/api/v1/users/me"})


@registry.route(
    "GET", "/api/v1/users/me", summary="The caller", auth="user", tags=("users",),
    errors=(404,), responses={200: Resp("The caller", ref("User"))},
)
async def get_me(call: Call) -> web.StreamResponse:
    me = caller(call)
    user = await services(call.request).users.get_by_id(me.user_id)
    if user is None:
        raise NotFound("this user no longer exists", code="user_not_found")
    return json_response(user.public())


@registry.route(
    "POST", "/api/v1/auth/token", summary="Log in with username and password",
    auth="public", tags=("auth",), body=TokenRequest, form=True, errors=(401, 429),
    description="JSON or form-encoded (OAuth2 password grant). Failed attempts are "
    "counted per username and client address.",
    responses={200: Resp("Tokens", ref("TokenResponse"))},
)
async def issue_token(call: Call) -> web.StreamResponse:
    body = call.body
    svc = services(call.request)
    user = await svc.users.authenticate(
        body["username"], body["password"], client_ip=call.request.remote
    )
    return json_response(await svc.tokens.issue(user, refresh=True), headers=_NO_STORE)


@registry.route(
    "POST", "/api/v1/auth/refresh", summary="Trade a refresh token for new tokens",
    auth="public", tags=("auth",), body=RefreshRequest, errors=(401,),
    description="Refresh tokens are single use: the old one stops working.",
    responses={200: Resp("New access and refresh token", ref("TokenResponse"))},
)
async def refresh_token(call: Call) -> web.StreamResponse:
    tokens = await services(call.request).tokens.refresh(call.body["refresh_token"])
    return json_response(tokens, headers=_NO_STORE)


@registry.route(
    "POST", "/api/v1/auth/logout", summary="Log out", auth="user", tags=("auth",),
    body=LogoutRequest, body_required=False,
    description="Revokes the presented access token (and the refresh token if given) "
    "and ends the browser session.",
    responses={204: Resp("Logged out")},
)
async def logout(call: Call) -> web.StreamResponse:
    me = caller(call)
    svc = services(call.request)
    if me.via == "bearer" and me.jti:
        await svc.tokens.revoke(me)
    if call.body.get("refresh_token"):
        await svc.tokens.revoke_refresh(call.body["refresh_token"])
    resp = web.Response(status=204, headers=_NO_STORE)
    session_id = call.request.cookies.get(SESSION_COOKIE)
    if session_id:
        await svc.sessions.delete(session_id)
        clear_session_cookie(resp)
    log.info("api.logout", user_id=me.user_id, via=me.via)
    return resp


@registry.route(
    "GET", "/api/v1/auth/login", summary="Start an OIDC login", auth="public",
    tags=("auth",), errors=(404, 503),
    description="Redirects to the identity provider and sets a short-lived cookie "
    "binding the login to this browser. 404 `oidc_not_configured` without a provider.",
    responses={
        302: Resp("To the provider's authorization endpoint",
                  headers={"Location": "provider authorize URL",
                           "Set-Cookie": f"{BINDING_COOKIE} (10 min)"}),
    },
)
async def oidc_login(call: Call) -> web.StreamResponse:
    oidc = services(call.request).oidc
    if oidc is None:
        # 404, not 503: the deployment offers no OIDC login; nothing is broken.
        raise NotFound("OIDC login is not configured on this server",
                       code="oidc_not_configured")
    binding = secrets.token_urlsafe(32)
    url = await oidc.login_redirect(binding=binding)
    resp = web.Response(status=302, headers={"Location": url, **_NO_STORE})
    resp.set_cookie(
        BINDING_COOKIE, binding, max_age=_BINDING_TTL_S, path=_BINDING_PATH,
        httponly=True, secure=_secure_cookies(call.request), samesite="Lax",
    )
    return resp


#: RFC 6749 appendix A: state and code are VSCHAR (printable ASCII), error and its
#: description NQSCHAR (the same without '"' and '\\').  ASCII also bounds the request
#: line: percent-encoded, these fit in notifyd.web.protocol.MAX_LINE_BYTES.
_VSCHAR = r"^[\x20-\x7E]*$"
_NQSCHAR = r"^[\x20\x21\x23-\x5B\x5D-\x7E]*$"
_CALLBACK_PARAMS = (
    Param("state", Annotated[str, Meta(max_length=256, pattern=_VSCHAR)], "from the provider"),
    Param("code", Annotated[str, Meta(max_length=4096, pattern=_VSCHAR)], "authorization code"),
    Param("error", Annotated[str, Meta(max_length=256, pattern=_NQSCHAR)],
          "the provider refused the login"),
    Param("error_description", Annotated[str, Meta(max_length=1024, pattern=_NQSCHAR)]),
)


@registry.route(
    "GET", "/api/v1/auth/callback", summary="Finish an OIDC login", auth="public",
    tags=("auth",), query=_CALLBACK_PARAMS, errors=(401, 404, 503),
    description="Verifies the login (state, PKCE, ID token), finds or creates the "
    "user, starts a browser session (cookie) and returns tokens. A provider `error` "
    "answers 401 `oidc_provider_error`.",
    responses={
        200: Resp("Tokens; also sets the session cookie", ref("TokenResponse"),
                  headers={"Set-Cookie": f"{SESSION_COOKIE} (HttpOnly, SameSite=Lax)"}),
    },
)
async def oidc_callback(call: Call) -> web.StreamResponse:
    svc = services(call.request)
    if svc.oidc is None:
        # 404, not 503: the deployment offers no OIDC login; nothing is broken.
        raise NotFound("OIDC login is not configured on this server",
                       code="oidc_not_configured")
    q = call.query
    if q.get("error"):
        desc = q.get("error_description")
        detail = f"the identity provider refused the login: {q['error']}"
        raise Unauthorized(f"{detail} ({desc})" if desc else detail, code="oidc_provider_error")
    if not q.get("state") or not q.get("code"):
        raise BadRequest("query parameters 'state' and 'code' are required",
                         code="missing_parameter")
    claims = await svc.oidc.callback(
        q["state"], q["code"], binding=call.request.cookies.get(BINDING_COOKIE)
    )
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is False:
        email = None
    user_id = UserService.external_user_id(claims["iss"], claims["sub"])
    is_new = await svc.users.get_by_id(user_id) is None
    user = await svc.users.upsert_external(claims["sub"], claims["iss"], email)
    tokens = await svc.tokens.issue(user, refresh=True)  # refuses disabled users
    session_id = await svc.sessions.create(user)
    if is_new:
        await _seed_contacts(user.user_id, user.email, None)
    resp = json_response(tokens, headers=_NO_STORE)
    secure = _secure_cookies(call.request)
    set_session_cookie(resp, session_id, max_age=svc.sessions.ttl_s, secure=secure)
    resp.del_cookie(BINDING_COOKIE, path=_BINDING_PATH)
    log.info("api.oidc_login", user_id=user.user_id, new=is_new)
    return resp


# --- preferences ----------------------------------------------------------------------


async def _get_preferences(call: Call, user_id: str) -> web.StreamResponse:
    routed = await route(call.request, "preferences", user_id)
    if routed is not None:
        return routed
    doc = preferences.get(user_id) or Preferences(user_id=user_id).to_dict()
    return json_response(doc)


def _check_destinations(fields: dict[str, Any]) -> None:
    """Refuse now what the egress policy would surely refuse at delivery (a literal
    denied address, ``localhost``): better UX.  Host names are judged on what they
    resolve to when the worker connects, which is the real guard (notifyd.egress)."""
    policy = EgressPolicy.from_settings(settings)
    urls = [("webhook_url", fields.get("webhook_url"))]
    urls += [("apprise_urls", u) for u in fields.get("apprise_urls") or []]
    for name, url in urls:
        host = url_host(url) if url else None
        label = policy.host_denial(host) if host else None
        if label is not None:
            raise Unprocessable(
                f"{name}: host {host!r} is refused by the egress policy ({label}); "
                "notifyd does not deliver to internal addresses",
                code="invalid_preferences",
            )


async def _write_preferences(call: Call, user_id: str, op: str) -> web.StreamResponse:
    try:
        fields = validate_preferences(user_id, call.body, partial=(op == "patch"))
    except InvalidPreferences as exc:
        raise _refused(str(exc), "invalid_preferences", exc.rule) from None
    _check_destinations(fields)
    routed = await route(call.request, "preferences", user_id)
    if routed is not None:
        return routed
    doc = await command(
        preferences_topic, user_id, {"op": op, "user_id": user_id, "fields": fields},
        "preferences update",
    )
    return json_response(doc)


_PREFS_OK = {200: Resp("The preferences (defaults if never set)", ref("Preferences"))}
_PREFS_WRITTEN = {200: Resp("The stored preferences, already applied", ref("Preferences"))}
_PREFS_WRITE_DOC = (
    "Validated (400 `invalid_preferences`), then applied by the owner of the user's "
    "partition; the answer is the new document."
)


@registry.route(
    "GET", "/api/v1/preferences", summary="My preferences", auth="user",
    tags=("preferences",), routed=True, responses=_PREFS_OK,
)
async def get_my_preferences(call: Call) -> web.StreamResponse:
    return await _get_preferences(call, caller(call).user_id)


@registry.route(
    "PUT", "/api/v1/preferences", summary="Replace my preferences", auth="user",
    tags=("preferences",), routed=True, body=PreferencesInput, validate_body=False,
    description=_PREFS_WRITE_DOC, responses=_PREFS_WRITTEN,
)
async def put_my_preferences(call: Call) -> web.StreamResponse:
    return await _write_preferences(call, caller(call).user_id, "put")


@registry.route(
    "PATCH", "/api/v1/preferences", summary="Change some of my preferences", auth="user",
    tags=("preferences",), routed=True, body=PreferencesInput, validate_body=False,
    description=_PREFS_WRITE_DOC, responses=_PREFS_WRITTEN,
)
async def patch_my_preferences(call: Call) -> web.StreamResponse:
    return await _write_preferences(call, caller(call).user_id, "patch")


@registry.route(
    "GET", "/api/v1/users/{user_id}/preferences", summary="A user's preferences",
    auth="operator", tags=("preferences", "admin"), routed=True, responses=_PREFS_OK,
)
async def get_user_preferences(call: Call) -> web.StreamResponse:
    return await _get_preferences(call, call.path["user_id"])


@registry.route(
    "PUT", "/api/v1/users/{user_id}/preferences", summary="Replace a user's preferences",
    auth="operator", tags=("preferences", "admin"), routed=True,
    body=PreferencesInput, validate_body=False, description=_PREFS_WRITE_DOC,
    responses=_PREFS_WRITTEN,
)
async def put_user_preferences(call: Call) -> web.StreamResponse:
    return await _write_preferences(call, call.path["user_id"], "put")


# --- notifications --------------------------------------------------------------------


_BY_ID = {"notification_id": "$response.body#/notification_id"}
#: What a client does next with an accepted notification (null id for a topic's).
_NOTIFICATION_LINKS = {
    "GetNotification": {"operationId": "get_notification", "parameters": _BY_ID,
                        "description": "its delivery status"},
    "UpdateNotification": {"operationId": "update_notification", "parameters": _BY_ID,
                           "description": "mark it read or archive it (in-app)"},
    "DeleteNotification": {"operationId": "delete_notification", "parameters": _BY_ID,
                           "description": "cancel it, or delete it from the inbox"},
}


@registry.route(
    "POST", "/api/v1/notifications", summary="Send a notification", auth="user",
    tags=("notifications",), body=NotificationCreate, validate_body=False,
    errors=(403, 503),
    description="Validated like an event on the events topic (400 with the reason's "
    "code, e.g. `unknown_channel`), then produced keyed by the recipient. `user_id` "
    "defaults to the caller; only operators may notify someone else. `event_id` makes "
    "the request idempotent for its recipient. `send_at` (RFC 3339 with offset) or "
    "`delay_s` schedule it: every channel is `scheduled` until then, then the rules apply "
    "as if it arrived at that moment (400 `ambiguous_schedule` for both, "
    "`schedule_too_far` beyond NOTIFYD_MAX_SCHEDULE_DAYS). `digest` collects it into a "
    "digest (`{\"window\": \"1h\"}` or `daily@09:00`). With `topic` and no "
    "`user_id` (operators only) every subscriber of the topic gets their own notification.",
    responses={
        202: Resp("Accepted for delivery", ref("NotificationAccepted"),
                  headers={"Location": "the notification's status URL"},
                  links=_NOTIFICATION_LINKS),
    },
)
async def create_notification(call: Call) -> web.StreamResponse:
    me = caller(call)
    event = dict(call.body)
    if event.get("topic") is not None and event.get("user_id") is None:
        return await _create_topic_notification(call, event)
    if event.get("user_id") is None:
        event["user_id"] = me.user_id
    if event.get("event_id") is None:
        event["event_id"] = str(uuid.uuid4())
    event.setdefault("schema_version", SCHEMA_VERSION)
    raw = dumps(event)
    try:
        parsed = parse_event(raw, settings.max_event_bytes)
        check_extras(parsed)  # callback_url, fallback (notifyd.domain.fallback)
        parsed.due(clock.now(), settings.max_schedule_days)  # too far ahead: 400 here
    except InvalidEvent as exc:
        code, sep, detail = exc.reason.partition(": ")
        raise _refused(detail if sep else exc.reason, code if sep else "invalid_event",
                       exc.rule) from None
    if parsed.user_id != me.user_id and not me.is_operator:
        raise Forbidden("only operators may notify other users", code="forbidden_recipient")
    fut = await events_topic.send(key=parsed.user_id.encode(), value=raw)
    await _acked(fut, "notification")
    nid = parsed.notification_id
    log.info("api.notification_accepted", notification_id=nid, user_id=parsed.user_id)
    return json_response(
        msgspec.to_builtins(NotificationAccepted(notification_id=nid, event_id=parsed.event_id)),
        202, headers={"Location": f"/api/v1/notifications/{nid}"},
    )


async def _create_topic_notification(call: Call, event: dict[str, Any]) -> web.StreamResponse:
    """An operator's event to every subscriber of ``topic`` (notifyd.stream.audience)."""
    if not caller(call).is_operator:
        raise Forbidden("only operators may notify a topic", code="forbidden_recipient")
    if event.get("event_id") is None:
        event["event_id"] = str(uuid.uuid4())
    try:
        topic = check_topic_event(event, settings.max_event_bytes)
    except InvalidEvent as exc:
        code, sep, detail = exc.reason.partition(": ")
        raise _refused(detail if sep else exc.reason, code if sep else "invalid_event",
                       exc.rule) from None
    fut = await events_topic.send(key=topic.encode(), value=dumps(event))
    await _acked(fut, "notification")
    log.info("api.topic_notification_accepted", topic=topic, event_id=event["event_id"])
    accepted = NotificationAccepted(notification_id=None, event_id=event["event_id"], topic=topic)
    return json_response(msgspec.to_builtins(accepted), 202)


@registry.route(
    "GET", "/api/v1/notifications", summary="My inbox", auth="user",
    tags=("notifications",), routed=True,
    query=(
        Param("unread", bool,
              "true: only unread items, false: only read ones; all when absent"),
        Param("archived", bool, default=False, description=
              "list archived (true) or unarchived (false) items"),
        Param("limit", Annotated[int, Meta(ge=1, le=200)], default=50),
        Param("offset", Annotated[int, Meta(ge=0)], default=0),
    ),
    responses={200: Resp("One page of the in-app inbox, newest first", ref("InboxPage"))},
)
async def list_notifications(call: Call) -> web.StreamResponse:
    me = caller(call)
    routed = await route(call.request, "inbox", me.user_id)
    if routed is not None:
        return routed
    q = call.query
    box = inbox.get(me.user_id) or {"items": [], "unread": 0}
    items = [
        it for it in box["items"]
        if bool(it.get("archived")) == q["archived"]
        and (q.get("unread") is None or (not it.get("read")) == q["unread"])
    ]
    offset, limit = q["offset"], q["limit"]
    page = InboxPage(
        # Rows of the inbox table, written in this shape by the in-app provider.
        items=cast(list[InboxItem], items[offset: offset + limit]),
        unread=box.get("unread", 0),
        total=len(items),
        limit=limit,
        offset=offset,
    )
    return json_response(msgspec.to_builtins(page))


def _not_found(nid: str) -> NotFound:
    return NotFound(f"no notification {nid!r} for you", code="notification_not_found")


@registry.route(
    "GET", "/api/v1/notifications/{notification_id}", summary="Delivery status",
    auth="user", tags=("notifications",), routed=True, errors=(404,),
    description="Per-channel delivery state. Another user's notification is 404 "
    "(operators see all: with ``user_id``, the notification's user, the look-up goes "
    "straight to the worker holding it; without, every worker is asked).",
    query=(Param("user_id", PATH_ID, "operators: the notification's user"),),
    responses={200: Resp("The status document", ref("NotificationStatus"))},
)
async def get_notification(call: Call) -> web.StreamResponse:
    nid = call.path["notification_id"]
    doc = await _status_doc(call, nid)
    if doc is None:
        raise _not_found(nid)
    return json_response({k: v for k, v in doc.items() if k != "p"})


def _inbox_item(box: dict[str, Any] | None, nid: str) -> dict[str, Any] | None:
    for item in (box or {}).get("items", ()):
        if item.get("id") == nid:
            return dict(item)
    return None


async def _inbox_command(user_id: str, action: str, nid: str) -> dict[str, Any] | None:
    box: dict[str, Any] | None = await command(
        control_topic, user_id,
        {"op": "inbox", "user_id": user_id, "action": action, "ids": [nid]},
        "inbox update",
    )
    return box


@registry.route(
    "PATCH", "/api/v1/notifications/{notification_id}", summary="Mark read / archive",
    auth="user", tags=("notifications",), routed=True, body=InboxItemUpdate,
    errors=(404,), responses={200: Resp("The updated inbox item", ref("InboxItem"))},
)
async def update_notification(call: Call) -> web.StreamResponse:
    me = caller(call)
    nid = call.path["notification_id"]
    routed = await route(call.request, "inbox", me.user_id)
    if routed is not None:
        return routed
    box: dict[str, Any] | None = inbox.get(me.user_id)
    if _inbox_item(box, nid) is None:
        raise _not_found(nid)
    if "read" in call.body:
        box = await _inbox_command(me.user_id, "read" if call.body["read"] else "unread", nid)
    if "archived" in call.body:
        action = "archive" if call.body["archived"] else "unarchive"
        box = await _inbox_command(me.user_id, action, nid)
    item = _inbox_item(box, nid)
    if item is None:  # deleted concurrently
        raise _not_found(nid)
    return json_response(item)


#: Channel states a cancel can still change.
_CANCELLABLE = frozenset({"scheduled", "queued", "deferred", "retrying", "digested"})
_PENDING = frozenset({"scheduled", "queued", "deferred", "retrying"})
#: How long ``DELETE`` waits for the cancel to show in the status document.
CANCEL_WAIT_S = 5.0


@registry.route(
    "DELETE", "/api/v1/notifications/{notification_id}",
    summary="Cancel what is pending, or delete from my inbox",
    auth="user", tags=("notifications",), routed=True, errors=(404, 503),
    description="An item of the caller's in-app inbox is deleted from it (204). Otherwise "
    "the notification is cancelled (owner or operator): every channel still `scheduled`, "
    "`queued`, `deferred`, `retrying` or collected in an open digest becomes `cancelled`; "
    "a channel already sent stays `sent`. The cancel is produced to the events topic keyed "
    "by the recipient (as `{\"op\": \"cancel\"}` from a producer); the answer is the "
    "status document once the cancel shows in it (200), or as it is when that takes longer "
    "than a few seconds (202). Cancelling twice is harmless (200). 404 for an unknown id, "
    "another user's notification, or one with nothing left to cancel.",
    responses={
        200: Resp("Cancelled: the resulting channel states", ref("NotificationStatus")),
        202: Resp("Cancel accepted; the channel states so far", ref("NotificationStatus")),
        204: Resp("Deleted from the inbox"),
    },
)
async def delete_notification(call: Call) -> web.StreamResponse:
    me = caller(call)
    nid = call.path["notification_id"]
    routed = await route(call.request, "inbox", me.user_id)
    if routed is not None:
        return routed
    if _inbox_item(inbox.get(me.user_id), nid) is not None:
        await _inbox_command(me.user_id, "delete", nid)
        return web.Response(status=204)
    doc = await _status_doc(call, nid)
    if doc is None or not isinstance(doc.get("event_id"), str):
        raise _not_found(nid)
    states = {e.get("status") for e in doc.get("channels", {}).values()}
    if "cancelled_at" not in doc and not states & _CANCELLABLE:
        raise _not_found(nid)
    user_id = str(doc["user_id"])
    cancel = {"op": "cancel", "user_id": user_id, "event_id": doc["event_id"]}
    fut = await events_topic.send(key=user_id.encode(), value=dumps(cancel))
    await _acked(fut, "cancel")
    log.info("api.cancel_requested", notification_id=nid, user_id=user_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WAIT_S
    while True:
        doc = await _status_doc(call, nid) or doc
        done = "cancelled_at" in doc and not any(
            e.get("status") in _PENDING for e in doc.get("channels", {}).values()
        )
        if done or loop.time() >= deadline:
            body = {k: v for k, v in doc.items() if k != "p"}
            return json_response(body, 200 if done else 202)
        await asyncio.sleep(0.05)  # polling the status fold, bounded by the deadline


#: Asks a worker for the status rows it holds itself (the look-up that sends it has
#: chosen the worker; only narrows the search, the caller's rights apply as ever).
OWN_ROWS_HEADER = "X-Notifyd-Own-Rows"


async def _status_doc(call: Call, nid: str) -> dict[str, Any] | None:
    """The caller's view of a status document (None: unknown or not theirs).

    A row lives in its user's partition: the caller's own, or for an operator the
    ``user_id`` given (without one, every worker is asked).  A row from before rows
    moved there lives in the notification id's partition, asked next.  A worker asked
    by another (``OWN_ROWS_HEADER``) answers from its own rows only."""
    me = caller(call)
    if call.request.headers.get(OWN_ROWS_HEADER):
        return _visible(status.get(nid), me)
    user_id = call.query.get("user_id") if me.is_operator else None
    if me.is_operator and user_id is None:
        owners = [URL(url) for url in app.router.table_metadata("status")] or [
            owner_of("status", nid)
        ]
    else:
        owners = [owner_of("status", user_id or me.user_id), owner_of("status", nid)]
    asked: set[URL] = set()
    for owner in owners:
        if owner in asked:
            continue
        asked.add(owner)
        doc = _visible(status.get(nid), me) if is_local(owner) else await _ask_owner(
            call, owner, nid
        )
        if doc is not None:
            return doc
    return None


def _visible(doc: dict[str, Any] | None, me: Any) -> dict[str, Any] | None:
    if doc is None or (doc.get("user_id") != me.user_id and not me.is_operator):
        return None
    return doc


async def _ask_owner(call: Call, owner: URL, nid: str) -> dict[str, Any] | None:
    """``owner``'s own status row of ``nid`` as the caller may see it."""
    keep = ("authorization", "cookie", "host", "origin")
    headers = {k: v for k, v in call.request.headers.items() if k.lower() in keep}
    headers[OWN_ROWS_HEADER] = "1"
    url = owner.with_path(f"/api/v1/notifications/{nid}")
    try:
        async with call.request.app[HTTP_CLIENT].get(url, headers=headers) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise ServiceUnavailable(
                    f"the worker owning this notification answered {resp.status}",
                    code="owner_unreachable",
                )
            got: dict[str, Any] = orjson.loads(await resp.read())
            return got
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise owner_unreachable(owner, exc) from exc


# --- operators ------------------------------------------------------------------------


@registry.route(
    "GET", "/api/v1/admin/dlq", summary="Recent dead letters", auth="operator",
    tags=("admin",), errors=(503,),
    query=(
        Param("topic", Literal["events", "deliveries"], default="events", description=
              "events: rejected events; deliveries: deliveries that ran out of retries"),
        Param("limit", Annotated[int, Meta(ge=1, le=500)], default=50),
    ),
    responses={200: Resp("Newest first", ref("DeadLetterPage"))},
)
async def admin_dlq(call: Call) -> web.StreamResponse:
    topic = names.events_dlq if call.query["topic"] == "events" else names.deliveries_dlq
    items = await dlq.recent_dead_letters(settings.bootstrap_servers, topic, call.query["limit"])
    # dlq.record_to_dict writes each record in the shape of DeadLetter.
    page = DeadLetterPage(topic=topic, items=cast(list[DeadLetter], items))
    return json_response(msgspec.to_builtins(page))


@registry.route(
    "POST", "/api/v1/admin/dlq/redrive", summary="Re-drive dead letters", auth="operator",
    tags=("admin",), body=RedriveRequest, errors=(503,),
    description="Once the cause is fixed: dead deliveries go back to their channel with a "
    "fresh attempt count (a delivery meanwhile sent is not sent again); dead events go back "
    "to the events topic with their original bytes. Give `notification_ids` or `all: true`.",
    responses={200: Resp("What was re-driven", ref("RedriveResult"))},
)
async def admin_dlq_redrive(call: Call) -> web.StreamResponse:
    body = call.body
    wanted = [n.encode() for n in body.get("notification_ids") or []]
    if not wanted and not body.get("all"):
        raise Unprocessable("give notification_ids or all: true", code="missing_field")

    def select(rec: Any) -> bool:
        return bool(body.get("all")) or any(n in (rec.value or b"") for n in wanted)

    try:
        result = await redrive(settings, body["topic"], select)
    except Exception as exc:  # broker unreachable
        raise ServiceUnavailable(f"re-drive failed: {type(exc).__name__}: {exc}",
                                 code="broker_unavailable") from exc
    return json_response(msgspec.to_builtins(result))


# --- the document and the UI -------------------------------------------------------------


@functools.cache
def openapi_document() -> dict[str, Any]:
    return build_document(registry)


@functools.cache
def _openapi_bytes() -> bytes:
    return dumps(openapi_document())


@registry.route(
    "GET", "/api/v1/openapi.json", summary="This API as OpenAPI 3.1", auth="public",
    tags=("meta",), responses={200: Resp("The OpenAPI document", {"type": "object"})},
)
async def openapi_json(call: Call) -> web.StreamResponse:
    return web.Response(body=_openapi_bytes(), content_type="application/json")


_DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<title>notifyd API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="stylesheet" href="/docs/static/index.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script>
window.onload = function () {
  // Swagger UI 5 (swagger-ui-bundle-v2) reads the OpenAPI 3.1 document as served.
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
};
</script>
</body>
</html>
"""


@registry.route(
    "GET", "/docs", summary="Swagger UI", auth="public", tags=("meta",),
    responses={200: Resp("HTML page", {"type": "string"}, content_type="text/html")},
)
async def docs(call: Call) -> web.StreamResponse:
    return web.Response(text=_DOCS_HTML, content_type="text/html")


#: The Swagger UI files shipped by swagger-ui-bundle, served from the daemon (no CDN).
_ASSETS: dict[str, Path] = {
    p.name: p for p in Path(swagger_ui_path).iterdir()
    if p.is_file() and p.suffix in {".js", ".css", ".png", ".map"}
    # The stock initializer points at the petstore demo; /docs has its own.
    and p.name != "swagger-initializer.js"
}


@registry.route(
    "GET", "/docs/static/{asset}", summary="Swagger UI assets", auth="public",
    tags=("meta",), errors=(404,),
    path_params={"asset": Annotated[str, Meta(max_length=100)]},
    responses={200: Resp("The file (JavaScript, CSS, image)", {"type": "string"},
                         content_type="*/*")},
)
async def docs_asset(call: Call) -> web.StreamResponse:
    # A handler instead of a static route: unknown files get the JSON 404 of the API
    # (aiohttp's static FileResponse answers an empty 404 the middleware never sees).
    path = _ASSETS.get(call.path["asset"])
    if path is None:
        raise NotFound(f"no asset {call.path['asset']!r}", code="not_found")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


def make_api_routes(app: faust.App) -> list[web.AbstractRouteDef]:
    """aiohttp route definitions of every registry endpoint with a handler here."""
    return [
        web.route(ep.method, registry.router_path(ep.path), _wrap(ep))
        for ep in registry.endpoints
        if ep.handler is not None
    ]
