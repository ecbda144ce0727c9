"""A small but real OpenID Connect provider for tests (authorization code + PKCE).

Runs an aiohttp app on 127.0.0.1 (free port), signs ID tokens RS256 with a fresh RSA key
(``kid`` in the header, key published at the JWKS endpoint) and auto-approves one test
user.  It checks what a real provider checks -- client credentials, redirect_uri, single
use codes, PKCE S256 -- so a client that passes here does the protocol right.  ``fault``
makes it issue one kind of bad ID token for negative tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from yarl import URL

Fault = Literal[
    "wrong_issuer",
    "wrong_audience",
    "expired",
    "bad_nonce",
    "no_nonce",
    "bad_signature",
    "unknown_kid",
    "hs256",
    "no_id_token",
]


@dataclass
class TestUser:
    __test__ = False  # not a pytest test class

    sub: str = "test-user-1"
    email: str = "tester@example.com"
    name: str = "Test User"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    code_challenge: str
    scope: str
    expires_at: float


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey
    jwk: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}


def _new_key() -> _Key:
    return _Key(f"k-{uuid.uuid4().hex[:12]}", rsa.generate_private_key(65537, 2048))


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcTestProvider:
    """``async with OidcTestProvider() as idp:`` then point a client at ``idp.discovery_url``."""

    __test__ = False

    def __init__(
        self,
        *,
        client_id: str = "notifyd-test",
        client_secret: str = "test-client-secret",
        redirect_uris: Collection[str] | None = None,
        user: TestUser | None = None,
        id_token_ttl_s: int = 300,
        code_ttl_s: int = 60,
        host: str = "127.0.0.1",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        #: None accepts any redirect_uri (still checked to match between the two steps).
        self.redirect_uris = set(redirect_uris) if redirect_uris is not None else None
        self.user = user or TestUser()
        self.id_token_ttl_s = id_token_ttl_s
        self.code_ttl_s = code_ttl_s
        self.host = host
        self.port = 0
        #: Make the next ID tokens bad in one way (None = correct tokens).
        self.fault: Fault | None = None
        #: Answer the token endpoint with this HTTP status instead (e.g. 500).
        self.token_endpoint_status: int | None = None
        self.auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
        # Observability for tests.
        self.jwks_requests = 0
        self.token_requests: list[dict[str, str]] = []
        self._keys = [_new_key()]
        self._grants: dict[str, _Grant] = {}
        self._runner: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- addresses -------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def authorize_url(self) -> str:
        return f"{self.issuer}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as an RS256 JWT under the current published key (for verify tests)."""
        key = self._keys[0]
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})

    def rotate_key(self) -> None:
        """Publish a new signing key (the old one stays in the JWKS) and sign with it."""
        self._keys.insert(0, _new_key())

    # --- endpoints -------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.authorize_url,
                "token_endpoint": self.token_url,
                "jwks_uri": self.jwks_url,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": list(self.auth_methods),
                "scopes_supported": ["openid", "email", "profile"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response({"keys": [k.jwk for k in self._keys]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id:
            return web.json_response({"error": "invalid_client"}, status=400)
        if not redirect_uri or (
            self.redirect_uris is not None and redirect_uri not in self.redirect_uris
        ):
            return web.json_response({"error": "invalid_redirect_uri"}, status=400)

        def fail(error: str) -> web.Response:
            params = {"error": error, **({"state": q["state"]} if "state" in q else {})}
            raise web.HTTPFound(str(URL(redirect_uri).update_query(params)))

        if q.get("response_type") != "code":
            return fail("unsupported_response_type")
        if "openid" not in q.get("scope", "").split():
            return fail("invalid_scope")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return fail("invalid_request")  # this provider insists on PKCE S256
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(
            client_id=self.client_id,
            redirect_uri=redirect_uri,
            nonce=q.get("nonce"),
            code_challenge=q["code_challenge"],
            scope=q.get("scope", ""),
            expires_at=time.time() + self.code_ttl_s,
        )
        params = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        raise web.HTTPFound(str(URL(redirect_uri).update_query(params)))

    def _client_authenticated(self, request: web.Request, form: dict[str, str]) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic ") and "client_secret_basic" in self.auth_methods:
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode()
            except ValueError:
                return False
            cid, _, secret = decoded.partition(":")
            cid, secret = unquote_plus(cid), unquote_plus(secret)
        elif "client_secret" in form and "client_secret_post" in self.auth_methods:
            cid, secret = form.get("client_id", ""), form["client_secret"]
        else:
            return False
        return cid == self.client_id and hmac.compare_digest(secret, self.client_secret)

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        if self.token_endpoint_status is not None:
            return web.json_response({"error": "server_error"}, status=self.token_endpoint_status)
        if not self._client_authenticated(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        grant = self._grants.pop(form.get("code", ""), None)  # single use, even on failure
        if grant is None or grant.expires_at < time.time():
            return web.json_response({"error": "invalid_grant"}, status=400)
        if form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "redirect_uri mismatch"},
                status=400,
            )
        verifier = form.get("code_verifier", "")
        if not 43 <= len(verifier) <= 128 or not hmac.compare_digest(
            _s256(verifier), grant.code_challenge
        ):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "PKCE verification failed"},
                status=400,
            )
        body: dict[str, Any] = {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": grant.scope,
        }
        if self.fault != "no_id_token":
            body["id_token"] = self._id_token(grant)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        fault = self.fault
        claims: dict[str, Any] = {
            "iss": "http://evil.example" if fault == "wrong_issuer" else self.issuer,
            "sub": self.user.sub,
            "aud": "someone-else" if fault == "wrong_audience" else grant.client_id,
            "iat": now - 3600 if fault == "expired" else now,
            "exp": now - 600 if fault == "expired" else now + self.id_token_ttl_s,
            "auth_time": now,
            "email": self.user.email,
            "email_verified": True,
            "name": self.user.name,
        }
        if fault == "bad_nonce":
            claims["nonce"] = "not-the-nonce"
        elif fault != "no_nonce" and grant.nonce is not None:
            claims["nonce"] = grant.nonce
        key = self._keys[0]
        if fault == "hs256":
            return jwt.encode(claims, "k" * 64, algorithm="HS256", headers={"kid": key.kid})
        if fault == "bad_signature":
            # Right kid, wrong private key: only the signature check can catch it.
            return jwt.encode(claims, _new_key().private, "RS256", headers={"kid": key.kid})
        kid = "never-published" if fault == "unknown_kid" else key.kid
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": kid})
