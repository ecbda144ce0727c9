"""Routes of the web view: health, readiness and state queries (more in web.api)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import faust
from aiohttp import web

from notifyd.errors import BadRequest, NotFound
from notifyd.model.records import dumps
from notifyd.stream.app import recovery_done, settings
from notifyd.stream.topics import active_partitions, names
from notifyd.web.openapi import Param, parse_query
from notifyd.web.routing import HTTP_CLIENT, route

#: Tables whose rows are written while a record keyed by the user is processed (an
#: event, a delivery): a row lives in its user's partition, whatever its own key hashes
#: to, so a look-up must name the user to reach the worker that holds it.
USER_PARTITIONED = frozenset({"seen", "ledger", "scheduled", "cancels"})

#: Query of ``GET /api/v1/admin/tables/{table}/{key}`` (also in the OpenAPI document).
TABLE_QUERY = (
    Param(
        "user_id",
        {"type": "string", "minLength": 1, "maxLength": 200},
        "The user whose partition holds the row: required for "
        f"{', '.join(sorted(USER_PARTITIONED))}; not accepted for the other tables, "
        "whose key chooses the partition (user id, or notification id for status).",
    ),
)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(data), status=status, content_type="application/json", headers=headers
    )


def make_handlers(app: faust.App) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok", "worker": str(app.conf.canonical_url)})

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        recovered = recovery_done(app)
        partitions = sorted(active_partitions())
        ready = recovered and not app.rebalancing and bool(partitions)
        body = {
            "ready": ready,
            "recovery_done": recovered,
            "rebalancing": bool(app.rebalancing),
            "partitions": partitions,
            "worker": str(app.conf.canonical_url),
        }
        if not ready:
            return json_response(
                {"code": "not_ready", "detail": "worker is not ready", **body}, 503
            )
        return json_response(body)

    @routes.get("/metrics")
    async def metrics_view(request: web.Request) -> web.Response:
        from notifyd.metrics import CONTENT_TYPE, metrics

        await metrics.refresh(
            app,
            dlq_topics=(names.events_dlq, names.deliveries_dlq),
            bootstrap=settings.bootstrap_servers,
        )
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @routes.get("/api/v1/admin/tables/{table}/{key}")
    async def table_get(request: web.Request) -> web.Response:
        from notifyd.stream.tables import TABLES
        from notifyd.web.auth.setup import require_operator

        await require_operator(request)
        name = request.match_info["table"]
        key = request.match_info["key"]
        table = TABLES.get(name)
        if table is None:
            raise NotFound(
                f"no table named {name!r}; tables: {', '.join(sorted(TABLES))}",
                code="unknown_table",
            )
        user_id: str | None = parse_query(request.query, TABLE_QUERY).get("user_id")
        if name in USER_PARTITIONED and user_id is None:
            raise BadRequest(
                f"{name} rows live in their user's partition: give ?user_id=",
                code="missing_parameter",
            )
        if name not in USER_PARTITIONED and user_id is not None:
            raise BadRequest(
                f"user_id is only for {', '.join(sorted(USER_PARTITIONED))}: "
                f"the key of {name} chooses its partition",
                code="invalid_parameter",
            )
        # Routed by the key that chose the row's partition (all tables are co-partitioned);
        # a "<topic>#<bucket>" row of subscribers lives in its topic's partition.
        owner_key = key.split("#", 1)[0] if name == "subscribers" else (user_id or key)
        routed = await route(request, name, owner_key)
        if routed is not None:
            return routed
        value = table.get(key)
        if value is None:
            where = f" in user {user_id!r}'s partition" if user_id else ""
            raise NotFound(f"{name}[{key!r}] has no value{where}", code="key_not_found")
        return json_response(
            {"table": name, "key": key, "value": value, "worker": str(app.conf.canonical_url)}
        )

    return routes


async def _http_client(webapp: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s, connect=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        webapp[HTTP_CLIENT] = session
        yield


def setup(app: faust.App) -> None:
    webapp: web.Application = app.web.web_app  # type: ignore[attr-defined]
    webapp._client_max_size = settings.max_request_bytes  # set before the app freezes
    webapp.cleanup_ctx.append(_http_client)
    from notifyd.web import protocol
    from notifyd.web.auth.setup import install

    protocol.install(app.web)  # parser errors as JSON too

    install(app, webapp)
    webapp.add_routes(make_handlers(app))
    from notifyd.metrics import metrics
    from notifyd.web import console, realtime, unsubscribe
    from notifyd.web.api import audience as audience_api  # noqa: F401  (their routes join the registry)
    from notifyd.web.api.v1 import (
        make_api_routes,  # the /api/v1 registry, OpenAPI and /docs (+ static)
    )
    from notifyd.web.api.v1 import registry as api_registry

    metrics.bind(app)
    webapp.on_cleanup.append(lambda _: metrics.close())
    _document_metrics(api_registry)
    realtime.install(webapp)
    console.install(webapp)
    unsubscribe.install(webapp)
    webapp.add_routes(make_api_routes(app))


def _document_metrics(registry: Any) -> None:
    """Declare ``GET /metrics`` (handled above) in the OpenAPI registry, once."""
    from notifyd.web.openapi import Resp

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
