"""OIDC code flow with PKCE against the in-process test provider, plus the negatives."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from argon2 import PasswordHasher
from yarl import URL

from notifyd.config import Settings
from notifyd.errors import ServiceUnavailable, Unauthorized, WebError
from notifyd.web.auth.oidc import JwksCache, OidcClient, oidc_configured, pkce_challenge
from notifyd.web.auth.store import CredentialStore, SqliteStore
from notifyd.web.auth.users import UserService
from tests.support.oidc_provider import Fault, OidcTestProvider

REDIRECT = "http://127.0.0.1:6066/auth/oidc/callback"


@pytest.fixture
async def provider() -> AsyncIterator[OidcTestProvider]:
    async with OidcTestProvider(redirect_uris={REDIRECT}) as idp:
        yield idp


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CredentialStore]:
    s = await SqliteStore.open(tmp_path / "creds.db", purge_interval_s=0)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_client(
    provider: OidcTestProvider,
    store: CredentialStore,
    http: aiohttp.ClientSession,
    **overrides: Any,
) -> OidcClient:
    kwargs: dict[str, Any] = {
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "redirect_url": REDIRECT,
        "store": store,
        "session": http,
        "discovery_url": provider.issuer,
        "http_timeout_s": 5.0,
    } | overrides
    return OidcClient(**kwargs)


@pytest.fixture
def client(
    provider: OidcTestProvider, store: CredentialStore, http: aiohttp.ClientSession
) -> OidcClient:
    return make_client(provider, store, http)


async def browse(http: aiohttp.ClientSession, authorize_url: str) -> tuple[str, str]:
    """What the browser does: GET the authorize URL, read (state, code) off the redirect."""
    async with http.get(authorize_url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = URL(resp.headers["Location"])
    assert str(location.with_query(None)) == REDIRECT
    return location.query["state"], location.query["code"]


async def test_full_code_flow(
    client: OidcClient,
    provider: OidcTestProvider,
    http: aiohttp.ClientSession,
    store: CredentialStore,
) -> None:
    url = URL(await client.login_redirect())
    assert str(url.with_query(None)) == provider.authorize_url
    q = url.query
    assert q["response_type"] == "code" and q["code_challenge_method"] == "S256"
    assert q["client_id"] == provider.client_id and q["redirect_uri"] == REDIRECT
    assert "openid" in q["scope"].split()
    assert q["state"] and q["nonce"] and q["code_challenge"]

    state, code = await browse(http, str(url))
    assert state == q["state"]
    claims = await client.callback(state, code)
    assert claims["sub"] == provider.user.sub
    assert claims["email"] == provider.user.email
    assert claims["iss"] == provider.issuer and claims["aud"] == provider.client_id
    assert claims["nonce"] == q["nonce"]

    sent = provider.token_requests[-1]
    assert "client_secret" not in sent  # client_secret_basic by default
    assert pkce_challenge(sent["code_verifier"]) == q["code_challenge"]
    assert await store.get(f"oidc:state:{state}") is None  # consumed

    # The claims feed straight into the user directory.
    users = UserService(store, hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    user = await users.upsert_external(claims["sub"], claims["iss"], claims.get("email"))
    again = await users.upsert_external(claims["sub"], claims["iss"], claims.get("email"))
    assert user.user_id == again.user_id and user.email == provider.user.email


async def test_explicit_endpoints_and_client_secret_post(
    provider: OidcTestProvider, store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    client = make_client(
        provider,
        store,
        http,
        discovery_url="",
        issuer=provider.issuer,
        authorize_url=provider.authorize_url,
        token_url=provider.token_url,
        jwks_url=provider.jwks_url,
        token_auth_method="client_secret_post",
    )
    state, code = await browse(http, await client.login_redirect())
    claims = await client.callback(state, code)
    assert claims["sub"] == provider.user.sub
    assert provider.token_requests[-1]["client_secret"] == provider.client_secret


async def test_post_chosen_when_provider_offers_only_post(
    provider: OidcTestProvider, client: OidcClient, http: aiohttp.ClientSession
) -> None:
    provider.auth_methods = ("client_secret_post",)
    state, code = await browse(http, await client.login_redirect())
    await client.callback(state, code)
    assert "client_secret" in provider.token_requests[-1]


async def expect(exc_type: type[WebError], code: str, coro: Any) -> WebError:
    with pytest.raises(exc_type) as info:
        await coro
    assert info.value.code == code, info.value.detail
    return info.value


async def test_bad_and_replayed_state(client: OidcClient, http: aiohttp.ClientSession) -> None:
    state, code = await browse(http, await client.login_redirect())
    await expect(Unauthorized, "oidc_state_invalid", client.callback("bogus-state", code))
    await expect(Unauthorized, "oidc_state_invalid", client.callback("", code))
    await expect(Unauthorized, "oidc_state_invalid", client.callback("x" * 1000, code))
    await client.callback(state, code)
    await expect(Unauthorized, "oidc_state_invalid", client.callback(state, code))


async def test_expired_state(
    provider: OidcTestProvider, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    now = [1_000_000.0]
    store = await SqliteStore.open(tmp_path / "c.db", purge_interval_s=0, clock=lambda: now[0])
    try:
        client = make_client(provider, store, http)
        state, code = await browse(http, await client.login_redirect())
        now[0] += 601  # the 10 min state TTL has passed
        await expect(Unauthorized, "oidc_state_invalid", client.callback(state, code))
    finally:
        await store.close()


async def test_browser_binding(client: OidcClient, http: aiohttp.ClientSession) -> None:
    state, code = await browse(http, await client.login_redirect(binding="cookie-1"))
    await expect(
        Unauthorized, "oidc_state_invalid", client.callback(state, code, binding="cookie-2")
    )
    state, code = await browse(http, await client.login_redirect(binding="cookie-1"))
    await expect(Unauthorized, "oidc_state_invalid", client.callback(state, code))
    state, code = await browse(http, await client.login_redirect(binding="cookie-1"))
    assert (await client.callback(state, code, binding="cookie-1"))["sub"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("wrong_issuer", "oidc_issuer_mismatch"),
        ("wrong_audience", "oidc_audience_mismatch"),
        ("expired", "oidc_id_token_expired"),
        ("bad_nonce", "oidc_nonce_mismatch"),
        ("no_nonce", "oidc_nonce_mismatch"),
        ("bad_signature", "oidc_id_token_invalid"),
        ("unknown_kid", "oidc_id_token_invalid"),
        ("hs256", "oidc_id_token_invalid"),
        ("no_id_token", "oidc_id_token_missing"),
    ],
)
async def test_bad_id_tokens(
    client: OidcClient,
    provider: OidcTestProvider,
    http: aiohttp.ClientSession,
    fault: Fault,
    code: str,
) -> None:
    provider.fault = fault
    state, auth_code = await browse(http, await client.login_redirect())
    err = await expect(Unauthorized, code, client.callback(state, auth_code))
    assert err.status == 401


async def test_pkce_mismatch(
    client: OidcClient,
    provider: OidcTestProvider,
    http: aiohttp.ClientSession,
    store: CredentialStore,
) -> None:
    state, code = await browse(http, await client.login_redirect())
    key = f"oidc:state:{state}"
    record = orjson.loads(await store.get(key) or b"{}")
    record["code_verifier"] = "W" * 64  # what an attacker without the verifier would send
    await store.set(key, orjson.dumps(record), 600)
    err = await expect(Unauthorized, "oidc_token_rejected", client.callback(state, code))
    assert "invalid_grant" in err.detail and "PKCE" in err.detail


async def test_injected_code_from_another_login_fails_pkce(
    client: OidcClient, http: aiohttp.ClientSession
) -> None:
    # An attacker's code pasted into the victim's callback: the victim's verifier does
    # not match the attacker's challenge, so the provider refuses the exchange.
    _, attacker_code = await browse(http, await client.login_redirect())
    victim_state, _ = await browse(http, await client.login_redirect())
    await expect(Unauthorized, "oidc_token_rejected", client.callback(victim_state, attacker_code))


async def test_key_rotation_refetches_jwks(
    provider: OidcTestProvider, store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    client = make_client(provider, store, http, jwks_min_refetch_s=0)
    state, code = await browse(http, await client.login_redirect())
    await client.callback(state, code)
    assert provider.jwks_requests == 1
    state, code = await browse(http, await client.login_redirect())
    await client.callback(state, code)
    assert provider.jwks_requests == 1  # cached
    provider.rotate_key()
    state, code = await browse(http, await client.login_redirect())
    await client.callback(state, code)
    assert provider.jwks_requests == 2  # unknown kid -> one refetch


async def test_unknown_kid_refetch_is_rate_limited(
    client: OidcClient, provider: OidcTestProvider, http: aiohttp.ClientSession
) -> None:
    state, code = await browse(http, await client.login_redirect())
    await client.callback(state, code)
    provider.fault = "unknown_kid"
    for _ in range(3):
        state, code = await browse(http, await client.login_redirect())
        await expect(Unauthorized, "oidc_id_token_invalid", client.callback(state, code))
    assert provider.jwks_requests == 1  # default min_refetch_s (10 s) not yet reached


async def test_token_endpoint_failure_is_503(
    client: OidcClient, provider: OidcTestProvider, http: aiohttp.ClientSession
) -> None:
    provider.token_endpoint_status = 502
    state, code = await browse(http, await client.login_redirect())
    err = await expect(
        ServiceUnavailable, "oidc_provider_unavailable", client.callback(state, code)
    )
    assert err.status == 503


async def test_wrong_client_secret(
    provider: OidcTestProvider, store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    client = make_client(provider, store, http, client_secret="wrong")
    state, code = await browse(http, await client.login_redirect())
    await expect(ServiceUnavailable, "oidc_client_rejected", client.callback(state, code))


async def test_provider_down(
    provider: OidcTestProvider, store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    client = make_client(provider, store, http)
    await provider.stop()
    await expect(ServiceUnavailable, "oidc_provider_unavailable", client.login_redirect())


async def test_provider_down_during_callback(
    provider: OidcTestProvider, client: OidcClient, http: aiohttp.ClientSession
) -> None:
    state, code = await browse(http, await client.login_redirect())
    await provider.stop()
    await expect(ServiceUnavailable, "oidc_provider_unavailable", client.callback(state, code))


async def test_discovery_issuer_must_match(
    provider: OidcTestProvider, store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    client = make_client(provider, store, http, issuer="https://other.example")
    await expect(ServiceUnavailable, "oidc_discovery_invalid", client.login_redirect())


def test_pkce_rfc7636_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


async def test_jwks_cache_skips_unusable_keys() -> None:
    async def fetch() -> dict[str, Any]:
        return {"keys": [{"kty": "oct", "k": "AAAA", "kid": "sym"},
                         {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}]}

    cache = JwksCache(fetch, min_refetch_s=0)
    with pytest.raises(Unauthorized):
        await cache.get("sym")
    with pytest.raises(Unauthorized):
        await cache.get("broken")


async def test_construction_and_settings(
    store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    assert not oidc_configured(Settings())
    settings = Settings(
        oidc_discovery_url="https://idp.example",
        oidc_client_id="cid",
        oidc_client_secret="sec",  # type: ignore[arg-type]
        oidc_redirect_url=REDIRECT,
        oidc_scopes="email profile",
    )
    assert oidc_configured(settings)
    client = OidcClient.from_settings(settings, store=store, session=http)
    assert client.scopes.split()[0] == "openid"  # openid is always requested
    with pytest.raises(ValueError):
        OidcClient(client_id="", client_secret="", redirect_url=REDIRECT, store=store,
                   session=http, discovery_url="https://idp.example")
    with pytest.raises(ValueError):
        OidcClient(client_id="c", client_secret="", redirect_url=REDIRECT, store=store,
                   session=http, issuer="https://idp.example")


def _id_claims(provider: OidcTestProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": provider.issuer, "sub": provider.user.sub, "aud": provider.client_id,
        "iat": now, "exp": now + 300, "nonce": "n-1",
    } | changes
    return {k: v for k, v in claims.items() if v is not None}


def _at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


async def test_verify_id_token_accepts_multi_audience_with_azp(
    client: OidcClient, provider: OidcTestProvider
) -> None:
    token = provider.sign(_id_claims(
        provider, aud=[provider.client_id, "other"], azp=provider.client_id,
        at_hash=_at_hash("at-1"),
    ))
    claims = await client.verify_id_token(token, nonce="n-1", access_token="at-1")
    assert claims["sub"] == provider.user.sub


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"aud": ["notifyd-test", "other"]}, "oidc_audience_mismatch"),  # no azp
        ({"azp": "other"}, "oidc_audience_mismatch"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "oidc_id_token_invalid"),
        ({"sub": ""}, "oidc_id_token_invalid"),
        ({"sub": None}, "oidc_id_token_invalid"),
        ({"iss": None}, "oidc_id_token_invalid"),
        ({"iat": int(time.time()) + 3600}, "oidc_id_token_invalid"),  # issued in the future
        ({"exp": "tomorrow"}, "oidc_id_token_invalid"),
    ],
)
async def test_verify_id_token_rejects(
    client: OidcClient, provider: OidcTestProvider, changes: dict[str, Any], code: str
) -> None:
    token = provider.sign(_id_claims(provider, **changes))
    await expect(Unauthorized, code, client.verify_id_token(token, nonce="n-1", access_token="at-1"))


async def test_verify_id_token_rejects_unsigned_and_garbage(
    client: OidcClient, provider: OidcTestProvider
) -> None:
    header, payload, _ = provider.sign(_id_claims(provider)).split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    await expect(Unauthorized, "oidc_id_token_invalid",
                 client.verify_id_token(f"{none_header}.{payload}.", nonce="n-1"))
    await expect(Unauthorized, "oidc_id_token_invalid",
                 client.verify_id_token(f"{header}.{payload}", nonce="n-1"))
    await expect(Unauthorized, "oidc_id_token_invalid",
                 client.verify_id_token("not a jwt", nonce="n-1"))


async def test_client_secret_basic_form_encodes_the_secret(
    store: CredentialStore, http: aiohttp.ClientSession
) -> None:
    # RFC 6749 2.3.1: the provider form-decodes id and secret from the Basic header.
    async with OidcTestProvider(redirect_uris={REDIRECT}, client_secret="s:e%c+r t/") as idp:
        client = make_client(idp, store, http)
        state, code = await browse(http, await client.login_redirect())
        assert (await client.callback(state, code))["sub"] == idp.user.sub
        assert "client_secret" not in idp.token_requests[-1]
