"""Issue "Web view": the /api/v1 JSON API on Apache Kafka + Redis with two workers.

Every endpoint is called through both workers: key-addressed requests land on either
the partition owner or a worker that proxies to it, and the answers must not differ
(read-your-writes included).  The OIDC login runs against a real local provider.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiokafka.partitioner import murmur2
from openapi_spec_validator import validate as validate_spec

from notifyd.model.records import idempotency_scope, notification_id_for
from notifyd.tools.broker.base import free_port
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import JWT_SECRET, LoopThread, Sinks, Stack, new_id, wait_for
from tests.support.oidc_provider import OidcTestProvider
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
_NO_BODY = object()


# --- HTTP as a browser/client would do it (no automatic redirects) --------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # surface 3xx to the test


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class Reply:
    status: int
    headers: Message
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("Set-Cookie") or ():
            jar.load(value)
        return {k: m.value for k, m in jar.items()}

    def error(self, status: int, code: str) -> str:
        """Assert an error answer: this status, exactly {code, detail}, this code."""
        assert self.status == status, (self.status, self.raw[:500])
        assert self.headers.get_content_type() == "application/json"
        body = self.body
        assert isinstance(body, dict) and set(body) == {"code", "detail"}, body
        assert body["code"] == code, body
        assert isinstance(body["detail"], str) and body["detail"]
        return str(body["detail"])

    def ok(self, status: int = 200) -> Any:
        assert self.status == status, (self.status, self.raw[:500])
        return self.body


def http(method: str, url: str, body: Any = _NO_BODY, *, token: str | None = None,
         data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 20) -> Reply:
    hdrs = dict(headers or {})
    if body is not _NO_BODY:
        data = orjson.dumps(body)
        hdrs.setdefault("Content-Type", "application/json")
    elif data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


@dataclass
class Client:
    """One user talking to the workers of the stack."""

    stack: Stack
    username: str
    user_id: str = ""
    token: str = ""
    refresh: str = ""

    def url(self, i: int, path: str) -> str:
        return f"{self.stack.workers[i].url}{path}"

    def call(self, i: int, method: str, path: str, body: Any = _NO_BODY, **kw: Any) -> Reply:
        kw.setdefault("token", self.token)
        return http(method, self.url(i, path), body, **kw)


def signup(stack: Stack, worker: int, prefix: str = "u", phone: str | None = None) -> Client:
    c = Client(stack, new_id(prefix).replace("-", "_"))
    body: dict[str, Any] = {"username": c.username, "password": PASSWORD,
                            "email": f"{c.username}@example.com"}
    if phone:
        body["phone"] = phone
    user = http("POST", c.url(worker, "/api/v1/users"), body).ok(201)
    assert user["username"] == c.username and user["roles"] == ["user"]
    assert "password_hash" not in user
    c.user_id = user["user_id"]
    tokens = http("POST", c.url(1 - worker, "/api/v1/auth/token"),
                  {"username": c.username, "password": PASSWORD}).ok()
    c.token, c.refresh = tokens["access_token"], tokens["refresh_token"]
    return c


def op_token(stack: Stack) -> str:
    return stack.operator_token


# --- the stack: two workers, Redis credentials, a real OIDC provider --------------------


@dataclass
class Idp:
    provider: OidcTestProvider
    #: Where the provider sends the browser back: the address of the load balancer in
    #: front of the workers.  The test plays browser and load balancer, and delivers
    #: each callback to the worker it chooses.
    redirect_url: str


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    lt = LoopThread()
    provider = OidcTestProvider()
    lt.call(provider.start())
    try:
        yield Idp(provider, f"http://127.0.0.1:{free_port()}/api/v1/auth/callback")
    finally:
        lt.call(provider.stop())
        lt.close()


@pytest.fixture(scope="module")
def api(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, idp: Idp,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("api")
    env = {
        "NOTIFYD_OIDC_DISCOVERY_URL": idp.provider.discovery_url,
        "NOTIFYD_OIDC_CLIENT_ID": idp.provider.client_id,
        "NOTIFYD_OIDC_CLIENT_SECRET": idp.provider.client_secret,
        "NOTIFYD_OIDC_REDIRECT_URL": idp.redirect_url,
    }
    st = start_stack(kafka.url, kafka.bootstrap, root, "api", sinks, env, workers=2,
                     redis_url=redis.url)
    # Both workers must own partitions, else nothing is ever proxied.
    for w in st.workers:
        w.wait_ready()
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()


BOTH = (0, 1)


# --- users and password login -------------------------------------------------------


async def test_signup_login_refresh_logout(api: Stack) -> None:
    for w in BOTH:
        c = signup(api, w)
        other = 1 - w
        # Duplicate username (case-insensitively) through the other worker.
        dup = http("POST", c.url(other, "/api/v1/users"),
                   {"username": c.username.upper(), "password": PASSWORD,
                    "email": "x@example.com"})
        dup.error(409, "username_taken")
        for i in BOTH:
            me = c.call(i, "GET", "/api/v1/users/me").ok()
            assert me["user_id"] == c.user_id and me["email"] == f"{c.username}@example.com"
        # Form-encoded login (OAuth2 password grant) through this worker.
        form = urllib.parse.urlencode({"grant_type": "password", "username": c.username,
                                       "password": PASSWORD}).encode()
        r = http("POST", c.url(w, "/api/v1/auth/token"), data=form,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        tokens = r.ok()
        assert tokens["token_type"] == "bearer" and tokens["expires_in"] > 0
        assert r.headers["Cache-Control"] == "no-store"
        http("POST", c.url(w, "/api/v1/auth/token"),
             {"username": c.username, "password": "wrong password!"}).error(
                 401, "invalid_credentials")
        http("POST", c.url(w, "/api/v1/auth/token"), {"username": c.username}).error(
            400, "missing_field")
        # Refresh through the other worker; the old refresh token dies.
        fresh = http("POST", c.url(other, "/api/v1/auth/refresh"),
                     {"refresh_token": c.refresh}).ok()
        assert fresh["refresh_token"] != c.refresh
        http("POST", c.url(w, "/api/v1/auth/refresh"), {"refresh_token": c.refresh}).error(
            401, "refresh_token_invalid")
        c.call(other, "GET", "/api/v1/users/me", token=fresh["access_token"]).ok()
        # Logout revokes the presented token (and the given refresh token) everywhere.
        c.call(w, "POST", "/api/v1/auth/logout", {"refresh_token": fresh["refresh_token"]},
               token=fresh["access_token"]).ok(204)
        for i in BOTH:
            c.call(i, "GET", "/api/v1/users/me", token=fresh["access_token"]).error(
                401, "token_revoked")
        http("POST", c.url(other, "/api/v1/auth/refresh"),
             {"refresh_token": fresh["refresh_token"]}).error(401, "refresh_token_invalid")
        # Other tokens of the same user still work; logout with an empty body works too.
        c.call(other, "GET", "/api/v1/users/me").ok()
        c.call(other, "POST", "/api/v1/auth/logout").ok(204)
        c.call(w, "GET", "/api/v1/users/me").error(401, "token_revoked")


async def test_expired_garbage_and_missing_tokens_are_refused(api: Stack) -> None:
    c = signup(api, 0)
    now = int(time.time())
    expired = jwt.encode(
        {"sub": c.user_id, "username": c.username, "roles": ["user"], "iss": "notifyd",
         "aud": "notifyd-api", "iat": now - 120, "nbf": now - 120, "exp": now - 60,
         "jti": str(uuid.uuid4())},
        JWT_SECRET, algorithm="HS256",
    )
    forged = jwt.encode(
        {"sub": c.user_id, "roles": ["operator"], "iss": "notifyd", "aud": "notifyd-api",
         "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())},
        "not-the-secret-" * 4, algorithm="HS256",
    )
    for i in BOTH:
        c.call(i, "GET", "/api/v1/users/me", token=expired).error(401, "token_expired")
        c.call(i, "GET", "/api/v1/preferences", token=forged).error(401, "token_invalid")
        c.call(i, "GET", "/api/v1/notifications", token=None).error(401, "not_authenticated")
        c.call(i, "GET", "/api/v1/users/me", token=None,
               headers={"Authorization": "Basic Zm9vOmJhcg=="}).error(401, "token_invalid")


async def test_signup_validation_errors(api: Stack) -> None:
    url = f"{api.workers[1].url}/api/v1/users"
    http("POST", url, data=b"{nope").error(400, "invalid_json")
    http("POST", url, data=b"[]").error(400, "invalid_body")
    assert "'email'" in http("POST", url, {"username": "abcd", "password": PASSWORD}).error(
        400, "missing_field")
    assert "'username'" in http("POST", url, {"username": ["x"], "password": PASSWORD,
                                              "email": "a@example.com"}).error(400, "wrong_type")
    http("POST", url, {"username": "a b", "password": PASSWORD,
                       "email": "a@example.com"}).error(400, "invalid_value")
    http("POST", url, {"username": "abcd", "password": PASSWORD,
                       "email": "not-an-email"}).error(400, "invalid_email")
    http("POST", url, data=b"{" + b" " * 70_000 + b"}").error(413, "payload_too_large")


# --- OIDC login -------------------------------------------------------------------------


def _oidc_login(api: Stack, idp: Idp, start: int, finish: int) -> tuple[Reply, str]:
    """Drive the browser: /auth/login on ``start`` -> provider -> callback on ``finish``."""
    login = http("GET", f"{api.workers[start].url}/api/v1/auth/login")
    assert login.status == 302, login.raw
    authorize = login.headers["Location"]
    assert authorize.startswith(idp.provider.authorize_url)
    binding = login.cookies()["notifyd_oidc_binding"]
    assert "httponly" in login.headers["Set-Cookie"].lower()
    back = http("GET", authorize)
    assert back.status == 302, back.raw
    location = urllib.parse.urlsplit(back.headers["Location"])
    assert location.path == "/api/v1/auth/callback"
    params = dict(urllib.parse.parse_qsl(location.query))
    assert set(params) == {"code", "state"}
    reply = http("GET", f"{api.workers[finish].url}/api/v1/auth/callback?{location.query}",
                 headers={"Cookie": f"notifyd_oidc_binding={binding}"})
    return reply, location.query


async def test_oidc_login_through_both_workers(api: Stack, idp: Idp) -> None:
    user_ids = set()
    for start, finish in ((0, 1), (1, 0), (1, 1)):
        reply, query = _oidc_login(api, idp, start, finish)
        tokens = reply.ok()
        assert tokens["token_type"] == "bearer" and tokens["refresh_token"]
        session = reply.cookies()["notifyd_session"]
        assert session
        for i in BOTH:
            me = http("GET", f"{api.workers[i].url}/api/v1/users/me",
                      token=tokens["access_token"]).ok()
            assert me["username"].startswith("oidc-")
            assert me["email"] == idp.provider.user.email
            # The browser session alone authenticates too.
            via_cookie = http("GET", f"{api.workers[i].url}/api/v1/users/me",
                              headers={"Cookie": f"notifyd_session={session}"}).ok()
            assert via_cookie["user_id"] == me["user_id"]
            user_ids.add(me["user_id"])
        # The callback cannot be replayed.
        http("GET", f"{api.workers[1 - finish].url}/api/v1/auth/callback?{query}").error(
            401, "oidc_state_invalid")
    assert len(user_ids) == 1  # the same person maps to one user
    user_id = user_ids.pop()
    # New external users get their e-mail seeded into preferences.
    w0 = api.workers[0]
    await wait_for(
        lambda: (w0.table("preferences", user_id) or {}).get("email")
        == idp.provider.user.email,
        what="OIDC user's email in preferences",
    )

    # Logging out through the session cookie ends the session on every worker.
    reply, _ = _oidc_login(api, idp, 0, 0)
    session = reply.cookies()["notifyd_session"]
    out = http("POST", f"{api.workers[1].url}/api/v1/auth/logout",
               headers={"Cookie": f"notifyd_session={session}"})
    assert out.status == 204
    assert out.cookies().get("notifyd_session") == ""
    for i in BOTH:
        http("GET", f"{api.workers[i].url}/api/v1/users/me",
             headers={"Cookie": f"notifyd_session={session}"}).error(401, "session_invalid")
    # A cookie-authenticated write from another site is refused (CSRF).
    reply, _ = _oidc_login(api, idp, 1, 1)
    session = reply.cookies()["notifyd_session"]
    http("POST", f"{api.workers[0].url}/api/v1/auth/logout",
         headers={"Cookie": f"notifyd_session={session}",
                  "Origin": "https://evil.example"}).error(403, "csrf_rejected")


async def test_oidc_failures(api: Stack, idp: Idp) -> None:
    for i in BOTH:
        base = f"{api.workers[i].url}/api/v1/auth/callback"
        detail = http("GET", f"{base}?error=access_denied&error_description=user+said+no"
                             "&state=abc").error(401, "oidc_provider_error")
        assert "access_denied" in detail and "user said no" in detail
        http("GET", f"{base}?state=abc").error(400, "missing_parameter")
        http("GET", f"{base}?state=unknown&code=whatever").error(401, "oidc_state_invalid")
    # Finishing a login without the browser binding cookie (login CSRF) is refused.
    login = http("GET", f"{api.workers[0].url}/api/v1/auth/login")
    back = http("GET", login.headers["Location"])
    query = urllib.parse.urlsplit(back.headers["Location"]).query
    http("GET", f"{api.workers[1].url}/api/v1/auth/callback?{query}").error(
        401, "oidc_state_invalid")
    # A bad ID token from the provider is refused.
    idp.provider.fault = "bad_nonce"
    try:
        reply, _ = _oidc_login(api, idp, 0, 1)
        reply.error(401, "oidc_nonce_mismatch")
    finally:
        idp.provider.fault = None


# --- preferences --------------------------------------------------------------------------


async def test_preferences_read_your_writes_across_workers(api: Stack) -> None:
    """Write through one worker, read through the other, for users owned by each."""
    served_by: set[str] = set()
    n = 0
    # Users until both workers were the owner (and so the other one proxied) for some.
    while n < 4 or (len(served_by) < 2 and n < 16):
        a, b = n % 2, 1 - n % 2
        n += 1
        c = signup(api, a, "prefs", phone="+14155550100")

        def seeded_prefs(c: Client = c, b: int = b) -> Any:
            doc = c.call(b, "GET", "/api/v1/preferences").ok()
            return doc if doc.get("email") else None

        # The sign-up seeded the contact fields (asynchronously).
        seeded = await wait_for(seeded_prefs, what="seeded contact preferences")
        assert seeded["email"] == f"{c.username}@example.com"
        assert seeded["phone"] == "+14155550100"
        replies = []
        put = c.call(a, "PUT", "/api/v1/preferences", {
            "email": "new@example.com",
            "channels": {"sms": False},
            "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
        })
        replies.append(put)
        doc = put.ok()
        assert doc["email"] == "new@example.com" and doc["phone"] is None  # PUT replaces
        assert doc["user_id"] == c.user_id and doc["updated_at"]
        # Immediately visible through the other worker.
        replies.append(c.call(b, "GET", "/api/v1/preferences"))
        assert replies[-1].ok() == doc
        replies.append(c.call(b, "PATCH", "/api/v1/preferences", {"locale": "de-DE"}))
        patched = replies[-1].ok()
        assert patched["locale"] == "de-DE" and patched["channels"] == {"sms": False}
        replies.append(c.call(a, "GET", "/api/v1/preferences"))
        assert replies[-1].ok() == patched
        proxied = {r.headers["X-Notifyd-Served-By"] for r in replies
                   if r.headers.get("X-Notifyd-Served-By")}
        assert len(proxied) == 1  # the non-owner proxied to the one owner
        served_by |= proxied
        for i in BOTH:
            c.call(i, "PATCH", "/api/v1/preferences", {"channels": {"fax": True}}).error(
                400, "invalid_preferences")
            c.call(i, "PUT", "/api/v1/preferences", {"quiet_hours": {"start": "25:00"}}).error(
                400, "invalid_preferences")
            c.call(i, "PUT", "/api/v1/preferences", data=b"nope").error(400, "invalid_json")
            c.call(i, "PUT", "/api/v1/preferences", [1]).error(400, "invalid_body")
    assert len(served_by) == 2, served_by  # each worker owned some users


async def test_operator_preferences(api: Stack) -> None:
    c = signup(api, 0)
    other = signup(api, 1)
    op = op_token(api)
    path = f"/api/v1/users/{c.user_id}/preferences"
    for i in BOTH:
        c.call(i, "GET", path).error(403, "operator_required")
        other.call(i, "PUT", path, {"locale": "fr"}).error(403, "operator_required")
    for i in BOTH:
        url = f"https://hooks.example/{i}"
        doc = c.call(i, "PUT", path, {"webhook_url": url}, token=op).ok()
        assert doc["webhook_url"] == url and doc["user_id"] == c.user_id
        for j in BOTH:
            assert c.call(j, "GET", path, token=op).ok() == doc
            assert c.call(j, "GET", "/api/v1/preferences").ok() == doc
    c.call(0, "PUT", path, {"user_id": other.user_id}, token=op).error(
        400, "invalid_preferences")
    # Never-set preferences come back as the default document.
    fresh = f"nobody-{uuid.uuid4().hex[:8]}"
    default = c.call(1, "GET", f"/api/v1/users/{fresh}/preferences", token=op).ok()
    assert default["user_id"] == fresh and default["email"] is None


# --- notifications ------------------------------------------------------------------------


def _inbox(c: Client, i: int, query: str = "") -> dict[str, Any]:
    page: dict[str, Any] = c.call(i, "GET", f"/api/v1/notifications{query}").ok()
    return page


async def test_notifications_flow(api: Stack) -> None:
    c = signup(api, 0, "inbox")
    stranger = signup(api, 1, "stranger")
    event_id = new_id("evt")
    first = c.call(0, "POST", "/api/v1/notifications", {
        "event_id": event_id, "title": "Hello", "body": "first", "channels": ["inapp"],
        "category": "news", "data": {"k": 1},
    })
    accepted = first.ok(202)
    nid = notification_id_for(c.user_id, event_id)
    assert accepted == {"notification_id": nid, "event_id": event_id}
    assert first.headers["Location"] == f"/api/v1/notifications/{nid}"
    second = c.call(1, "POST", "/api/v1/notifications",
                    {"title": "Again", "channels": ["inapp"], "priority": "high"}).ok(202)
    nid2 = second["notification_id"]
    assert notification_id_for(c.user_id, second["event_id"]) == nid2

    page = await wait_for(lambda: (lambda p: p if p["total"] == 2 else None)(_inbox(c, 1)),
                          what="two inbox items")
    assert [it["id"] for it in page["items"]] == [nid2, nid]  # newest first
    assert page["unread"] == 2 and page["limit"] == 50 and page["offset"] == 0
    assert page["items"][1]["title"] == "Hello" and page["items"][1]["data"] == {"k": 1}
    assert _inbox(c, 0) == page
    assert [it["id"] for it in _inbox(c, 0, "?limit=1&offset=1")["items"]] == [nid]

    # The same event_id again: accepted, but delivered once (idempotency).
    c.call(1, "POST", "/api/v1/notifications",
           {"event_id": event_id, "title": "Hello", "channels": ["inapp"]}).ok(202)

    def sent(i: int) -> Any:
        st = c.call(i, "GET", f"/api/v1/notifications/{nid}").body
        return st if st.get("channels", {}).get("inapp", {}).get("status") == "sent" else None

    for i in BOTH:
        st = await wait_for(lambda i=i: sent(i), what="status sent")
        assert st["user_id"] == c.user_id and st["title"] == "Hello" and "p" not in st
        stranger.call(i, "GET", f"/api/v1/notifications/{nid}").error(
            404, "notification_not_found")
        c.call(i, "GET", f"/api/v1/notifications/{new_id('none')}").error(
            404, "notification_not_found")
    assert c.call(1, "GET", f"/api/v1/notifications/{nid}", token=op_token(api)).ok()["user_id"] \
        == c.user_id  # operators see every status (without the user: every worker asked)
    by_user = f"/api/v1/notifications/{nid}?user_id={c.user_id}"
    for i in BOTH:  # with the user: the worker holding the row; for a user, no way in
        assert c.call(i, "GET", by_user, token=op_token(api)).ok()["user_id"] == c.user_id
        stranger.call(i, "GET", by_user).error(404, "notification_not_found")

    # Read through worker 1: visible at once through worker 0.
    item = c.call(1, "PATCH", f"/api/v1/notifications/{nid}", {"read": True}).ok()
    assert item["id"] == nid and item["read"] is True and item["archived"] is False
    page = _inbox(c, 0)
    assert page["unread"] == 1
    assert [it["id"] for it in _inbox(c, 0, "?unread=true")["items"]] == [nid2]
    assert [it["id"] for it in _inbox(c, 1, "?unread=false")["items"]] == [nid]
    # Archive through worker 0 (and unread it in the same request).
    item = c.call(0, "PATCH", f"/api/v1/notifications/{nid}",
                  {"archived": True, "read": False}).ok()
    assert item["archived"] is True and item["read"] is False
    assert [it["id"] for it in _inbox(c, 1)["items"]] == [nid2]
    archived = _inbox(c, 1, "?archived=true")
    assert [it["id"] for it in archived["items"]] == [nid] and archived["total"] == 1
    # Strangers cannot touch it.
    for i in BOTH:
        stranger.call(i, "PATCH", f"/api/v1/notifications/{nid}", {"read": True}).error(
            404, "notification_not_found")
        stranger.call(i, "DELETE", f"/api/v1/notifications/{nid}").error(
            404, "notification_not_found")
        c.call(i, "PATCH", f"/api/v1/notifications/{nid}", {"read": "yes"}).error(
            400, "wrong_type")
        c.call(i, "PATCH", f"/api/v1/notifications/{nid}", {}).error(400, "missing_field")
        c.call(i, "PATCH", f"/api/v1/notifications/{nid}", {"starred": True}).error(
            400, "unknown_field")
        c.call(i, "GET", "/api/v1/notifications?limit=500").error(400, "invalid_parameter")
        c.call(i, "GET", "/api/v1/notifications?unread=perhaps").error(
            400, "invalid_parameter")
    # Delete through worker 1, gone through worker 0.
    c.call(1, "DELETE", f"/api/v1/notifications/{nid}").ok(204)
    assert _inbox(c, 0, "?archived=true")["total"] == 0
    c.call(0, "DELETE", f"/api/v1/notifications/{nid}").error(404, "notification_not_found")
    # Still exactly the one other item: the duplicate event_id was not delivered again.
    page = _inbox(c, 0)
    assert page["total"] == 1 and page["unread"] == 1


async def test_notification_recipients_and_validation(api: Stack) -> None:
    c = signup(api, 1, "recip")
    other = signup(api, 0, "other")
    for i in BOTH:
        c.call(i, "POST", "/api/v1/notifications",
               {"user_id": other.user_id, "title": "spam"}).error(403, "forbidden_recipient")
        assert "'fax'" in c.call(i, "POST", "/api/v1/notifications",
                                 {"title": "x", "channels": ["fax"]}).error(
                                     400, "unknown_channel")
        c.call(i, "POST", "/api/v1/notifications", {"title": 7}).error(400, "wrong_type")
        c.call(i, "POST", "/api/v1/notifications", {"data": {}}).error(400, "missing_content")
        c.call(i, "POST", "/api/v1/notifications", {"title": "x", "priority": "meh"}).error(
            400, "invalid_priority")
        c.call(i, "POST", "/api/v1/notifications", data=b"{'single': 'quotes'}").error(
            400, "invalid_json")
        c.call(i, "POST", "/api/v1/notifications", "just a string").error(400, "invalid_body")
        c.call(i, "POST", "/api/v1/notifications",
               {"title": "x", "body": "y" * 70_000}).error(413, "payload_too_large")
    # An operator may notify anyone.
    sent = c.call(0, "POST", "/api/v1/notifications",
                  {"user_id": other.user_id, "title": "From ops", "channels": ["inapp"]},
                  token=op_token(api)).ok(202)
    page = await wait_for(lambda: (lambda p: p if p["total"] else None)(_inbox(other, 1)),
                          what="operator's notification")
    assert page["items"][0]["id"] == sent["notification_id"]
    assert _inbox(c, 0)["total"] == 0


# --- operators: dead letters, tables ----------------------------------------------------


async def test_admin_dlq_and_refusals(api: Stack) -> None:
    c = signup(api, 0)
    key = new_id("dlq").encode()
    bin_key = new_id("dlqbin").encode()
    await api.produce(api.names.events, [(key, b"definitely not json"),
                                         (bin_key, b"\xff\xfe\x00\x01")])
    op = op_token(api)

    # Known table state: the sign-up's contact patch applied (asynchronously), then one
    # write whose answer is the stored document.
    def seeded() -> Any:
        return c.call(1, "GET", "/api/v1/preferences").ok().get("email")

    assert await wait_for(seeded, what="seeded contact preferences") == (
        f"{c.username}@example.com")
    # A delivery that runs out of retries: the user's webhook answers 503 every time.
    failing_hook = f"{api.sinks.url}/v1/_status/503"
    prefs = c.call(0, "PATCH", "/api/v1/preferences", {"webhook_url": failing_hook}).ok()
    assert prefs["user_id"] == c.user_id and prefs["webhook_url"] == failing_hook
    nid = c.call(1, "POST", "/api/v1/notifications", {
        "event_id": new_id("dead"), "title": "t", "body": "b", "channels": ["webhook"],
    }).ok(202)["notification_id"]

    def dead() -> Any:
        reply = c.call(0, "GET", f"/api/v1/notifications/{nid}")
        if reply.status == 404:  # not processed yet
            return None
        doc = reply.ok()
        return doc if doc["channels"]["webhook"]["status"] == "dead" else None

    doc = await wait_for(dead, timeout=60, what="webhook delivery dead after retries")
    assert doc["channels"]["webhook"]["attempts"] == 3

    def find(i: int) -> Any:
        page = c.call(i, "GET", "/api/v1/admin/dlq?topic=events&limit=50", token=op).ok()
        by_key = {it["key"]: it for it in page["items"]}
        if key.decode() in by_key and bin_key.decode() in by_key:
            return page
        return None

    def dead_delivery(i: int) -> Any:
        page = c.call(i, "GET", "/api/v1/admin/dlq?topic=deliveries", token=op).ok()
        mine = [it for it in page["items"] if nid in (it["value"] or "")]
        return (page, mine) if mine else None

    for i in BOTH:
        page = await wait_for(lambda i=i: find(i), what="dead letters listed")
        assert page["topic"] == api.names.events_dlq
        by_key = {it["key"]: it for it in page["items"]}
        text = by_key[key.decode()]
        assert text["reason"].startswith("invalid_json")
        assert text["value"] == "definitely not json" and text["value_base64"] is False
        assert text["headers"]["notifyd-source-topic"] == api.names.events
        binary = by_key[bin_key.decode()]
        assert binary["reason"].startswith("invalid_utf8")
        assert binary["value_base64"] is True
        assert base64.b64decode(binary["value"]) == b"\xff\xfe\x00\x01"
        stamps = [it["timestamp"] for it in page["items"]]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        one = c.call(i, "GET", "/api/v1/admin/dlq?limit=1", token=op).ok()
        assert len(one["items"]) == 1
        # The dead delivery, exactly once, as the channel agent wrote it.
        deliveries, mine = await wait_for(lambda i=i: dead_delivery(i),
                                          what="dead delivery listed")
        assert deliveries["topic"] == api.names.deliveries_dlq
        [rec] = mine
        assert rec["topic"] == api.names.deliveries_dlq
        assert rec["key"] == c.user_id and rec["key_base64"] is False
        assert rec["reason"].startswith("http_503"), rec["reason"]
        assert rec["headers"]["notifyd-attempts"] == "3"
        assert rec["value_base64"] is False
        value = json.loads(rec["value"])
        assert (value["notification_id"], value["user_id"], value["channel"], value["attempt"]) \
            == (nid, c.user_id, "webhook", 3)
        c.call(i, "GET", "/api/v1/admin/dlq?topic=nope", token=op).error(
            400, "invalid_parameter")
        # Table look-ups: the entry written above, and exact refusals.
        entry = c.call(i, "GET", f"/api/v1/admin/tables/preferences/{c.user_id}",
                       token=op).ok()
        assert {k: entry[k] for k in ("table", "key", "value")} == {
            "table": "preferences", "key": c.user_id, "value": prefs}
        nobody = new_id("nobody")
        c.call(i, "GET", f"/api/v1/admin/tables/preferences/{nobody}", token=op).error(
            404, "key_not_found")
        c.call(i, "GET", f"/api/v1/admin/tables/nosuchtable/{c.user_id}", token=op).error(
            404, "unknown_table")
        # Non-operators are refused every admin endpoint.
        c.call(i, "GET", "/api/v1/admin/dlq").error(403, "operator_required")
        c.call(i, "GET", f"/api/v1/admin/tables/inbox/{c.user_id}").error(
            403, "operator_required")
        c.call(i, "GET", f"/api/v1/users/{c.user_id}/preferences").error(
            403, "operator_required")


# --- the document, the UI, generic errors -------------------------------------------------


async def test_openapi_and_docs_served(api: Stack) -> None:
    docs = []
    for w in api.workers:
        assert http("GET", f"{w.url}/healthz").ok()["status"] == "ok"
        assert http("GET", f"{w.url}/readyz").ok()["ready"] is True
        r = http("GET", f"{w.url}/api/v1/openapi.json")
        doc = r.ok()
        validate_spec(doc)
        docs.append(doc)
        assert {"/api/v1/notifications", "/api/v1/admin/dlq", "/healthz", "/readyz",
                "/api/v1/admin/tables/{table}/{key}"} <= set(doc["paths"])
        html = http("GET", f"{w.url}/docs")
        assert html.status == 200 and html.headers.get_content_type() == "text/html"
        assert b"/api/v1/openapi.json" in html.raw
        css = http("GET", f"{w.url}/docs/static/swagger-ui.css")
        assert css.status == 200 and css.headers.get_content_type() == "text/css"
        js = http("GET", f"{w.url}/docs/static/swagger-ui-bundle.js")
        assert js.status == 200 and len(js.raw) > 100_000
        # Swagger UI 5 reads the 3.1 document as served (no 3.0 rendering any more).
        assert doc["openapi"] == "3.1.0" and b"compat" not in html.raw
    assert docs[0] == docs[1]


async def test_unknown_routes_and_methods_are_json(api: Stack) -> None:
    c = signup(api, 1)
    for w in api.workers:
        http("GET", f"{w.url}/api/v1/nope").error(401, "not_authenticated")
        http("GET", f"{w.url}/api/v1/nope", token=c.token).error(404, "not_found")
        http("PUT", f"{w.url}/api/v1/users/me", {}, token=c.token).error(
            405, "method_not_allowed")
        http("GET", f"{w.url}/docs/static/nope.js").error(404, "not_found")


# --- operator table look-ups: routed by the key that chose the row's partition -----------


def _partition(key: str, partitions: int = 4) -> int:
    """Kafka's default partitioner (murmur2) over the harness's 4 partitions."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _owners(stack: Stack) -> dict[int, int]:
    """partition -> index of the worker that owns it."""
    return {p: i for i, w in enumerate(stack.workers)
            for p in http("GET", f"{w.url}/readyz").ok()["partitions"]}


def _elsewhere(owners: dict[int, int], user_worker: int, *keys: str) -> bool:
    return all(owners[_partition(k)] != user_worker for k in keys)


async def test_admin_table_lookups_reach_the_users_partition(api: Stack) -> None:
    """seen, ledger, scheduled and status rows live in their user's partition, whatever
    their own key hashes to.  Each is found through either worker.  The event ids are
    picked so that every key hashes to a partition of the OTHER worker: routed by its
    own key, a look-up lands on the worker that does not hold the row."""
    op = op_token(api)
    owners = _owners(api)
    assert set(owners.values()) == {0, 1}, owners
    user = new_id("u-rows")
    home = owners[_partition(user)]
    eids: list[str] = []
    while len(eids) < 2:
        eid = new_id("evt")
        if _elsewhere(owners, home, idempotency_scope(user, eid), notification_id_for(user, eid),
                      f"{notification_id_for(user, eid)}:sms"):
            eids.append(eid)
    sent_eid, deferred_eid = eids
    now = datetime.now(UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
             "end": (now + timedelta(hours=2)).strftime("%H:%M"), "timezone": "UTC"}
    await api.set_preferences(user, {"phone": "+15550001234", "quiet_hours": quiet})
    await api.send_events(
        {"event_id": sent_eid, "user_id": user, "title": "now", "channels": ["sms"],
         "priority": "critical"},  # bypasses quiet hours: sent, in the ledger
        {"event_id": deferred_eid, "user_id": user, "title": "later", "channels": ["sms"]},
    )
    sent_nid = notification_id_for(user, sent_eid)
    deferred_nid = notification_id_for(user, deferred_eid)
    sent_seen, deferred_seen = idempotency_scope(user, sent_eid), idempotency_scope(user, deferred_eid)

    def sms_state(nid: str, want: str) -> dict[str, Any] | None:
        doc = api.worker.table("status", nid)
        sms = ((doc or {}).get("channels") or {}).get("sms") or {}
        return sms if sms.get("status") == want else None

    await wait_for(lambda: sms_state(sent_nid, "sent"), what="the critical SMS sent")
    deferred = await wait_for(lambda: sms_state(deferred_nid, "deferred"),
                              what="the SMS deferred")
    user_p = _partition(user)
    home_url = api.workers[home].url

    def lookup(i: int, table: str, key: str, user_id: str | None = user) -> Reply:
        query = f"?user_id={urllib.parse.quote(user_id)}" if user_id else ""
        path = urllib.parse.quote(key, safe="")
        return http("GET", f"{api.workers[i].url}/api/v1/admin/tables/{table}/{path}{query}",
                    token=op)

    rows = [("seen", sent_seen, user), ("seen", deferred_seen, user),
            ("ledger", f"{sent_nid}:sms", user), ("scheduled", f"{deferred_nid}:sms", user),
            ("status", sent_nid, user), ("status", deferred_nid, user)]
    answers = {(i, table, key): lookup(i, table, key, uid).status
               for i in BOTH for table, key, uid in rows}
    assert answers == dict.fromkeys(answers, 200)
    for i in BOTH:
        for table, key in (("seen", sent_seen), ("seen", deferred_seen)):
            entry = lookup(i, table, key).ok()
            assert (entry["table"], entry["key"]) == (table, key)
            assert entry["value"][1] == user_p  # [first_seen, partition, origin, user_id]
            assert entry["worker"].rstrip("/") == home_url
        ledger = lookup(i, "ledger", f"{sent_nid}:sms").ok()
        assert ledger["value"]["s"] == "sent" and ledger["value"]["p"] == user_p
        assert ledger["worker"].rstrip("/") == home_url
        scheduled = lookup(i, "scheduled", f"{deferred_nid}:sms").ok()
        assert scheduled["value"]["p"] == user_p
        assert scheduled["value"]["due"] == deferred["deliver_at"]
        assert scheduled["value"]["delivery"]["user_id"] == user
        assert scheduled["worker"].rstrip("/") == home_url
        for nid in (sent_nid, deferred_nid):  # status: keyed by nid, in the user's partition
            status = lookup(i, "status", nid).ok()
            assert status["value"]["user_id"] == user and status["value"]["p"] == user_p
            assert status["worker"].rstrip("/") == home_url
        # What is not there is a clean 404 from the owner; a missing user a clean 400.
        lookup(i, "ledger", f"{deferred_nid}:sms").error(404, "key_not_found")
        lookup(i, "seen", sent_seen, user_id=None).error(400, "missing_parameter")
        lookup(i, "status", sent_nid, user_id=None).error(400, "missing_parameter")
