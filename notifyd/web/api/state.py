"""Routes of the web view: health, readiness and state queries (more in web.api)."""

from __future__ import annotations

import faust
import msgspec
from aiohttp import web

from notifyd.config import Settings
from notifyd.errors import BadRequest, NotFound
from notifyd.metrics import CONTENT_TYPE, Metrics
from notifyd.model.responses import Health, Readiness, TableEntry
from notifyd.stream.app import recovery_done
from notifyd.stream.tables import TABLES
from notifyd.stream.topics import active_partitions, names
from notifyd.web.auth.setup import require_operator
from notifyd.web.http import json_response
from notifyd.web.openapi import PATH_ID, Param, parse_query
from notifyd.web.routing import route

#: Tables whose rows are written while a record keyed by the user is processed (an
#: event, a delivery): a row lives in its user's partition, whatever its own key hashes
#: to, so a look-up must name the user to reach the worker that holds it.
USER_PARTITIONED = frozenset({"seen", "ledger", "scheduled", "cancels", "status"})

#: Query of ``GET /api/v1/admin/tables/{table}/{key}`` (also in the OpenAPI document).
TABLE_QUERY = (
    Param(
        "user_id",
        PATH_ID,
        "The user whose partition holds the row: required for "
        f"{', '.join(sorted(USER_PARTITIONED))}; not accepted for the other tables, "
        "whose key chooses the partition (the user id, or a subscribers row's topic).",
    ),
)


def make_handlers(app: faust.App, settings: Settings, metrics: Metrics) -> web.RouteTableDef:
    """Health, readiness, metrics and table look-ups of ``app``."""
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return json_response(
            msgspec.to_builtins(Health(status="ok", worker=str(app.conf.canonical_url)))
        )

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        recovered = recovery_done(app)
        partitions = sorted(active_partitions())
        ready = recovered and not app.rebalancing and bool(partitions)
        body = Readiness(
            ready=ready,
            recovery_done=recovered,
            rebalancing=bool(app.rebalancing),
            partitions=partitions,
            worker=str(app.conf.canonical_url),
        )
        if not ready:
            body.code, body.detail = "not_ready", "worker is not ready"
            return json_response(msgspec.to_builtins(body), 503)
        return json_response(msgspec.to_builtins(body))

    @routes.get("/metrics")
    async def metrics_view(request: web.Request) -> web.Response:
        await metrics.refresh(
            app,
            dlq_topics=(names.events_dlq, names.deliveries_dlq),
            bootstrap=settings.bootstrap_servers,
        )
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @routes.get("/api/v1/admin/tables/{table}/{key}")
    async def table_get(request: web.Request) -> web.Response:
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
        return json_response(msgspec.to_builtins(
            TableEntry(table=name, key=key, value=value, worker=str(app.conf.canonical_url))
        ))

    return routes
