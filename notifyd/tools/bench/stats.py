"""Pure parts of ``notifyd bench``: percentiles, pacing, ratios, result shape, the table.

Nothing here touches the network or the clock, so all of it is unit-tested
(``tests/unit/test_bench.py``); :mod:`notifyd.tools.bench.run` does the measuring.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA = "notifyd-bench/1"
#: Top-level sections every result document has (``state`` may say ``skipped``).
SECTIONS: tuple[str, ...] = (
    "schema",
    "started_at",
    "finished_at",
    "options",
    "machine",
    "broker",
    "floor",
    "notifyd",
    "ratios",
    "sink",
    "http",
    "quix",
    "state",
    "artifacts",
)
#: Targets of issue #15: notifyd's two HTTP channels against a naive Quix Streams peer
#: doing the same requests, and against the capacity of the sink they all post to.
HTTP_TARGETS: dict[str, float] = {"vs_quix": 4.0, "vs_sink": 0.4}
LATENCY_KEYS: tuple[str, ...] = ("count", "min", "mean", "p50", "p90", "p99", "p999", "max")


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation
    between closest ranks (numpy's default); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | int | None]:
    """count/min/mean/p50/p90/p99/p99.9/max of latencies in milliseconds (rounded to µs);
    every figure is None when there are no values."""
    data = sorted(values_ms)
    if not data:
        return {k: (0 if k == "count" else None) for k in LATENCY_KEYS}

    def r(x: float) -> float:
        return round(x, 3)

    return {
        "count": len(data),
        "min": r(data[0]),
        "mean": r(math.fsum(data) / len(data)),
        "p50": r(percentile(data, 50)),
        "p90": r(percentile(data, 90)),
        "p99": r(percentile(data, 99)),
        "p999": r(percentile(data, 99.9)),
        "max": r(data[-1]),
    }


def log_histogram(
    values_ms: Iterable[float], lo: float = 0.1, hi: float = 100_000.0, per_decade: int = 10
) -> dict[str, list[float] | list[int]]:
    """Counts in log-spaced buckets (``edges`` in ms, ``len(counts) == len(edges) - 1``);
    values below ``lo`` land in the first bucket, above ``hi`` in the last."""
    decades = math.log10(hi) - math.log10(lo)
    n = max(1, round(decades * per_decade))
    edges = [round(lo * 10 ** (i / per_decade), 6) for i in range(n + 1)]
    counts = [0] * n
    step = math.log10(lo)
    for v in values_ms:
        if v <= lo:
            i = 0
        else:
            i = min(n - 1, int((math.log10(v) - step) * per_decade))
        counts[i] += 1
    return {"edges": edges, "counts": counts}


def per_event_us(cpu_s: float | None, n: int) -> float | None:
    """CPU microseconds per event (or request), None when unknown."""
    if cpu_s is None or n <= 0:
        return None
    return round(cpu_s / n * 1e6, 1)


def rate(count: int, seconds: float) -> float | None:
    """Events per second, None when nothing can be said (no time elapsed)."""
    if seconds <= 0:
        return None
    return round(count / seconds, 1)


# --------------------------------------------------------------------------------------
# Pacing: a fixed-rate producer sends, at each ~1 ms tick, what is due by then
# --------------------------------------------------------------------------------------


def due_count(rate_per_s: float, elapsed_s: float, total: int) -> int:
    """How many messages a producer pacing ``rate_per_s`` from t=0 should have sent
    by ``elapsed_s`` (the first one at t=0), never more than ``total``."""
    if rate_per_s <= 0:
        raise ValueError("rate must be positive")
    if elapsed_s < 0:
        return 0
    return min(total, math.floor(elapsed_s * rate_per_s) + 1)


def batch_to_send(rate_per_s: float, elapsed_s: float, sent: int, total: int) -> int:
    """Messages to send at this tick: what is due minus what was sent already."""
    return max(0, due_count(rate_per_s, elapsed_s, total) - sent)


def total_for(rate_per_s: float, duration_s: float) -> int:
    """Messages in a fixed-rate run of ``duration_s`` seconds."""
    return max(1, round(rate_per_s * duration_s))


# --------------------------------------------------------------------------------------
# Ratios and the result document
# --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def compute_ratios(
    floor: Mapping[str, Any],
    notifyd: Mapping[str, Any],
    sink: Mapping[str, Any] | None = None,
    http: Mapping[str, Any] | None = None,
    quix: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """notifyd ÷ floor: throughput, and p99 (and p50) latency at each rate both ran;
    ``http``: notifyd's HTTP deliveries/s ÷ the Quix Streams peer's and ÷ the sink's
    capacity (requests/s), with their targets (:data:`HTTP_TARGETS`)."""
    out: dict[str, Any] = {
        "throughput": ratio(
            notifyd.get("throughput", {}).get("events_per_s"),
            floor.get("throughput", {}).get("events_per_s"),
        ),
        # The in-app channel only: its provider (the inbox table) is in the worker.
        "throughput_inprocess": ratio(
            notifyd.get("throughput_inprocess", {}).get("events_per_s"),
            floor.get("throughput", {}).get("events_per_s"),
        ),
        "p99": {},
        "p50": {},
        "http": http_ratios(sink or {}, http or {}, quix or {}),
    }
    f_lat: Mapping[str, Any] = floor.get("latency", {})
    n_lat: Mapping[str, Any] = notifyd.get("latency", {})
    for r in sorted(set(f_lat) & set(n_lat), key=float):
        e2e = n_lat[r].get("e2e", {})
        for q in ("p99", "p50"):
            out[q][r] = {
                "vs_single_hop": ratio(e2e.get(q), f_lat[r].get("single_hop", {}).get(q)),
                "vs_passthrough": ratio(e2e.get(q), f_lat[r].get("passthrough", {}).get(q)),
            }
    out["cpu_paced_vs_burst"] = paced_cpu_ratios(floor, notifyd)
    return out


def paced_cpu_ratios(
    floor: Mapping[str, Any], notifyd: Mapping[str, Any]
) -> dict[str, dict[str, float | None]]:
    """Per rate: CPU µs per event of the floor's and notifyd's process at that rate, and
    each ÷ its own burst figure.  The floor's ratio is what a bare aiokafka consumer and
    producer pay per wake-up on the machine, the same cost notifyd's ratio includes."""
    burst = {
        "floor": floor.get("throughput", {}).get("worker_cpu_us_per_event"),
        "notifyd": notifyd.get("throughput", {}).get("worker_cpu_us_per_event"),
    }
    out: dict[str, dict[str, float | None]] = {}
    sides = {"floor": floor.get("latency", {}), "notifyd": notifyd.get("latency", {})}
    for r in sorted(set(sides["floor"]) | set(sides["notifyd"]), key=float):
        row: dict[str, float | None] = {}
        for side, lat in sides.items():
            run = lat.get(r, {})
            us = per_event_us((run.get("cpu_s") or {}).get("worker"), run.get("received") or 0)
            row[f"{side}_us"] = us
            row[side] = ratio(us, burst[side])
        out[r] = row
    return out


def http_ratios(
    sink: Mapping[str, Any], http: Mapping[str, Any], quix: Mapping[str, Any]
) -> dict[str, Any]:
    """``vs_quix`` = notifyd ÷ Quix deliveries/s, ``vs_sink`` = notifyd deliveries/s ÷
    sink requests/s (None when a side is missing); ``met``: each against its target."""
    mine = http.get("deliveries_per_s")
    values = {
        "vs_quix": ratio(mine, quix.get("deliveries_per_s")),
        "vs_sink": ratio(mine, sink.get("requests_per_s")),
    }
    return {
        **values,
        "targets": dict(HTTP_TARGETS),
        "met": {k: (None if v is None else v >= HTTP_TARGETS[k]) for k, v in values.items()},
    }


def delivery_figures(
    events: int, per_channel: Mapping[str, tuple[int, int]], seconds: float
) -> dict[str, Any]:
    """Figures of a run that delivers every event once on each channel of
    ``per_channel`` (channel -> (distinct deliveries received, duplicates)) within
    ``seconds`` (first produce → last delivery)."""
    received = sum(r for r, _ in per_channel.values())
    expected = events * len(per_channel)
    return {
        "events": events,
        "deliveries_expected": expected,
        "deliveries": received,
        "lost": expected - received,
        "duplicates": sum(d for _, d in per_channel.values()),
        "per_channel": {ch: {"received": r, "duplicates": d} for ch, (r, d) in per_channel.items()},
        "seconds": round(seconds, 3),
        "deliveries_per_s": rate(received, seconds),
    }


def missing_sections(result: Mapping[str, Any]) -> list[str]:
    """Sections (and per-rate latency keys) a complete result lacks; [] when complete."""
    missing = [s for s in SECTIONS if s not in result]
    for part, key in (("sink", "requests_per_s"), ("http", "deliveries_per_s"),
                      ("quix", "deliveries_per_s")):
        sec = result.get(part)
        if isinstance(sec, Mapping) and not sec.get("skipped") and key not in sec:
            missing.append(f"{part}.{key}")
    for part, kinds in (("floor", ("single_hop", "passthrough")), ("notifyd", ("e2e",))):
        sec = result.get(part) or {}
        if "throughput" not in sec:
            missing.append(f"{part}.throughput")
        for r, run in (sec.get("latency") or {}).items():
            for kind in kinds:
                if not all(k in (run.get(kind) or {}) for k in LATENCY_KEYS):
                    missing.append(f"{part}.latency.{r}.{kind}")
    return missing


# --------------------------------------------------------------------------------------
# The summary table
# --------------------------------------------------------------------------------------


def _f(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return [line, sep, *body]


def _throughput_row(label: str, st: Mapping[str, Any], ratio_: float | None) -> list[str]:
    """A notifyd throughput run's row of the summary: ``st`` as ``_throughput`` wrote it."""
    return [
        label,
        _f(st.get("events")),
        _f(st.get("events_per_s")),
        _f(st.get("drained_events_per_s")),
        _f(st.get("worker_cpu_us_per_event"), digits=0),
        _f(ratio_, digits=3),
    ]


def _inprocess_rows(nd: Mapping[str, Any], ratios: Mapping[str, Any]) -> list[list[str]]:
    """The throughput row of the in-process provider run (in-app only), if it ran."""
    st = nd.get("throughput_inprocess") or {}
    if not st:
        return []
    label = f"notifyd: full pipeline, {_f(nd.get('users'))} users, inapp (in-process provider)"
    return [_throughput_row(label, st, ratios.get("throughput_inprocess"))]


def _scaling_rows(sc: Mapping[str, Any], floor_eps: float | None) -> list[list[str]]:
    """The throughput row of ``worker --processes N`` (phase scaling), if it ran."""
    st = sc.get("throughput") or {}
    if not st:
        return []
    eps = st.get("events_per_s")
    label = (
        f"notifyd: --processes {sc.get('processes')} (x{_f(sc.get('speedup'), digits=2)} "
        "of 1 process)"
    )
    return [_throughput_row(label, st, eps / floor_eps if eps and floor_eps else None)]


def _http_lines(result: Mapping[str, Any]) -> list[str]:
    """Phases sink, http, quix: one table against the sink's capacity, and the ratios."""
    sink = result.get("sink") or {}
    http = result.get("http") or {}
    quix = result.get("quix") or {}
    if not any(sec and not sec.get("skipped") for sec in (sink, http, quix)):
        return []
    cap = sink.get("requests_per_s")

    def state(sec: Mapping[str, Any]) -> str | None:
        if not sec:
            return "not run"
        if sec.get("skipped"):
            return f"skipped: {sec['error']}" if sec.get("error") else "skipped"
        return None

    def row(label: str, sec: Mapping[str, Any], per_s_key: str, cpu: Any) -> list[str]:
        why = state(sec)
        if why is not None:
            return [label, why, "", "", "", "", "", ""]
        per_s = sec.get(per_s_key)
        return [
            label,
            _f(sec.get("events")),
            _f(sec.get("deliveries", sec.get("ok"))),
            _f(per_s),
            _f(sec.get("lost", sec.get("errors"))),
            _f(sec.get("duplicates")),
            _f(cpu, digits=0),
            _f(ratio(per_s, cap), digits=3),
        ]

    rows = [
        row(f"sink capacity: aiohttp client process, {_f(sink.get('concurrency'))} in flight",
            sink, "requests_per_s", sink.get("sink_cpu_us_per_request")),
        row(f"notifyd: 1 worker, {_f(http.get('users'))} users, webhook+push",
            http, "deliveries_per_s", http.get("worker_cpu_us_per_event")),
        row(f"Quix Streams {quix.get('version') or '?'}: naive, 2 requests.post per event",
            quix, "deliveries_per_s", quix.get("peer_cpu_us_per_event")),
    ]
    lines = _table(
        ["HTTP channels (sink counts each POST)", "events", "deliveries", "per s",
         "lost/errors", "duplicates", "CPU µs/event (sink: /request)", "÷ sink capacity"],
        rows,
    )
    hr = (result.get("ratios") or {}).get("http") or {}
    targets = hr.get("targets") or HTTP_TARGETS
    met = hr.get("met") or {}

    def verdict(key: str) -> str:
        return {True: "met", False: "NOT met", None: "n/a"}[met.get(key)]

    lines += [
        "",
        f"notifyd ÷ Quix Streams deliveries/s: {_f(hr.get('vs_quix'), digits=2)} "
        f"(target ≥ {targets['vs_quix']:g}: {verdict('vs_quix')}); "
        f"notifyd ÷ sink capacity: {_f(hr.get('vs_sink'), digits=3)} "
        f"(target ≥ {targets['vs_sink']:g}: {verdict('vs_sink')})",
        "",
    ]
    return lines


def restore_from_log(text: str) -> dict[str, Any] | None:
    """The last ``restore.done`` record of a worker's JSON log (notifyd.stream.restore):
    the bulk restore's own share of a recovery, apart from Faust's start."""
    for line in reversed(text.splitlines()):
        if '"restore.done"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == "restore.done":
            return {k: doc.get(k) for k in ("records", "partitions", "seconds", "complete")}
    return None


def _failover_rows(fo: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for mode, r in fo.items():
        if not isinstance(r, Mapping) or "failover_s" not in r:
            continue
        rows.append([
            f"failover, {mode} ({r.get('signal')}, session timeout "
            f"{_f(r.get('session_timeout_s'))} s): stop → victim's partitions deliver "
            "again (s)",
            _f(r.get("failover_s"), digits=2),
        ])
        rows.append([
            f"  {mode}: survivor's own partitions, highest e2e meanwhile (ms)",
            _f(r.get("survivor_pause_ms")),
        ])
    return rows


def format_summary(result: Mapping[str, Any]) -> str:
    """Markdown tables: machine, throughput, latency per rate with ratios, state."""
    m = result.get("machine", {})
    b = result.get("broker", {})
    lines = [
        f"Machine: {m.get('cpu_model', '?')} · {m.get('nproc', '?')} cores · "
        f"{m.get('ram_gb', '?')} GB RAM · Python {m.get('python', '?')} · "
        f"faust-streaming {m.get('faust', '?')} · aiokafka {m.get('aiokafka', '?')} · "
        f"load avg at start {m.get('loadavg_start', '?')}",
        f"Broker: {b.get('kind', '?')} {b.get('version', '')} ({b.get('url', '')}), "
        f"{result.get('options', {}).get('partitions', '?')} partitions per topic",
        "",
    ]
    floor = result.get("floor", {})
    nd = result.get("notifyd", {})
    ratios = result.get("ratios", {})
    ft = floor.get("throughput", {})
    nt = nd.get("throughput", {})
    lines += _table(
        [
            "throughput",
            "events",
            "events/s",
            "events/s, backlog drained",
            "worker CPU µs/event",
            "ratio",
        ],
        [
            [
                "floor: aiokafka consume→JSON→produce",
                _f(ft.get("events")),
                _f(ft.get("events_per_s")),
                _f(ft.get("events_per_s")),
                _f(ft.get("worker_cpu_us_per_event"), digits=0),
                "1",
            ],
            _throughput_row(
                f"notifyd: full pipeline, {_f(nd.get('users'))} users, webhook+inapp",
                nt,
                ratios.get("throughput"),
            ),
            *_inprocess_rows(nd, ratios),
            *_scaling_rows(result.get("scaling", {}), ft.get("events_per_s")),
        ],
    )
    idle = nd.get("idle") or {}
    if idle.get("cpu_pct_of_core") is not None:
        lines += ["", f"Idle worker: {idle['cpu_pct_of_core']}% of a core over "
                      f"{idle.get('seconds')} s without traffic"]
    lines.append("")
    lines += _http_lines(result)
    rows = []
    f_lat = floor.get("latency", {})
    n_lat = nd.get("latency", {})
    for r in sorted(set(f_lat) | set(n_lat), key=float):
        fl = f_lat.get(r, {})
        nl = n_lat.get(r, {})
        sh, pt, e2e = fl.get("single_hop", {}), fl.get("passthrough", {}), nl.get("e2e", {})
        rr = ratios.get("p99", {}).get(r, {})
        rows.append(
            [
                r,
                f"{_f(sh.get('p50'), digits=2)} / {_f(sh.get('p99'), digits=2)} / "
                f"{_f(sh.get('max'), digits=1)}",
                f"{_f(pt.get('p50'), digits=2)} / {_f(pt.get('p99'), digits=2)} / "
                f"{_f(pt.get('max'), digits=1)}",
                f"{_f(e2e.get('p50'), digits=2)} / {_f(e2e.get('p99'), digits=2)} / "
                f"{_f(e2e.get('max'), digits=1)}",
                _f(nl.get("achieved_rate")),
                _f(rr.get("vs_single_hop"), digits=2),
                _f(rr.get("vs_passthrough"), digits=2),
            ]
        )
    if rows:
        lines += _table(
            [
                "rate/s",
                "floor 1-hop p50/p99/max ms",
                "floor passthrough p50/p99/max ms",
                "notifyd e2e p50/p99/max ms",
                "notifyd delivered/s",
                "p99 ÷ 1-hop",
                "p99 ÷ passthrough",
            ],
            rows,
        )
        lines.append("")
    cpu_rows = [
        [
            r,
            _f(c.get("floor_us"), digits=0),
            _f(c.get("floor"), digits=1),
            _f(c.get("notifyd_us"), digits=0),
            _f(c.get("notifyd"), digits=1),
        ]
        for r, c in (ratios.get("cpu_paced_vs_burst") or {}).items()
    ]
    if cpu_rows:
        lines += _table(
            ["rate/s", "floor CPU µs/event", "floor ÷ its burst", "notifyd CPU µs/event",
             "notifyd ÷ its burst"],
            cpu_rows,
        )
        lines.append("")
    st = result.get("state", {})
    if st.get("skipped"):
        lines.append("State: skipped")
    elif st:
        lines += _table(
            ["state (RocksDB)", "value"],
            [
                ["users in preferences table", _f(st.get("users"))],
                ["store / rocksdict loaded", f"{st.get('store')} / {st.get('rocksdict_loaded')}"],
                ["changelog written (s)", _f(st.get("changelog_write_s"), digits=1)],
                ["fresh worker: start → ready (s)", _f(st.get("recovery_s"), digits=1)],
                ["  of which the bulk restore (s)", _f((st.get("restore") or {}).get("seconds"))],
                ["  of which baseline start, empty tables (s)", _f(st.get("baseline_ready_s"))],
                ["recovery rate (records/s)", _f(st.get("recovery_records_per_s"))],
                ["worker RSS after recovery (MB)", _f(st.get("rss_mb"))],
                ["worker peak RSS (MB)", _f(st.get("rss_peak_mb"))],
                ["RocksDB on disk (MB)", _f(st.get("rocksdb_disk_mb"))],
                ["restart with its data dir: start → ready (s)", _f(st.get("warm_restart_s"))],
                *_failover_rows(st.get("failover") or {}),
                [
                    f"memory-store worker RSS, {_f(nd.get('users'))} users (MB)",
                    _f(nd.get("worker_rss_mb")),
                ],
            ],
        )
    return "\n".join(lines)
