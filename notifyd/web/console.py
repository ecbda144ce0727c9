"""The operator console (``/console``) and the numbers it shows (``/api/v1/admin/stats``).

The console is one static page (``web/static/console``: HTML, JavaScript, CSS; no
build step, nothing from a CDN).  The page is public; everything it shows comes from
the API, called with the operator's bearer token, which the page keeps in
``sessionStorage`` only.

``/api/v1/admin/stats`` reports throughput, latency and per-channel state counts
computed from the ``status`` table: each worker looks at the notifications of the
partitions it owns (``scope=local``), and by default the answering worker asks every
other worker of the group and adds their numbers up (``scope=cluster``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from .. import clock
from ..app import app
from ..errors import NotFound
from ..tables import status
from ..topics import names
from . import realtime
from .api import registry
from .openapi import Call, Param, Resp
from .routes import json_response
from .routing import HTTP_CLIENT, ROUTED_HEADER, is_local

log = structlog.stdlib.get_logger("notifyd.web.console")

STATIC_DIR = Path(__file__).parent / "static" / "console"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
#: The page and its assets may come from this daemon only (no CDN, no inline script).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
#: Latency samples one worker hands over per channel for the cluster figures.
MAX_SAMPLES = 2000
#: A worker's local figures are reused for this long (the console polls every 2 s).
CACHE_S = 1.0
PEER_TIMEOUT_S = 3.0


# --- the page ----------------------------------------------------------------------------


def _assets() -> dict[str, Path]:
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


@registry.route(
    "GET", "/console", summary="Operator console", auth="public", tags=("meta",),
    description="One page: log in, live throughput and latency, per-channel states, "
    "dead letters, a user's preferences/inbox/deliveries, send a test notification. "
    "The page is public; its API calls carry the operator's bearer token.",
    responses={200: Resp("HTML page", {"type": "string"}, content_type="text/html")},
)
async def console_page(call: Call) -> web.StreamResponse:
    path = STATIC_DIR / "index.html"
    if not path.is_file():
        raise NotFound("the console is not installed", code="not_found")
    return web.FileResponse(
        path,
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache",
                 "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer"},
    )


@registry.route(
    "GET", "/console/static/{asset}", summary="Operator console assets", auth="public",
    tags=("meta",), errors=(404,),
    path_params={"asset": {"type": "string", "maxLength": 100}},
    responses={200: Resp("The file (JavaScript, CSS, image)", {"type": "string"},
                         content_type="*/*")},
)
async def console_asset(call: Call) -> web.StreamResponse:
    path = _assets().get(call.path["asset"])
    if path is None or path.name == "index.html":
        raise NotFound(f"no asset {call.path['asset']!r}", code="not_found")
    return web.FileResponse(
        path,
        headers={"Content-Type": _TYPES[path.suffix], "Cache-Control": "no-cache",
                 "X-Content-Type-Options": "nosniff"},
    )


# --- the numbers -------------------------------------------------------------------------


def _active_status_partitions() -> set[int]:
    try:
        return {tp.partition for tp in app.assignor.assigned_actives()
                if tp.topic == names.status}
    except Exception:
        return set()


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return round(sorted_values[k], 3)


def _latency(samples: list[float]) -> dict[str, Any]:
    s = sorted(samples)
    return {
        "count": len(s),
        "mean": round(sum(s) / len(s), 3) if s else None,
        "p50": _percentile(s, 0.50),
        "p95": _percentile(s, 0.95),
        "p99": _percentile(s, 0.99),
        "max": round(s[-1], 3) if s else None,
    }


def scan_status(
    docs: Any, partitions: set[int] | None, now: float, window_s: float
) -> dict[str, dict[str, Any]]:
    """Per channel: current state counts, transitions within the window and the
    latencies (accepted → sent, ms) of the notifications sent within it."""
    since = now - window_s
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if partitions is not None and doc.get("p") not in partitions:
            continue
        for channel, entry in (doc.get("channels") or {}).items():
            ch = out.setdefault(channel, {"states": Counter(), "window": Counter(),
                                          "samples": []})
            ch["states"][str(entry.get("status"))] += 1
            for h in entry.get("history") or ():
                if float(h.get("ts") or 0) >= since:
                    ch["window"][str(h.get("status"))] += 1
            if (entry.get("status") == "sent" and float(entry.get("ts") or 0) >= since
                    and isinstance(entry.get("latency_ms"), int | float)):
                ch["samples"].append((float(entry["ts"]), float(entry["latency_ms"])))
    for ch in out.values():
        newest = sorted(ch["samples"], reverse=True)[:MAX_SAMPLES]
        ch["samples"] = [lat for _, lat in newest]
        ch["states"] = dict(ch["states"])
        ch["window"] = dict(ch["window"])
    return out


_cache: dict[float, tuple[float, dict[str, Any]]] = {}


def local_stats(window_s: float) -> dict[str, Any]:
    hit = _cache.get(window_s)
    mono = time.monotonic()
    if hit is not None and mono - hit[0] < CACHE_S:
        return hit[1]
    partitions = _active_status_partitions()
    now = clock.now()
    channels = scan_status(status.values(), partitions, now, window_s)
    result = {
        "worker": str(app.conf.canonical_url),
        "partitions": sorted(partitions),
        "generated_at": now,
        "window_s": window_s,
        "channels": channels,
        "realtime": realtime.hub.stats(),
    }
    _cache.clear()
    _cache[window_s] = (mono, result)
    return result


def summarize(workers: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    """Add up the local figures of ``workers`` (those without an ``error``)."""
    states: dict[str, Counter[str]] = {}
    window: dict[str, Counter[str]] = {}
    samples: dict[str, list[float]] = {}
    for w in workers:
        for name, ch in (w.get("channels") or {}).items():
            states.setdefault(name, Counter()).update(ch.get("states") or {})
            window.setdefault(name, Counter()).update(ch.get("window") or {})
            samples.setdefault(name, []).extend(ch.get("samples") or ())
    channels: dict[str, Any] = {}
    total_sent = total_failed = 0
    for name in sorted(states):
        sent = window[name].get("sent", 0)
        failed = window[name].get("failed", 0) + window[name].get("dead", 0)
        total_sent += sent
        total_failed += failed
        channels[name] = {
            "states": dict(sorted(states[name].items())),
            "window": dict(sorted(window[name].items())),
            "throughput_per_s": round(sent / window_s, 3),
            "latency_ms": _latency(samples[name]),
        }
    every = [x for name in samples for x in samples[name]]
    return {
        "window_s": window_s,
        "throughput_per_s": round(total_sent / window_s, 3),
        "sent": total_sent,
        "failed": total_failed,
        "latency_ms": _latency(every),
        "channels": channels,
    }


def _peers() -> list[URL]:
    try:
        hosts = list(app.router.tables_metadata())
    except Exception:
        return []
    return [URL(h) for h in hosts if not is_local(URL(h))]


async def _peer_stats(
    request: web.Request, peer: URL, window_s: float
) -> dict[str, Any]:
    headers = {ROUTED_HEADER: str(app.conf.canonical_url)}
    if request.headers.get("Authorization"):
        headers["Authorization"] = request.headers["Authorization"]
    url = peer.with_path("/api/v1/admin/stats").with_query(
        {"scope": "local", "window": str(int(window_s))}
    )
    try:
        async with request.app[HTTP_CLIENT].get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
        ) as resp:
            body = await resp.json()
            if resp.status != 200 or not isinstance(body, dict):
                return {"worker": str(peer), "error": f"HTTP {resp.status}: {body}"[:300]}
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"worker": str(peer), "error": f"{type(exc).__name__}: {exc}"[:300]}


_STATS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["window_s", "throughput_per_s", "latency_ms", "channels", "workers"],
    "properties": {
        "window_s": {"type": "number"},
        "throughput_per_s": {"type": "number", "description": "sent per second, all channels"},
        "sent": {"type": "integer"},
        "failed": {"type": "integer", "description": "failed or dead within the window"},
        "latency_ms": {"type": "object",
                       "description": "accepted → sent: count, mean, p50, p95, p99, max"},
        "channels": {
            "type": "object",
            "description": "channel → states (current), window (transitions), "
                           "throughput_per_s, latency_ms",
            "additionalProperties": {"type": "object"},
        },
        "workers": {
            "type": "array",
            "description": "per worker: worker, partitions, realtime (open streams), "
                           "error if it did not answer",
            "items": {"type": "object"},
        },
    },
}


@registry.route(
    "GET", "/api/v1/admin/stats", summary="Throughput, latency and delivery states",
    auth="operator", tags=("admin",),
    description="Computed from the delivery states (`status` table) of the last `window` "
    "seconds: sent per second, latency from acceptance to sending (per channel and "
    "overall), current state counts per channel, and the open realtime streams. "
    "`scope=cluster` (default) adds up every worker of the group; `scope=local` is "
    "this worker's partitions only.",
    query=(
        Param("window", {"type": "integer", "minimum": 5, "maximum": 3600, "default": 60},
              "seconds"),
        Param("scope", {"type": "string", "enum": ["cluster", "local"], "default": "cluster"}),
    ),
    responses={200: Resp("The figures", _STATS_SCHEMA)},
)
async def admin_stats(call: Call) -> web.StreamResponse:
    window_s = float(call.query["window"])
    local = local_stats(window_s)
    if call.query["scope"] == "local" or call.request.headers.get(ROUTED_HEADER):
        return json_response({**summarize([local], window_s), **local,
                              "workers": [_worker_line(local)]})
    peers = await asyncio.gather(*(_peer_stats(call.request, p, window_s) for p in _peers()))
    workers = [local, *peers]
    ok = [w for w in workers if "error" not in w]
    return json_response({**summarize(ok, window_s),
                          "workers": [_worker_line(w) for w in workers]})


def _worker_line(w: dict[str, Any]) -> dict[str, Any]:
    return {k: w[k] for k in ("worker", "partitions", "realtime", "error") if k in w}
