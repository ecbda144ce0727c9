"""The web view: every route mounted on the Faust app's aiohttp application.

:func:`install_web_view` is the factory's extension (``notifyd.service.create_app``):
the one module that knows every view, so the views never import each other to be
found, and importing any of them mounts nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from notifyd.metrics import metrics
from notifyd.stream.runtime import Runtime
from notifyd.web import console, realtime, unsubscribe
from notifyd.web.api import audience as audience_api  # noqa: F401  (its routes join the registry)
from notifyd.web.api.state import make_handlers
from notifyd.web.api.v1 import make_api_routes  # the /api/v1 registry, OpenAPI and /docs (+ static)
from notifyd.web.auth import setup as auth_setup
from notifyd.web.openapi import Registry, Resp
from notifyd.web.registry import registry
from notifyd.web.routing import HTTP_CLIENT


def install_web_view(rt: Runtime) -> None:
    app, settings = rt.app, rt.settings
    webapp: web.Application = app.web.web_app  # type: ignore[attr-defined]
    webapp._client_max_size = settings.max_request_bytes  # set before the app freezes

    async def http_client(webapp: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s, connect=3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            webapp[HTTP_CLIENT] = session
            yield

    webapp.cleanup_ctx.append(http_client)
    auth_setup.install(app, webapp)
    webapp.add_routes(make_handlers(app, settings, metrics))
    metrics.bind(app)
    webapp.on_cleanup.append(lambda _: metrics.close())
    _document_metrics(registry)
    realtime.install(webapp)
    console.install(webapp)
    unsubscribe.install(webapp)
    webapp.add_routes(make_api_routes(app))


def _document_metrics(registry: Registry) -> None:
    """Declare ``GET /metrics`` (handled in :mod:`.routes`) in the OpenAPI registry, once."""
    if any(ep.path == "/metrics" for ep in registry.endpoints):
        return
    registry.document(
        "GET", "/metrics", summary="Prometheus metrics", auth="public", tags=("operations",),
        operation_id="metrics",
        description="Prometheus text format 0.0.4: events, deliveries per channel and "
        "status, end-to-end latency, consumer lag per partition, DLQ sizes, table sizes.",
        responses={200: Resp("Metrics", {"type": "string"},
                             content_type="text/plain; version=0.0.4")},
    )
