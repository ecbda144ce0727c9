"""Users, login throttle, JWT issue/verify with an attack suite, and the web middlewares."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from notifyd.errors import BadRequest, Conflict, TooManyRequests, Unauthorized
from notifyd.web.auth.store import CredentialStore, SqliteStore
from notifyd.web.auth.users import (
    CURRENT_USER,
    SESSION_COOKIE,
    CurrentUser,
    LoginThrottle,
    LoginThrottled,
    SessionService,
    TokenService,
    User,
    UserService,
    auth_middleware,
    error_middleware,
    require_operator,
    require_user,
)

SECRET = "s3cr3t-" + "x" * 40
PASSWORD = "correct horse battery"


def fast_hasher(time_cost: int = 1) -> PasswordHasher:
    # Real argon2, cheap parameters: tests stay fast, code paths stay identical.
    return PasswordHasher(time_cost=time_cost, memory_cost=1024, parallelism=1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CredentialStore]:
    s = await SqliteStore.open(tmp_path / "creds.db", purge_interval_s=0)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def users(store: CredentialStore) -> UserService:
    return UserService(store, hasher=fast_hasher())


@pytest.fixture
def tokens(store: CredentialStore, users: UserService) -> TokenService:
    return TokenService(SECRET, store=store, users=users, issuer="notifyd", audience="api")


@pytest.fixture
async def alice(users: UserService) -> User:
    return await users.create("alice", PASSWORD, "alice@example.com", "+14155550123")


# --- users ------------------------------------------------------------------------------


async def test_create_and_lookup(users: UserService, alice: User) -> None:
    assert alice.roles == ("user",)
    assert alice.password_hash is not None and alice.password_hash.startswith("$argon2id$")
    assert PASSWORD not in alice.to_json().decode()
    assert await users.get_by_id(alice.user_id) == alice
    assert await users.get_by_username("ALICE") == alice  # case-insensitive
    assert "password_hash" not in alice.public()


async def test_duplicate_username(users: UserService, alice: User) -> None:
    with pytest.raises(Conflict) as info:
        await users.create("alice", "another password", "a2@example.com")
    assert info.value.code == "username_taken"
    assert info.value.detail == "username 'alice' is already taken"
    with pytest.raises(Conflict):
        await users.create("Alice", "another password", "a2@example.com")


async def test_concurrent_duplicate_create(users: UserService) -> None:
    results = await asyncio.gather(
        *(users.create("bob", PASSWORD, "bob@example.com") for _ in range(5)),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, User)]
    assert len(created) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, User))
    assert await users.get_by_id(created[0].user_id) == created[0]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"username": "ab"}, "invalid_username"),
        ({"username": "a" * 65}, "invalid_username"),
        ({"username": "bad name"}, "invalid_username"),
        ({"username": "oidc-abc"}, "invalid_username"),
        ({"password": "short"}, "invalid_password"),
        ({"password": "x" * 1025}, "invalid_password"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"email": "a@b"}, "invalid_email"),
        ({"phone": "0155 555"}, "invalid_phone"),
        ({"phone": "+0123"}, "invalid_phone"),
        ({"roles": []}, "invalid_roles"),
        ({"roles": ["root"]}, "invalid_roles"),
    ],
)
async def test_create_validation(users: UserService, kwargs: dict[str, Any], code: str) -> None:
    args: dict[str, Any] = {
        "username": "carol",
        "password": PASSWORD,
        "email": "carol@example.com",
        "phone": None,
    } | kwargs
    with pytest.raises(BadRequest) as info:
        await users.create(**args)
    assert info.value.code == code
    assert info.value.status == 400


async def test_authenticate(users: UserService, alice: User) -> None:
    assert await users.authenticate("alice", PASSWORD) == alice
    for username, password in [("alice", "wrong password"), ("nobody", PASSWORD), ("x", "y")]:
        with pytest.raises(Unauthorized) as info:
            await users.authenticate(username, password)
        assert info.value.code == "invalid_credentials"
        assert info.value.detail == "invalid username or password"


async def test_unknown_user_still_hashes(users: UserService, alice: User) -> None:
    calls: list[str] = []
    original = users._verify_sync

    def spy(password_hash: str, password: str) -> bool:
        calls.append(password_hash)
        return original(password_hash, password)

    users._verify_sync = spy  # type: ignore[method-assign]
    with pytest.raises(Unauthorized):
        await users.authenticate("nobody", PASSWORD)
    assert len(calls) == 1 and calls[0].startswith("$argon2")


async def test_rehash_when_parameters_change(store: CredentialStore, alice: User) -> None:
    stronger = UserService(store, hasher=fast_hasher(time_cost=2))
    user = await stronger.authenticate("alice", PASSWORD)
    assert user.password_hash is not None and "t=2" in user.password_hash
    stored = await stronger.get_by_id(alice.user_id)
    assert stored is not None and stored.password_hash == user.password_hash


async def test_disabled_and_deleted(users: UserService, alice: User) -> None:
    await users.set_disabled(alice.user_id, True)
    with pytest.raises(Unauthorized) as info:
        await users.authenticate("alice", PASSWORD)
    assert info.value.code == "account_disabled"
    assert await users.delete(alice.user_id) is True
    assert await users.delete(alice.user_id) is False
    assert await users.get_by_id(alice.user_id) is None
    # The name is free again, with a new id.
    again = await users.create("alice", PASSWORD, "alice@example.com")
    assert again.user_id != alice.user_id


async def test_upsert_external(users: UserService) -> None:
    u1 = await users.upsert_external("sub-1", "https://idp.example", "e1@example.com")
    u2 = await users.upsert_external("sub-1", "https://idp.example", "e2@example.com")
    other = await users.upsert_external("sub-1", "https://other.example", None)
    assert u1.user_id == u2.user_id != other.user_id
    assert u2.email == "e2@example.com"
    assert u1.password_hash is None and u1.issuer == "https://idp.example"
    with pytest.raises(Unauthorized):  # external users have no password
        await users.authenticate(u1.username, PASSWORD)


# --- throttle -----------------------------------------------------------------------------


async def test_login_throttle_per_username(store: CredentialStore, alice: User) -> None:
    users = UserService(
        store, hasher=fast_hasher(), throttle=LoginThrottle(store, max_failures=3, window_s=600)
    )
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await users.authenticate("alice", "wrong password", client_ip="10.0.0.1")
    # Now even the right password is refused until the window ends.
    with pytest.raises(TooManyRequests) as info:
        await users.authenticate("alice", PASSWORD, client_ip="10.0.0.2")
    assert info.value.code == "login_throttled"
    assert info.value.status == 429
    assert 0 < info.value.retry_after <= 600  # type: ignore[attr-defined]


async def test_login_throttle_per_ip(store: CredentialStore, alice: User) -> None:
    throttle = LoginThrottle(store, max_failures=100, max_failures_per_ip=4, window_s=600)
    users = UserService(store, hasher=fast_hasher(), throttle=throttle)
    for i in range(4):
        with pytest.raises(Unauthorized):
            await users.authenticate(f"user{i}", "wrong password", client_ip="10.9.9.9")
    with pytest.raises(TooManyRequests):
        await users.authenticate("alice", PASSWORD, client_ip="10.9.9.9")
    assert await users.authenticate("alice", PASSWORD, client_ip="10.1.1.1") == alice


async def test_success_resets_username_counter(store: CredentialStore, alice: User) -> None:
    users = UserService(
        store, hasher=fast_hasher(), throttle=LoginThrottle(store, max_failures=3, window_s=600)
    )
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await users.authenticate("alice", "wrong password")
    await users.authenticate("alice", PASSWORD)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await users.authenticate("alice", "wrong password")
    await users.authenticate("alice", PASSWORD)  # would be throttled without the reset


# --- tokens ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def claims_for(user: User, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user.user_id,
        "username": user.username,
        "roles": list(user.roles),
        "iss": "notifyd",
        "aud": "api",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def hs256(payload: dict[str, Any], key: str | bytes = SECRET) -> str:
    k = key.encode() if isinstance(key, str) else key
    return craft({"alg": "HS256", "typ": "JWT"}, payload,
                 lambda m: hmac.new(k, m, hashlib.sha256).digest())


async def expect_unauthorized(tokens: TokenService, token: str, code: str) -> None:
    with pytest.raises(Unauthorized) as info:
        await tokens.verify(token)
    assert info.value.code == code, info.value.detail
    assert info.value.status == 401


async def test_issue_and_verify(tokens: TokenService, alice: User) -> None:
    issued = await tokens.issue(alice)
    assert issued["token_type"] == "bearer" and issued["expires_in"] == 3600
    assert "refresh_token" not in issued
    current = await tokens.verify(issued["access_token"])
    assert current.user_id == alice.user_id and current.username == "alice"
    assert current.roles == ("user",) and not current.is_operator
    claims = current.claims
    assert set(claims) >= {"sub", "exp", "iat", "nbf", "iss", "aud", "jti", "roles", "username"}
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(issued["access_token"])["alg"] == "HS256"


async def test_crafted_valid_token_is_accepted(tokens: TokenService, alice: User) -> None:
    # Sanity check for the attack suite: the crafting helper itself produces good tokens.
    current = await tokens.verify(hs256(claims_for(alice)))
    assert current.user_id == alice.user_id


def test_secret_requirements(store: CredentialStore, users: UserService) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenService("too-short", store=store, users=users)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenService("", store=store, users=users)
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="not a"):
        TokenService(pem, store=store, users=users)
    with pytest.raises(ValueError):
        TokenService(SECRET, store=store, users=users, leeway_s=60)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_rejected(tokens: TokenService, alice: User, alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, claims_for(alice), lambda m: b"")
    await expect_unauthorized(tokens, token, "token_invalid")
    await expect_unauthorized(tokens, token.rstrip("."), "token_invalid")


async def test_hs_rs_key_confusion_rejected(tokens: TokenService, alice: User) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The attacker knows a public key and uses it as the HMAC secret.
    await expect_unauthorized(tokens, hs256(claims_for(alice), key=pem), "token_invalid")
    # ... or signs with RS256 hoping the verifier follows the header's alg.
    rs_token = jwt.encode(claims_for(alice), private, algorithm="RS256")
    await expect_unauthorized(tokens, rs_token, "token_invalid")


async def test_other_hmac_algorithms_rejected(tokens: TokenService, alice: User) -> None:
    token = craft({"alg": "HS512", "typ": "JWT"}, claims_for(alice),
                  lambda m: hmac.new(SECRET.encode(), m, hashlib.sha512).digest())
    await expect_unauthorized(tokens, token, "token_invalid")


async def test_expired(tokens: TokenService, alice: User) -> None:
    now = int(time.time())
    token = hs256(claims_for(alice, iat=now - 700, nbf=now - 700, exp=now - 60))
    await expect_unauthorized(tokens, token, "token_expired")


async def test_within_leeway_is_accepted(tokens: TokenService, alice: User) -> None:
    now = int(time.time())
    token = hs256(claims_for(alice, iat=now - 700, nbf=now - 700, exp=now - 2))
    assert (await tokens.verify(token)).user_id == alice.user_id


async def test_not_yet_valid(tokens: TokenService, alice: User) -> None:
    now = int(time.time())
    await expect_unauthorized(tokens, hs256(claims_for(alice, nbf=now + 300)), "token_invalid")
    await expect_unauthorized(tokens, hs256(claims_for(alice, iat=now + 300)), "token_invalid")


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "evil"},
        {"aud": "other-api"},
        {"aud": None},
        {"iss": None},
        {"jti": None},
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"sub": 42},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
async def test_bad_claims(tokens: TokenService, alice: User, overrides: dict[str, Any]) -> None:
    await expect_unauthorized(tokens, hs256(claims_for(alice, **overrides)), "token_invalid")


async def test_tampering(tokens: TokenService, alice: User) -> None:
    token = (await tokens.issue(alice))["access_token"]
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    await expect_unauthorized(tokens, f"{header}.{payload}.{flipped}", "token_invalid")
    # Escalate roles while keeping the original signature.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["operator"]
    forged = _b64(json.dumps(claims).encode())
    await expect_unauthorized(tokens, f"{header}.{forged}.{signature}", "token_invalid")
    await expect_unauthorized(tokens, hs256(claims_for(alice), key="y" * 40), "token_invalid")
    for garbage in ["", "abc", "a.b.c", "x" * 10000, token + "."]:
        await expect_unauthorized(tokens, garbage, "token_invalid")


async def test_revoked(tokens: TokenService, alice: User) -> None:
    token = (await tokens.issue(alice))["access_token"]
    current = await tokens.verify(token)
    await tokens.revoke(current.claims)
    await expect_unauthorized(tokens, token, "token_revoked")
    other = (await tokens.issue(alice))["access_token"]
    assert (await tokens.verify(other)).user_id == alice.user_id


async def test_deleted_and_disabled_user(
    tokens: TokenService, users: UserService, alice: User
) -> None:
    token = (await tokens.issue(alice))["access_token"]
    await users.set_disabled(alice.user_id, True)
    await expect_unauthorized(tokens, token, "user_unknown")
    await users.set_disabled(alice.user_id, False)
    await tokens.verify(token)
    await users.delete(alice.user_id)
    await expect_unauthorized(tokens, token, "user_unknown")


async def test_roles_come_from_the_stored_user(
    store: CredentialStore, tokens: TokenService, alice: User
) -> None:
    token = (await tokens.issue(alice))["access_token"]
    promoted = dataclasses.replace(alice, roles=("user", "operator"))
    await store.set("user:alice", promoted.to_json())
    assert (await tokens.verify(token)).is_operator


async def test_refresh_rotation(tokens: TokenService, alice: User) -> None:
    first = await tokens.issue(alice, refresh=True)
    second = await tokens.refresh(first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert (await tokens.verify(second["access_token"])).user_id == alice.user_id
    with pytest.raises(Unauthorized) as info:
        await tokens.refresh(first["refresh_token"])  # single use
    assert info.value.code == "refresh_token_invalid"
    assert await tokens.revoke_refresh(second["refresh_token"]) is True
    with pytest.raises(Unauthorized):
        await tokens.refresh(second["refresh_token"])


async def test_refresh_for_deleted_user(
    tokens: TokenService, users: UserService, alice: User
) -> None:
    issued = await tokens.issue(alice, refresh=True)
    await users.delete(alice.user_id)
    with pytest.raises(Unauthorized) as info:
        await tokens.refresh(issued["refresh_token"])
    assert info.value.code == "user_unknown"


# --- middlewares --------------------------------------------------------------------------


def build_app(
    tokens: TokenService, users: UserService, sessions: SessionService, verify_calls: list[str]
) -> web.Application:
    original_verify = tokens.verify

    async def counting_verify(token: str) -> CurrentUser:
        verify_calls.append(token)
        return await original_verify(token)

    tokens.verify = counting_verify  # type: ignore[method-assign]

    async def public(request: web.Request) -> web.Response:
        user = request[CURRENT_USER]
        return web.json_response({"user": user.username if user else None})

    async def me(request: web.Request) -> web.Response:
        user = require_user(request)
        require_user(request)  # resolved once, read twice
        return web.json_response({"user_id": user.user_id, "via": user.via})

    async def admin(request: web.Request) -> web.Response:
        require_operator(request)
        return web.json_response({"ok": True})

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    async def throttled(request: web.Request) -> web.Response:
        raise LoginThrottled("slow down", retry_after=42)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/public")

    app = web.Application(
        middlewares=[
            error_middleware,
            auth_middleware(tokens, users, {"/public", "/boom", "/echo", "/throttled",
                                            "/redirect"}, sessions=sessions),
        ],
        client_max_size=1024,
    )
    app.router.add_get("/public", public)
    app.router.add_get("/me", me)
    app.router.add_post("/me", me)
    app.router.add_get("/admin", admin)
    app.router.add_get("/boom", boom)
    app.router.add_post("/echo", echo)
    app.router.add_get("/throttled", throttled)
    app.router.add_get("/redirect", redirect)
    return app


@pytest.fixture
def sessions(store: CredentialStore, users: UserService) -> SessionService:
    return SessionService(store, users, ttl_s=600)


@pytest.fixture
async def client(
    tokens: TokenService, users: UserService, sessions: SessionService
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], list[str]]]:
    calls: list[str] = []
    async with TestClient(TestServer(build_app(tokens, users, sessions, calls))) as c:
        yield c, calls


async def _json(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/json"
    data: dict[str, Any] = await resp.json()
    return data


async def test_middleware_bearer(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
    tokens: TokenService,
    alice: User,
) -> None:
    c, calls = client
    token = (await tokens.issue(alice))["access_token"]
    resp = await c.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert await resp.json() == {"user_id": alice.user_id, "via": "bearer"}
    assert calls == [token]  # verified exactly once for the request

    resp = await c.get("/me")
    assert resp.status == 401
    assert (await _json(resp))["code"] == "not_authenticated"

    resp = await c.get("/me", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401 and (await _json(resp))["code"] == "token_invalid"

    resp = await c.get("/me", headers={"Authorization": f"Basic {token}"})
    assert resp.status == 401 and (await _json(resp))["code"] == "token_invalid"

    resp = await c.get("/admin", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 403 and (await _json(resp))["code"] == "operator_required"

    # Public path: anonymous is fine, a bad token just means anonymous.
    resp = await c.get("/public", headers={"Authorization": "Bearer nope"})
    assert resp.status == 200 and await resp.json() == {"user": None}
    resp = await c.get("/public", headers={"Authorization": f"Bearer {token}"})
    assert await resp.json() == {"user": "alice"}


async def test_middleware_operator(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
    users: UserService,
    tokens: TokenService,
) -> None:
    c, _ = client
    op = await users.create("root-op", PASSWORD, "op@example.com", roles=["user", "operator"])
    token = (await tokens.issue(op))["access_token"]
    resp = await c.get("/admin", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200


async def test_middleware_session_cookie(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
    sessions: SessionService,
    alice: User,
) -> None:
    c, _ = client
    sid = await sessions.create(alice)
    cookies = {SESSION_COOKIE: sid}
    resp = await c.get("/me", cookies=cookies)
    assert resp.status == 200 and (await resp.json())["via"] == "session"

    # Unsafe method from another origin: CSRF refused; same origin is fine.
    resp = await c.post("/me", cookies=cookies, headers={"Origin": "https://evil.example"})
    assert resp.status == 403 and (await _json(resp))["code"] == "csrf_rejected"
    origin = f"http://{c.host}:{c.port}"
    resp = await c.post("/me", cookies=cookies, headers={"Origin": origin})
    assert resp.status == 200

    await sessions.delete(sid)
    resp = await c.get("/me", cookies=cookies)
    assert resp.status == 401 and (await _json(resp))["code"] == "session_invalid"


async def test_error_middleware(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
) -> None:
    c, _ = client
    resp = await c.get("/boom")
    assert resp.status == 500
    body = await _json(resp)
    assert body == {"code": "internal_error", "detail": "internal server error"}

    # Auth runs before routing: anonymous callers cannot probe which paths exist.
    resp = await c.get("/nowhere")
    assert resp.status == 401 and (await _json(resp))["code"] == "not_authenticated"

    resp = await c.post("/public")
    assert resp.status == 405 and (await _json(resp))["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]

    resp = await c.post("/echo", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await _json(resp))["code"] == "invalid_json"

    resp = await c.post("/echo", data=b'{"a": "' + b"x" * 4096 + b'"}')
    assert resp.status == 413 and (await _json(resp))["code"] == "payload_too_large"

    resp = await c.get("/throttled")
    assert resp.status == 429 and resp.headers["Retry-After"] == "42"
    assert await _json(resp) == {"code": "login_throttled", "detail": "slow down"}

    resp = await c.get("/redirect", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/public"


async def test_unknown_path_is_404_for_authenticated_callers(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
    tokens: TokenService,
    alice: User,
) -> None:
    c, _ = client
    token = (await tokens.issue(alice))["access_token"]
    resp = await c.get("/nowhere", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 404 and await _json(resp) == {"code": "not_found", "detail": "Not Found"}


async def test_store_outage_is_503(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
    store: CredentialStore,
    tokens: TokenService,
    alice: User,
) -> None:
    c, _ = client
    token = (await tokens.issue(alice))["access_token"]
    await store.close()
    resp = await c.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 503
    assert (await _json(resp))["code"] == "credential_store_unavailable"
