"""The operator console (``/console``) and the numbers it shows (``/api/v1/admin/stats``).

The console is one static page (``web/static/console``: HTML, JavaScript, CSS; no
build step, nothing from a CDN).  The page is public; everything it shows comes from
the API, called with the operator's bearer token, which the page keeps in
``sessionStorage`` only.

``/api/v1/admin/stats`` reports throughput, latency and per-channel state counts
computed from the ``status`` table: each worker looks at the notifications of the
partitions it owns (``scope=local``), and by default the answering worker asks every
other worker of the group and adds their numbers up (``scope=cluster``).

``/api/v1/admin/providers`` lists the failover chains' providers and their circuits
(the console's Providers panel), each worker's own view, gathered the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import structlog
from aiohttp import web
from msgspec import Meta
from yarl import URL

from notifyd import clock
from notifyd.errors import NotFound
from notifyd.providers.chain import board
from notifyd.providers.spec import BUILTINS
from notifyd.stream.app import app, settings
from notifyd.stream.tables import status
from notifyd.stream.timing import pending_for
from notifyd.stream.topics import active_partitions, names
from notifyd.web import realtime
from notifyd.web.http import json_response
from notifyd.web.openapi import PATH_ID, Call, Param, Resp
from notifyd.web.registry import registry
from notifyd.web.routing import HTTP_CLIENT, ROUTED_HEADER, is_local, route

log = structlog.stdlib.get_logger("notifyd.web.console")

STATIC_DIR = Path(__file__).parent / "static" / "console"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
#: The page and its assets may come from this daemon only (no CDN, no inline script).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
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
    path_params={"asset": Annotated[str, Meta(max_length=100)]},
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
#
# Rates and latencies come from the worker's Prometheus counters (notifyd.metrics):
# a background task samples them every SAMPLE_S, and the figures of a window are the
# difference between now and the sample taken ``window`` seconds ago (or the oldest
# one, right after start).  Should the counters not be readable, the same figures are
# computed from the status table instead.  Current state counts always come from the
# status table (the notifications of this worker's partitions).

#: Latency bucket upper bounds (seconds) when the metrics module has none.
_FALLBACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0, 300.0, 900.0, 3600.0)
SAMPLE_S = 5.0
MAX_WINDOW_S = 900


@dataclass
class CounterSample:
    """The worker's delivery counters at one moment (monotonic seconds)."""

    at: float
    counts: dict[tuple[str, str], float]  # (channel, status) -> transitions
    buckets: dict[str, dict[float, float]]  # channel -> upper bound (s) -> cumulative
    sums: dict[str, float]  # channel -> seconds


def read_counters() -> CounterSample | None:
    """The delivery counters of :mod:`notifyd.metrics`, or None if unreadable."""
    try:
        from notifyd.metrics import metrics

        metrics.flush()
        counts: dict[tuple[str, str], float] = {}
        for fam in metrics.deliveries.collect():
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    counts[(smp.labels["channel"], smp.labels["status"])] = smp.value
        buckets: dict[str, dict[float, float]] = {}
        sums: dict[str, float] = {}
        for fam in metrics.delivery_latency.collect():
            for smp in fam.samples:
                ch = smp.labels.get("channel", "")
                if smp.name.endswith("_bucket"):
                    buckets.setdefault(ch, {})[float(smp.labels["le"])] = smp.value
                elif smp.name.endswith("_sum"):
                    sums[ch] = smp.value
    except Exception:
        log.debug("console.metrics_unreadable", exc_info=True)
        return None
    return CounterSample(time.monotonic(), counts, buckets, sums)


class Sampler:
    """A rolling history of :func:`read_counters`, one sample every ``SAMPLE_S``."""

    def __init__(self, keep_s: float = MAX_WINDOW_S + 2 * SAMPLE_S) -> None:
        self.samples: deque[CounterSample] = deque(maxlen=int(keep_s / SAMPLE_S) + 1)

    def sample(self) -> CounterSample | None:
        current = read_counters()
        if current is not None:
            self.samples.append(current)
        return current

    def baseline(self, now: float, window_s: float) -> CounterSample | None:
        """The newest sample at least ``window_s`` old, else the oldest one."""
        best = None
        for smp in self.samples:
            if now - smp.at >= window_s:
                best = smp
            else:
                return best or smp
        return best

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)


sampler = Sampler()


async def _sampling(webapp: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(sampler.run(), name="notifyd.console.sampler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install(webapp: web.Application) -> None:
    webapp.cleanup_ctx.append(_sampling)


def _active_status_partitions() -> frozenset[int]:
    return active_partitions(names.status)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: linear within the bucket holding rank ``q``·count."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, prev = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank and cum > prev:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - prev) / (cum - prev)
        lower, prev = le, cum
    return lower


def _latency(buckets: dict[float, float], total_s: float) -> dict[str, Any]:
    pairs = sorted(buckets.items())
    count = pairs[-1][1] if pairs else 0

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "count": int(count),
        "mean": ms(total_s / count) if count else None,
        "p50": ms(histogram_quantile(0.50, pairs)),
        "p95": ms(histogram_quantile(0.95, pairs)),
        "p99": ms(histogram_quantile(0.99, pairs)),
    }


def _bucket_bounds() -> tuple[float, ...]:
    try:
        from notifyd.metrics import LATENCY_BUCKETS

        return (*LATENCY_BUCKETS, math.inf)
    except Exception:
        return (*_FALLBACK_BUCKETS, math.inf)


def scan_status(
    docs: Any, partitions: AbstractSet[int] | None, now: float, window_s: float
) -> dict[str, dict[str, Any]]:
    """Per channel, from status documents: current state counts, transitions within
    the window, and a latency histogram (accepted → sent) of those sent within it."""
    since = now - window_s
    bounds = _bucket_bounds()
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if partitions is not None and doc.get("p") not in partitions:
            continue
        for channel, entry in (doc.get("channels") or {}).items():
            ch = out.setdefault(channel, {"states": Counter(), "window": Counter(),
                                          "buckets": dict.fromkeys(bounds, 0.0),
                                          "latency_sum_s": 0.0})
            ch["states"][str(entry.get("status"))] += 1
            for h in entry.get("history") or ():
                if float(h.get("ts") or 0) >= since:
                    ch["window"][str(h.get("status"))] += 1
            lat = entry.get("latency_ms")
            if (entry.get("status") == "sent" and float(entry.get("ts") or 0) >= since
                    and isinstance(lat, int | float)):
                ch["latency_sum_s"] += lat / 1000
                for le in bounds:
                    if lat / 1000 <= le:
                        ch["buckets"][le] += 1
    for ch in out.values():
        ch["states"] = dict(ch["states"])
        ch["window"] = dict(ch["window"])
    return out


def _from_counters(
    current: CounterSample, base: CounterSample
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (channel, st), value in current.counts.items():
        delta = value - base.counts.get((channel, st), 0.0)
        window = out.setdefault(channel, {}).setdefault("window", {})
        if delta > 0:
            window[st] = int(delta)
    for channel, cum in current.buckets.items():
        old = base.buckets.get(channel, {})
        ch = out.setdefault(channel, {})
        ch.setdefault("window", {})
        ch["buckets"] = {le: v - old.get(le, 0.0) for le, v in cum.items()}
        ch["latency_sum_s"] = current.sums.get(channel, 0.0) - base.sums.get(channel, 0.0)
    return out


_cache: dict[float, tuple[float, dict[str, Any]]] = {}


def local_stats(window_s: float) -> dict[str, Any]:
    """This worker's figures: JSON-safe, summable with other workers' (see summarize)."""
    hit = _cache.get(window_s)
    mono = time.monotonic()
    if hit is not None and mono - hit[0] < CACHE_S:
        return hit[1]
    partitions = _active_status_partitions()
    now = clock.now()
    scanned = scan_status(status.values(), partitions, now, window_s)
    current = read_counters()
    base = sampler.baseline(mono, window_s) if current is not None else None
    if current is not None and base is not None and current.at - base.at >= 1.0:
        source, elapsed = "metrics", current.at - base.at
        windowed = _from_counters(current, base)
    else:
        source, elapsed = "status_table", window_s
        windowed = scanned
    channels: dict[str, Any] = {}
    for name in sorted(set(scanned) | set(windowed)):
        w = windowed.get(name, {})
        channels[name] = {
            "states": scanned.get(name, {}).get("states", {}),
            "window": w.get("window", {}),
            "rate_per_s": round(w.get("window", {}).get("sent", 0) / elapsed, 3),
            # JSON keys are strings: bounds as [[le, cumulative], ...] ("inf" for +Inf).
            "buckets": [[le if math.isfinite(le) else "inf", v]
                        for le, v in sorted(w.get("buckets", {}).items())],
            "latency_sum_s": round(w.get("latency_sum_s", 0.0), 6),
        }
    result = {
        "worker": str(app.conf.canonical_url),
        "partitions": sorted(partitions),
        "generated_at": now,
        "window_s": window_s,
        "source": source,
        "covered_s": round(elapsed, 3),
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
    rate: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    for w in workers:
        for name, ch in (w.get("channels") or {}).items():
            states.setdefault(name, Counter()).update(ch.get("states") or {})
            window.setdefault(name, Counter()).update(ch.get("window") or {})
            rate[name] = rate.get(name, 0.0) + float(ch.get("rate_per_s") or 0)
            b = buckets.setdefault(name, {})
            for le, v in ch.get("buckets") or ():
                key = math.inf if le == "inf" else float(le)
                b[key] = b.get(key, 0.0) + float(v)
            sums[name] = sums.get(name, 0.0) + float(ch.get("latency_sum_s") or 0)
    channels: dict[str, Any] = {}
    all_buckets: dict[float, float] = {}
    sent = failed = 0
    for name in sorted(states):
        sent += window[name].get("sent", 0)
        failed += window[name].get("failed", 0) + window[name].get("dead", 0)
        for le, v in buckets[name].items():
            all_buckets[le] = all_buckets.get(le, 0.0) + v
        channels[name] = {
            "states": dict(sorted(states[name].items())),
            "window": dict(sorted(window[name].items())),
            "throughput_per_s": round(rate[name], 3),
            "latency_ms": _latency(buckets[name], sums[name]),
        }
    return {
        "window_s": window_s,
        "source": sorted({str(w.get("source")) for w in workers if w.get("source")}),
        "throughput_per_s": round(sum(rate.values()), 3),
        "sent": sent,
        "failed": failed,
        "latency_ms": _latency(all_buckets, sum(sums.values())),
        "channels": channels,
    }


def _peers() -> list[URL]:
    try:
        hosts = list(app.router.tables_metadata())
    except Exception:
        return []
    return [URL(h) for h in hosts if not is_local(URL(h))]


async def _ask_peer(
    request: web.Request,
    peer: URL,
    path: str,
    query: dict[str, str],
    take: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> dict[str, Any]:
    """A peer's own view (``path`` with ``query``), asked as routed, with the caller's
    bearer token: ``take`` makes the row from the JSON object it answered (None: not an
    answer); anything else is a row ``{"worker", "error"}``."""
    headers = {ROUTED_HEADER: str(app.conf.canonical_url)}
    if request.headers.get("Authorization"):
        headers["Authorization"] = request.headers["Authorization"]
    url = peer.with_path(path).with_query(query)
    try:
        async with request.app[HTTP_CLIENT].get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
        ) as resp:
            body = await resp.json()
            row = take(body) if resp.status == 200 and isinstance(body, dict) else None
            if row is None:
                return {"worker": str(peer), "error": f"HTTP {resp.status}: {body}"[:300]}
            return row
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"worker": str(peer), "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _peer_stats(
    request: web.Request, peer: URL, window_s: float
) -> dict[str, Any]:
    def take(body: dict[str, Any]) -> dict[str, Any] | None:
        return body["local"] if "local" in body else None

    query = {"scope": "local", "window": str(int(window_s))}
    return await _ask_peer(request, peer, "/api/v1/admin/stats", query, take)


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
        "local": {"type": "object",
                  "description": "scope=local only: this worker's raw figures"},
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
    description="Figures of the last `window` seconds: deliveries sent per second and "
    "end-to-end latency (producer timestamp to provider success; p50/p95/p99 estimated "
    "from the worker's Prometheus histogram, `source` metrics — or from the `status` "
    "table, `source` status_table, when the counters cannot be read), transitions per "
    "channel and status, current state counts per channel (status table), and the open "
    "realtime streams. `scope=cluster` (default) adds up every worker of the group; "
    "`scope=local` is this worker only.",
    query=(
        Param("window", Annotated[int, Meta(ge=5, le=MAX_WINDOW_S)], "seconds", default=60),
        Param("scope", Literal["cluster", "local"], default="cluster"),
    ),
    responses={200: Resp("The figures", _STATS_SCHEMA)},
)
async def admin_stats(call: Call) -> web.StreamResponse:
    window_s = float(call.query["window"])
    local = local_stats(window_s)
    if call.query["scope"] == "local" or call.request.headers.get(ROUTED_HEADER):
        # "local" carries the raw figures (with latency samples) for the cluster sum.
        return json_response({**summarize([local], window_s),
                              "workers": [_worker_line(local)], "local": local})
    peers = await asyncio.gather(*(_peer_stats(call.request, p, window_s) for p in _peers()))
    workers = [local, *peers]
    ok = [w for w in workers if "error" not in w]
    return json_response({**summarize(ok, window_s),
                          "workers": [_worker_line(w) for w in workers]})


def _worker_line(w: dict[str, Any]) -> dict[str, Any]:
    keys = ("worker", "partitions", "source", "covered_s", "realtime", "error")
    return {k: w[k] for k in keys if k in w}


# --- provider health (failover chains) ------------------------------------------------------
#
# Each worker keeps its own circuits (notifyd.providers.chain): a worker learns that a
# provider is down from its own calls.  scope=local is this worker's view; the default
# asks every worker of the group (as the stats do) and lists each one's view.

_PROVIDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "worker": {"type": "string"},
        "channel": {"type": "string"},
        "provider": {"type": "string", "description": "configured name (never the URL)"},
        "position": {"type": "integer", "description": "1 = tried first"},
        "state": {"type": "string", "enum": ["closed", "half_open", "open"]},
        "consecutive_failures": {"type": "integer"},
        "failure_threshold": {"type": "integer"},
        "retry_in_s": {"type": "number", "description": "open: seconds until a probe"},
        "attempts": {"type": "integer"},
        "failures": {"type": "integer"},
        "skipped": {"type": "integer", "description": "deliveries that skipped it (open)"},
        "last_error": {"type": ["string", "null"]},
    },
}
_PROVIDERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["configured", "providers", "workers"],
    "properties": {
        "configured": {
            "type": "object",
            "description": "channel → provider names in failover order (this worker's "
                           "settings); one name: no failover",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "providers": {"type": "array", "items": _PROVIDER_SCHEMA,
                      "description": "per worker and provider of a failover chain"},
        "workers": {"type": "array", "items": {"type": "object"},
                    "description": "per worker: worker, error if it did not answer"},
    },
}

# --- a user's pending schedules and open digests ----------------------------------------

_PENDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", "scheduled", "digests"],
    "properties": {
        "user_id": {"type": "string"},
        "scheduled": {"type": "array", "items": {
            "type": "object",
            "description": "a scheduled send: notification_id, event_id, due (epoch s), "
            "channels, title, scheduled_at"}},
        "digests": {"type": "array", "items": {
            "type": "object",
            "description": "an open digest: digest_id, category, window, start, closes_at "
            "(epoch s), count, titles (the first NOTIFYD_DIGEST_MAX_TITLES)"}},
    },
}


def local_providers() -> dict[str, Any]:
    """This worker's failover chains and their circuits."""
    worker = str(app.conf.canonical_url)
    return {
        "worker": worker,
        "configured": {ch: [s.name for s in settings.provider_specs(ch)] for ch in BUILTINS},
        "providers": [{"worker": worker, **row} for row in board.snapshot()],
    }


async def _peer_providers(request: web.Request, peer: URL) -> dict[str, Any]:
    def take(body: dict[str, Any]) -> dict[str, Any]:
        return {"worker": str(peer), "providers": list(body.get("providers") or [])}

    return await _ask_peer(request, peer, "/api/v1/admin/providers", {"scope": "local"}, take)


@registry.route(
    "GET", "/api/v1/admin/providers", summary="Provider health (failover and circuits)",
    auth="operator", tags=("admin",),
    description="Per channel, the configured providers in failover order; per worker and "
    "provider of a failover chain, its circuit (closed, half_open, open), consecutive "
    "failures, attempts, failures and skips since the worker started. Circuits are "
    "per worker (each learns from its own calls): `scope=cluster` (default) lists every "
    "worker's view, `scope=local` this worker's only.",
    query=(Param("scope", Literal["cluster", "local"], default="cluster"),),
    responses={200: Resp("Provider health", _PROVIDERS_SCHEMA)},
)
async def admin_providers(call: Call) -> web.StreamResponse:
    local = local_providers()
    views = [{"worker": local["worker"], "providers": local["providers"]}]
    if call.query["scope"] != "local" and not call.request.headers.get(ROUTED_HEADER):
        views += await asyncio.gather(*(_peer_providers(call.request, p) for p in _peers()))
    rows = [row for v in views for row in v.get("providers", ())]
    return json_response({
        "configured": local["configured"],
        "providers": rows,
        "workers": [{k: v[k] for k in ("worker", "error") if k in v} for v in views],
    })


@registry.route(
    "GET", "/api/v1/admin/users/{user_id}/pending", summary="Pending schedules and open digests",
    auth="operator", tags=("admin",), routed=True,
    path_params={"user_id": PATH_ID},
    description="The user's scheduled sends (not yet due) and open digests, earliest "
    "first, from the worker owning the user's partition (it reads its scheduler's index "
    "by key, never the whole table).",
    responses={200: Resp("Pending schedules and open digests", _PENDING_SCHEMA)},
)
async def user_pending(call: Call) -> web.StreamResponse:
    user_id = call.path["user_id"]
    routed = await route(call.request, "preferences", user_id)
    if routed is not None:
        return routed
    return json_response({"user_id": user_id, **pending_for(user_id)})

