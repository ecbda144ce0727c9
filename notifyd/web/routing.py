"""Answer key-addressed requests on whichever worker owns the key's partition.

Faust's ``table_route`` has two pitfalls this module avoids: it serializes the URL
key with the table's key serializer (ours is raw, so the owner computed here is the
partition the producer's murmur2 picked), and it forwards neither the request body
nor the method faithfully.  Here the whole request is proxied (method, query,
body, auth header), and a request that was already routed once is never routed
again: during a rebalance it gets a 503 ``rebalancing`` instead of a loop.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from yarl import URL

from notifyd.errors import ServiceUnavailable
from notifyd.stream.app import app

ROUTED_HEADER = "X-Notifyd-Routed-By"
_HOP_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)
HTTP_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("notifyd_http", aiohttp.ClientSession)


def _ident(url: URL) -> tuple[str, int]:
    host = url.host or ""
    if host in ("localhost", "0.0.0.0"):
        host = "127.0.0.1"
    return host, int(url.port or 80)


def owner_of(table_name: str, key: str) -> URL:
    try:
        return app.router.key_store(table_name, key)
    except Exception as exc:  # no assignment or topic metadata yet (startup, rebalance)
        raise ServiceUnavailable(
            f"partition owner not known yet ({type(exc).__name__}); retry shortly",
            code="not_ready",
        ) from exc


def is_local(url: URL) -> bool:
    return _ident(url) == _ident(URL(str(app.conf.canonical_url)))


def forward_plan(
    request: web.Request, table_name: str, key: str
) -> tuple[URL, URL, dict[str, str]] | None:
    """``None`` if this worker owns ``key`` of ``table_name``; else (owner, the URL to ask
    it, the request headers to send).  A request routed once is never routed again."""
    owner = owner_of(table_name, key)
    if is_local(owner):
        return None
    if request.headers.get(ROUTED_HEADER):
        raise ServiceUnavailable(
            "partition ownership is moving (rebalance); retry shortly", code="rebalancing"
        )
    # Host is kept: the owner checks Origin against it (cookie-authenticated writes).
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    headers[ROUTED_HEADER] = str(app.conf.canonical_url)
    target = owner.with_path(request.rel_url.path).with_query(request.rel_url.query)
    return owner, target, headers


async def relay_whole(resp: aiohttp.ClientResponse, owner: URL) -> web.Response:
    """The owner's answer, read completely, as this worker's response."""
    payload = await resp.read()
    out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
    out_headers["X-Notifyd-Served-By"] = str(owner)
    return web.Response(status=resp.status, body=payload, headers=out_headers)


def owner_unreachable(owner: URL, exc: BaseException, what: str = "did not answer") -> Exception:
    return ServiceUnavailable(
        f"the worker owning this key ({owner}) {what}: {type(exc).__name__}",
        code="owner_unreachable",
    )


async def route(request: web.Request, table_name: str, key: str) -> web.Response | None:
    """``None`` if this worker owns ``key`` of ``table_name``; else the owner's answer."""
    plan = forward_plan(request, table_name, key)
    if plan is None:
        return None
    owner, target, headers = plan
    body = await request.read()
    session = request.app[HTTP_CLIENT]
    try:
        async with session.request(
            request.method, target, headers=headers, data=body or None, allow_redirects=False
        ) as resp:
            return await relay_whole(resp, owner)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise owner_unreachable(owner, exc) from exc
