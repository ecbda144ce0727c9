"""The pure parts of ``notifyd bench``: statistics, pacing, ratios, result shape."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest

from notifyd.tools.bench.load import Collector, StatusTracker, _event
from notifyd.tools.bench.meter import machine_info, proc_cpu_s, proc_mem_mb
from notifyd.tools.bench.procs import WORKER_PATCHES, WorkerProc
from notifyd.tools.bench.run import BenchOptions
from notifyd.tools.bench.stats import (
    LATENCY_KEYS,
    SCHEMA,
    SECTIONS,
    batch_to_send,
    compute_ratios,
    due_count,
    format_summary,
    latency_summary,
    log_histogram,
    missing_sections,
    percentile,
    rate,
    ratio,
    total_for,
)

# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy_default() -> None:
    data = [1.0, 2.0, 3.0, 4.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == 2.5
    assert percentile(data, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(data, 101)


def test_percentile_matches_numpy_on_a_skewed_sample() -> None:
    np = pytest.importorskip("numpy")
    data = sorted((i * 37 % 101) ** 1.5 for i in range(1000))
    for q in (50, 90, 99, 99.9):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))


def test_latency_summary() -> None:
    s = latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert set(s) == set(LATENCY_KEYS)
    assert s["count"] == 5
    assert s["min"] == 1.0 and s["max"] == 5.0
    assert s["mean"] == 3.0 and s["p50"] == 3.0
    assert s["p99"] == pytest.approx(4.96)
    empty = latency_summary([])
    assert empty["count"] == 0 and empty["p99"] is None


def test_log_histogram_counts_everything() -> None:
    values = [0.01, 0.5, 1.0, 12.0, 12.5, 999.0, 10**7]
    h = log_histogram(values, lo=0.1, hi=1000.0, per_decade=10)
    edges, counts = h["edges"], h["counts"]
    assert len(edges) == len(counts) + 1 == 41
    assert sum(counts) == len(values)
    assert counts[0] == 1  # below lo: first bucket
    assert counts[-1] == 2  # 999 and above hi: last bucket
    i = next(i for i in range(len(counts)) if edges[i] <= 12.0 < edges[i + 1])
    assert counts[i] == 2


def test_rate() -> None:
    assert rate(1000, 2.0) == 500.0
    assert rate(10, 0) is None


# --------------------------------------------------------------------------------------
# pacing
# --------------------------------------------------------------------------------------


def test_due_count_paces_from_the_first_message_at_zero() -> None:
    assert due_count(1000, 0.0, 100) == 1
    assert due_count(1000, 0.0005, 100) == 1
    assert due_count(1000, 0.001, 100) == 2
    assert due_count(1000, 0.0505, 100) == 51
    assert due_count(1000, 10.0, 100) == 100  # never more than the total
    assert due_count(500, -1.0, 100) == 0
    with pytest.raises(ValueError):
        due_count(0, 1.0, 10)


def test_batches_add_up_to_the_rate() -> None:
    # Simulate 1 ms ticks with jitter: whatever the ticks, what was sent by t is rate*t.
    rate_per_s, total, sent, t = 2000.0, 5000, 0, 0.0
    ticks = 0
    while sent < total:
        n = batch_to_send(rate_per_s, t, sent, total)
        sent += n
        assert sent == due_count(rate_per_s, t, total)
        t += 0.001 + (0.003 if ticks % 50 == 0 else 0.0)  # the loop is late now and then
        ticks += 1
    assert sent == total
    assert t == pytest.approx(total / rate_per_s, abs=0.01)
    assert batch_to_send(rate_per_s, t, total, total) == 0


def test_total_for() -> None:
    assert total_for(500, 15) == 7500
    assert total_for(1000, 0.0001) == 1


# --------------------------------------------------------------------------------------
# ratios and the result document
# --------------------------------------------------------------------------------------


def _lat(p50: float, p99: float) -> dict[str, float | int | None]:
    s = latency_summary([p50] * 50 + [p99] * 2)
    s["p50"], s["p99"] = p50, p99
    return s


FLOOR = {
    "throughput": {"events": 1000, "events_per_s": 10000.0},
    "latency": {
        "500": {"single_hop": _lat(2.0, 4.0), "passthrough": _lat(4.0, 10.0)},
        "1000": {"single_hop": _lat(2.0, 5.0), "passthrough": _lat(4.0, 0.0)},
    },
}
NOTIFYD = {
    "users": 100,
    "throughput": {"events": 1000, "events_per_s": 250.0},
    "latency": {"500": {"e2e": _lat(20.0, 100.0)}, "2000": {"e2e": _lat(1.0, 2.0)}},
}


def test_compute_ratios() -> None:
    r = compute_ratios(FLOOR, NOTIFYD)
    assert r["throughput"] == 0.025
    assert set(r["p99"]) == {"500"}  # only rates both ran
    assert r["p99"]["500"] == {"vs_single_hop": 25.0, "vs_passthrough": 10.0}
    assert r["p50"]["500"] == {"vs_single_hop": 10.0, "vs_passthrough": 5.0}
    assert compute_ratios({}, {})["throughput"] is None


def test_in_process_throughput_has_its_own_ratio_and_row() -> None:
    nd = {**NOTIFYD, "throughput_inprocess": {"events": 1000, "events_per_s": 4000.0,
                                              "worker_cpu_us_per_event": 321.0}}
    r = compute_ratios(FLOOR, nd)
    assert r["throughput_inprocess"] == 0.4 and r["throughput"] == 0.025
    assert compute_ratios(FLOOR, NOTIFYD)["throughput_inprocess"] is None
    text = format_summary({**_result(), "notifyd": nd, "ratios": r})
    row = next(line for line in text.splitlines() if "in-process provider" in line)
    assert "4,000" in row or "4000" in row
    assert "0.400" in row and "321" in row
    assert "in-process provider" not in format_summary(_result())


def test_paced_cpu_is_compared_with_each_sides_own_burst() -> None:
    floor = {
        "throughput": {"worker_cpu_us_per_event": 10.0},
        "latency": {"100": {"received": 1000, "cpu_s": {"worker": 0.5}}},
    }
    nd = {
        "throughput": {"worker_cpu_us_per_event": 500.0},
        "latency": {"100": {"received": 1000, "cpu_s": {"worker": 2.0}},
                    "1000": {"received": 0, "cpu_s": {"worker": 1.0}}},
    }
    r = compute_ratios(floor, nd)["cpu_paced_vs_burst"]
    assert r["100"] == {"floor_us": 500.0, "floor": 50.0, "notifyd_us": 2000.0, "notifyd": 4.0}
    assert r["1000"] == {"floor_us": None, "floor": None, "notifyd_us": None, "notifyd": None}
    text = format_summary({**_result(), "ratios": compute_ratios(floor, nd)})
    assert "floor ÷ its burst" in text and "50.0" in text


def test_ratio_guards() -> None:
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(math.nan, 1.0) is None
    assert ratio(3.0, 2.0) == 1.5


def _result() -> dict[str, object]:
    return {
        "schema": SCHEMA,
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:10:00Z",
        "options": BenchOptions().to_json(),
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "ram_gb": 8.0, "python": "3.11"},
        "broker": {"kind": "apache-kafka", "version": "4.1.1", "url": "kafka://x:1"},
        "floor": FLOOR,
        "notifyd": NOTIFYD,
        "ratios": compute_ratios(FLOOR, NOTIFYD),
        "sink": {"skipped": True},
        "http": {"skipped": True},
        "quix": {"skipped": True},
        "state": {"users": 1000, "store": "rocksdb://", "recovery_s": 3.5, "rss_mb": 120.0},
        "artifacts": {"json": "x.json"},
    }


def test_result_shape_is_complete_and_json_serialisable() -> None:
    res = _result()
    assert missing_sections(res) == []
    text = json.dumps(res)
    assert set(json.loads(text)) == set(SECTIONS)
    broken = dict(res)
    del broken["ratios"]
    broken["notifyd"] = {"latency": {"500": {"e2e": {"count": 1}}}}
    assert missing_sections(broken) == [
        "ratios",
        "notifyd.throughput",
        "notifyd.latency.500.e2e",
    ]


def test_options_to_json() -> None:
    d = BenchOptions(rates=(1, 2), worker_patches=("uvloop",)).to_json()
    assert d["rates"] == [1, 2] and d["worker_patches"] == ["uvloop"]
    json.dumps(d)
    quick = BenchOptions(**BenchOptions.quick_defaults())
    assert quick.events < BenchOptions().events and quick.quick


def test_format_summary_has_figures_and_ratios() -> None:
    text = format_summary(_result())
    assert "Test CPU" in text and "2 cores" in text and "4.1.1" in text
    assert "10,000.0" in text and "250.0" in text and "0.025" in text
    assert "25.00" in text  # p99 ratio at 500/s
    assert "rocksdb://" in text
    assert "State: skipped" in format_summary({**_result(), "state": {"skipped": True}})


# --------------------------------------------------------------------------------------
# receiving side and helpers (no network)
# --------------------------------------------------------------------------------------


def test_collector_counts_unique_receipts_and_latency() -> None:
    c = Collector()
    st = c.expect("sink", "r1", 2)
    c.record("sink", {"run": "r1", "seq": 0, "t0": 10.0}, 10.5)
    c.record("sink", {"run": "r1", "seq": 0, "t0": 10.0}, 10.6)  # duplicate delivery
    c.record("sink", {"run": "other", "seq": 1, "t0": 10.0}, 10.6)  # another run
    c.record("sink", None, 10.6)
    assert st.received == 1 and st.duplicates == 1 and not st.done.is_set()
    c.record("sink", {"run": "r1", "seq": 1, "t0": 10.2}, 10.3)
    assert st.done.is_set()
    assert st.latencies_ms == pytest.approx([500.0, 100.0])
    assert st.first_at == 10.5 and st.last_at == 10.3


def test_status_tracker_splits_stages() -> None:
    # Rows of the status changelog as the fold writes them, one after another.
    t = StatusTracker()
    t.t0["nd-r1-x-0"] = 100.0
    t(orjson.dumps({"notification_id": "n0",  # an outcome folded before the content
                    "channels": {"inapp": {"status": "sent", "latency_ms": 10.0}}}), 100.3)
    assert t.inapp_sent == 0
    row: dict[str, Any] = {
        "notification_id": "n0", "event_id": "nd-r1-x-0", "accepted_at": 100.25,
        "channels": {"webhook": {"status": "queued"},
                     "inapp": {"status": "sent", "latency_ms": 10.0}},
    }
    t(orjson.dumps(row), 100.35)
    row["channels"]["webhook"] = {"status": "sent", "latency_ms": 40.0}
    t(orjson.dumps(row), 100.4)
    t(orjson.dumps(row), 100.5)  # the same row again (a later write): counted once
    t(b"not json", 1.0)
    t(None, 1.0)  # a tombstone
    assert t.inapp_sent == 1 and t.last_inapp_at == 100.35
    s = t.summary("nd-r1-x")
    assert s["ingest"]["count"] == 1 and abs(s["ingest"]["p50"] - 250.0) < 1e-6
    assert s["webhook_send"]["count"] == 1 and s["inapp_send"]["count"] == 1
    assert s["webhook_send"]["p50"] == 40.0 and s["inapp_send"]["p50"] == 10.0


def test_event_shape_is_a_valid_notifyd_event() -> None:
    from notifyd.model.records import parse_event

    raw = _event("run-a", 7, "u1")
    ev = parse_event(raw)
    assert ev.user_id == "u1" and ev.event_id == "run-a-7"
    assert ev.channels == ("webhook", "inapp")
    assert ev.data["run"] == "run-a" and ev.data["seq"] == 7 and ev.data["t0"] > 0


def test_worker_command_variants() -> None:
    from pathlib import Path

    w = WorkerProc(env={}, datadir=Path("/tmp/x"), web_port=1)
    assert w.command()[1:] == ["-m", "notifyd", "worker", "--processes", "1"]
    w = WorkerProc(env={}, datadir=Path("/tmp/x"), web_port=1, patches=("fetch-wait-10ms",),
                   processes=2)
    code = w.command()[2]
    assert "fetch_max_wait_ms" in code
    assert code.rstrip().endswith("main(['worker', '--processes', '2'])")
    compile(code, "<patch>", "exec")
    for snippet in WORKER_PATCHES.values():
        compile(snippet, "<patch>", "exec")
    w = WorkerProc(env={}, datadir=Path("/tmp/x"), web_port=1, profile_out=Path("/tmp/p.pyi"))
    assert w.command()[1:3] == ["-m", "pyinstrument"]


async def test_the_linger_patch_reaches_the_app_the_factory_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from notifyd.stream import app as stream_app
    from tests.support.app import build_app

    monkeypatch.setattr(stream_app, "faust_settings", stream_app.faust_settings)  # undone after
    exec(WORKER_PATCHES["linger-5ms"], {})
    assert build_app().app.conf.producer_linger == 0.005


def test_machine_and_proc_readers() -> None:
    import os

    m = machine_info()
    assert m["nproc"] and m["python"]
    assert (proc_cpu_s(os.getpid()) or 0) > 0
    rss, peak = proc_mem_mb(os.getpid())
    assert rss and peak and peak >= rss
    assert proc_cpu_s(None) is None and proc_mem_mb(None) == (None, None)


def test_profile_summary_by_component() -> None:
    from notifyd.tools.bench.profile import component, parse_frame, render, summarise

    def fr(fn: str, path: str, line: int = 1) -> str:
        return f"{fn}\x00{path}\x00{line}"

    loop = fr("run_forever", "/usr/lib/python3.11/asyncio/base_events.py")
    ours = fr("handle_event", "/work/main/notifyd/pipeline.py", 90)
    records = [
        ([loop, fr("select", "/usr/lib/python3.11/selectors.py")], 5.0),
        ([loop, ours, fr("send", "/x/site-packages/faust/topics.py")], 2.0),
        ([loop, ours], 1.0),
        ([loop, ours, fr("info", "/x/site-packages/structlog/_base.py")], 1.0),
    ]
    assert parse_frame(ours + "\x01cSomeClass") == (
        "handle_event",
        "/work/main/notifyd/pipeline.py",
        "90",
    )
    assert component("poll", "") == "idle (waiting in epoll/select)"
    s = summarise(records)
    assert s["total_s"] == 9.0 and s["busy_s"] == 4.0
    comps = {c["component"]: c["pct_busy"] for c in s["components"]}
    assert comps["faust"] == 50.0 and comps["notifyd"] == 25.0
    assert comps["logging (structlog + stdlib)"] == 25.0
    assert s["notifyd_inclusive"][0]["s"] == 4.0
    assert "select" not in {f["function"] for f in s["top_self"]}
    assert "| faust | 2.0 | 50.0 |" in render(s)


def test_worker_env_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import notifyd.tools.bench.run as bench_mod
    from notifyd.cli.commands import main

    d = BenchOptions(worker_env=(("NOTIFYD_FAST_RESTORE", "false"),)).to_json()
    assert d["worker_env"] == {"NOTIFYD_FAST_RESTORE": "false"}
    seen: list[BenchOptions] = []
    monkeypatch.setattr(bench_mod, "run_bench", seen.append)
    runner = CliRunner()
    bad = runner.invoke(main, ["bench", "--worker-env", "FAST_RESTORE=false"])
    assert bad.exit_code == 2 and "NOTIFYD_NAME=VALUE" in bad.output
    ok = runner.invoke(main, ["bench", "--worker-env", "NOTIFYD_DELIVERY_CONCURRENCY=1"])
    assert ok.exit_code == 0, ok.output
    assert seen[0].worker_env == (("NOTIFYD_DELIVERY_CONCURRENCY", "1"),)


async def test_idle_counters_show_what_moved_between_two_readings() -> None:
    """The idle figure's ``counters_moved``: counters read from a real ``/metrics``
    endpoint twice, and only those that changed, by how much."""
    import asyncio

    from aiohttp import web
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    from notifyd.tools.bench.meter import counter_changes, counters

    registry = CollectorRegistry()
    records = Counter("records", "records", ["topic"], registry=registry)
    Gauge("lag", "a gauge is not a counter", registry=registry).set(5)
    records.labels("a").inc(2)
    records.labels("b").inc()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        before = await asyncio.to_thread(counters, url)
        records.labels("a").inc(3)
        records.labels("c").inc()
        after = await asyncio.to_thread(counters, url)
    finally:
        await runner.cleanup()
    assert before == {"records_total{topic=a}": 2.0, "records_total{topic=b}": 1.0}
    assert counter_changes(before, after) == {
        "records_total{topic=a}": 3.0, "records_total{topic=c}": 1.0
    }
    assert counters("http://127.0.0.1:9", timeout=1) == {}  # nothing listening: no figures


def test_thread_cpu_change_between_two_readings() -> None:
    import os

    from notifyd.tools.bench.meter import thread_cpu_change, thread_cpu_s

    before = thread_cpu_s(os.getpid())
    sum(i * i for i in range(300_000))  # some CPU on this (the main) thread
    change = thread_cpu_change(before, thread_cpu_s(os.getpid()))
    assert change is not None and set(change) == {"main_thread", "other_threads"}
    assert change["main_thread"] >= 0 and change["other_threads"] >= 0
    assert thread_cpu_change(None, before) is None and thread_cpu_change(before, None) is None
