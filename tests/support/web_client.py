"""The web view's REST API served in process (no Kafka) for unit tests: the real auth
and error middlewares over a store, with a cheap password hash."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from notifyd.stream.app import app
from notifyd.web.api import v1 as api
from notifyd.web.auth.setup import AUTH, AuthServices, is_public
from notifyd.web.auth.store import SqliteStore
from notifyd.web.auth.users import SessionService, TokenService, UserService, auth_middleware
from notifyd.web.auth.users import error_middleware as errors_mw

Client = TestClient[web.Request, web.Application]


@asynccontextmanager
async def api_client(
    store: SqliteStore,
    client_max_size: int,
    install: Callable[[web.Application], None] | None = None,
) -> AsyncIterator[Client]:
    """A started test client for the API routes; ``install`` adds others before them."""
    users = UserService(store, hasher=PasswordHasher(time_cost=1, memory_cost=1024,
                                                     parallelism=1))
    tokens = TokenService("t" * 40, store=store, users=users)
    sessions = SessionService(store, users)
    mw = auth_middleware(tokens, users, is_public, sessions=sessions)
    webapp = web.Application(client_max_size=client_max_size)
    webapp.middlewares.append(errors_mw)

    @web.middleware
    async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
        return await mw(request, handler)

    webapp.middlewares.append(authenticate)
    webapp[AUTH] = AuthServices(store, users, tokens, sessions, None, mw)
    if install is not None:
        install(webapp)
    webapp.add_routes(api.make_api_routes(app))
    tc = TestClient(TestServer(webapp))
    await tc.start_server()
    try:
        yield tc
    finally:
        await tc.close()
