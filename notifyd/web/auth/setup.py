"""Wires the credential store, users, tokens, sessions and OIDC into the web view.

Services are created when the web server starts (the store may be Redis or SQLite)
and kept under typed ``AppKey``s.  The middleware order is: errors (every failure is
JSON ``{code, detail}``) → authentication (the current user is resolved once per
request) → handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import faust
from aiohttp import web

from notifyd.stream.app import settings
from notifyd.web.auth.oidc import OidcClient, oidc_configured
from notifyd.web.auth.store import CredentialStore, open_store, resolve_jwt_secret
from notifyd.web.auth.users import (
    CurrentUser,
    LoginThrottle,
    SessionService,
    TokenService,
    UserService,
    auth_middleware,
    error_middleware,
)
from notifyd.web.auth.users import require_operator as _require_operator
from notifyd.web.auth.users import require_user as _require_user

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/users",  # sign-up (POST); listing is not offered
        "/api/v1/auth/token",
        "/api/v1/auth/refresh",
        "/api/v1/auth/login",
        "/api/v1/auth/callback",
        "/api/v1/unsubscribe",  # e-mail unsubscribe links: the signed token is the credential
        "/",
    }
)
PUBLIC_PREFIXES = ("/docs", "/static/", "/console")


@dataclass
class AuthServices:
    store: CredentialStore
    users: UserService
    tokens: TokenService
    sessions: SessionService
    oidc: OidcClient | None
    middleware: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


AUTH: web.AppKey[AuthServices] = web.AppKey("notifyd_auth", AuthServices)


def is_public(request: web.Request) -> bool:
    path = request.path
    if path == "/api/v1/users" and request.method != "POST":
        return False
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _auth_ctx(webapp: web.Application) -> AsyncIterator[None]:
    settings.datadir.mkdir(parents=True, exist_ok=True)
    store = await open_store(settings.resolved_credential_store_url)
    try:
        users = UserService(store, throttle=LoginThrottle(store))
        tokens = TokenService.from_settings(
            settings, store=store, users=users, secret=await resolve_jwt_secret(settings, store)
        )
        sessions = SessionService.from_settings(settings, store=store, users=users)
        oidc_session: aiohttp.ClientSession | None = None
        oidc: OidcClient | None = None
        if oidc_configured(settings):
            oidc_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.http_timeout_s)
            )
            oidc = OidcClient.from_settings(settings, store=store, session=oidc_session)
        mw = auth_middleware(tokens, users, is_public, sessions=sessions)
        webapp[AUTH] = AuthServices(store, users, tokens, sessions, oidc, mw)
        try:
            yield
        finally:
            if oidc_session is not None:
                await oidc_session.close()
    finally:
        await store.close()


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    services = request.app[AUTH]
    return await services.middleware(request, handler)


def install(app: faust.App, webapp: web.Application) -> None:
    webapp.middlewares.append(error_middleware)
    webapp.middlewares.append(_authenticate)
    webapp.cleanup_ctx.append(_auth_ctx)


def services(request: web.Request) -> AuthServices:
    return request.app[AUTH]


async def require_user(request: web.Request) -> CurrentUser:
    return _require_user(request)


async def require_operator(request: web.Request) -> CurrentUser:
    return _require_operator(request)
