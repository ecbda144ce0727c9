"""Bench phases of issue #15: notifyd's two HTTP channels against the sink's capacity and
a naive Quix Streams peer, on the bench's broker and sink.

* ``sink``: the capacity of the bench's own HTTP sink, which every delivery below
  reaches, measured by an independent client in its own process
  (:mod:`notifyd.tools.bench.sinkload`): requests/s with ``sink_concurrency`` in flight.
* ``http``: one notifyd worker (memory store), ``http_users`` users with a webhook URL
  and a push device token, ``http_events`` events restricted to ``["webhook", "push"]``:
  the webhook goes to the sink, the push API (``NOTIFYD_PUSH_API_URL``) is the sink too.
  Deliveries/s = both channels' distinct receipts ÷ (first produce → last receipt).
* ``quix``: the same events on a topic of their own, consumed by
  :mod:`notifyd.tools.bench.quixpeer` (its own process), which makes the same two
  requests per event with ``requests``; the same figures.

Ratios (``stats.http_ratios``): http ÷ quix deliveries/s and http deliveries/s ÷ sink
requests/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from typing import Any

from notifyd.tools.bench.bodies import (
    HTTP_CHANNELS,
    PUSH_PATH,
    WEBHOOK_SECRET,
    bench_prefs,
    capacity_split,
)
from notifyd.tools.bench.load import RunStats, create_topics, wait_done
from notifyd.tools.bench.meter import CpuMeter, proc_mem_mb
from notifyd.tools.bench.procs import ModuleProc
from notifyd.tools.bench.stats import delivery_figures, per_event_us, rate

#: Collector kinds the sink counts the two HTTP channels under (see ``sink.CHANNEL_KINDS``).
HTTP_KINDS: tuple[str, ...] = ("sink.webhook", "sink.push")
WARM_EVENTS = 200


def _figures(sts: list[RunStats], n: int, t_first: float) -> dict[str, Any]:
    last = max((st.last_at or 0.0) for st in sts)
    per_channel = {
        kind.removeprefix("sink."): (st.received, st.duplicates)
        for kind, st in zip(HTTP_KINDS, sts, strict=True)
    }
    return delivery_figures(n, per_channel, max(0.0, last - t_first))


# -- phase sink ----------------------------------------------------------------------------


async def sink_phase(bench: Any) -> dict[str, Any]:
    """The sink's capacity: ``sink_requests`` POSTs from the client process."""
    o = bench.opts
    n = o.sink_requests
    run_id = f"sink-{bench.tag}"
    split = capacity_split(n)
    sts = [
        bench.collector.expect(kind, run_id, split[kind.removeprefix("sink.")])
        for kind in HTTP_KINDS
    ]
    handled0 = bench.sink.requests
    bench.progress.note(f"sink: {n:,} POSTs, {o.sink_concurrency} in flight ...")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifyd.tools.bench.sinkload",
        "--url", bench.sink.url, "--requests", str(n),
        "--concurrency", str(o.sink_concurrency), "--run", run_id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    # The sink's (bench process's) CPU; the client reports its own (it has exited by the
    # time the meter stops, so /proc no longer has it).
    meter = CpuMeter(bench.pids()).start()
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), o.drain_timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError("sink capacity client did not finish in time") from None
    cpu = meter.stop()
    if proc.returncode != 0 or not stdout.strip():
        tail = stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"sink capacity client failed ({proc.returncode}):\n{tail}")
    client = json.loads(stdout.decode().strip().splitlines()[-1])
    # Every answered request was recorded before its answer: nothing should be left.
    await wait_done(sts, 10)
    handled = bench.sink.requests - handled0  # the client's warm-up included
    received = sum(st.received for st in sts)
    out: dict[str, Any] = {
        "client": "python -m notifyd.tools.bench.sinkload (aiohttp, keep-alive)",
        "requests": n,
        "concurrency": o.sink_concurrency,
        "sink_latency_ms": o.sink_latency_ms,
        "ok": client["ok"],
        "errors": client["errors"],
        "first_error": client["first_error"],
        "received": received,
        "lost": n - received,
        "duplicates": sum(st.duplicates for st in sts),
        "seconds": client["seconds"],
        "requests_per_s": client["requests_per_s"],
        "cpu_s": {**cpu, "client": client["cpu_s"]},  # the client's: its timed requests
        "sink_requests_handled": handled,
        "sink_cpu_us_per_request": per_event_us(cpu.get("bench"), handled),
    }
    bench.progress.note(f"sink capacity: {out['requests_per_s']} requests/s")
    return out


# -- phase http ----------------------------------------------------------------------------


async def http_phase(bench: Any) -> dict[str, Any]:
    """notifyd: each event delivered by webhook and by push, both to the sink."""
    from notifyd.stream.topology import TopicNames

    o = bench.opts
    n = o.http_events
    app_id, prefix = f"notifyd-bench-{bench.tag}-http", f"bench-{bench.tag}-http"
    names = TopicNames(prefix)
    bench._group = app_id
    bench._drain_topics = [
        names.events, names.deliver("webhook"), names.deliver("push"), names.status
    ]
    sink_url = bench.sink.url
    w = bench.new_worker(
        "worker-http", app_id, prefix, "memory://",
        env_extra={"NOTIFYD_PUSH_API_URL": sink_url + PUSH_PATH},
    )
    out: dict[str, Any] = {
        "users": o.http_users,
        "channels": list(HTTP_CHANNELS),
        "store": "memory://",
        "push_api_url": sink_url + PUSH_PATH,
    }
    w.start()
    try:
        out["ready_s"] = round(await w.wait_ready_async(), 2)
        out["preload_s"] = round(
            await bench._preload(
                names.preferences, app_id, o.http_users, lambda u: bench_prefs(u, sink_url)
            ),
            2,
        )
        users = [f"u{i}" for i in range(o.http_users)]
        # Warm-up: connections to the sink open, both channel agents have run.
        await bench._events_run(
            "http-warm", names.events, min(WARM_EVENTS, n), None, users, None,
            HTTP_KINDS, HTTP_CHANNELS,
        )
        meter = CpuMeter(bench.pids(worker=w.pid)).start()
        sts, info = await bench._events_run(
            "http-tput", names.events, n, None, users, None, HTTP_KINDS, HTTP_CHANNELS
        )
        cpu = meter.stop()
        out["worker_rss_mb"] = proc_mem_mb(w.pid)[0]
    finally:
        w.stop(120)
    out.update(_figures(sts, n, info["t_first"]))
    out.update(
        produce_s=info["produce_s"],
        drained_s=info["drained_s"],
        events_per_s=rate(min(st.received for st in sts), out["seconds"]),
        cpu_s=cpu,
        worker_cpu_us_per_event=per_event_us(cpu.get("worker"), n),
        # The sink runs in the bench process: its CPU per delivery, for the ratio's sake.
        bench_cpu_us_per_delivery=per_event_us(cpu.get("bench"), out["deliveries"]),
    )
    bench.progress.note(f"notifyd webhook+push: {out['deliveries_per_s']} deliveries/s")
    return out


# -- phase quix ----------------------------------------------------------------------------


def quix_unavailable() -> str | None:
    """Why the Quix Streams peer cannot run here, or None."""
    for module in ("quixstreams", "requests", "confluent_kafka"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench,peer]')"
    return None


async def quix_phase(bench: Any) -> dict[str, Any]:
    """The naive Quix Streams peer on the same work: events → webhook + push POSTs."""
    why = quix_unavailable()
    if why is not None:
        bench.progress.note(f"quix: skipped, {why}")
        return {"skipped": True, "error": why}
    from importlib.metadata import version

    o = bench.opts
    n = o.http_events
    topic, group = f"bench-{bench.tag}.quix.events", f"bench-{bench.tag}-quix"
    await create_topics(bench.bootstrap, [topic], o.partitions)
    bench._group = group
    bench._drain_topics = [topic]
    peer = ModuleProc(
        "notifyd.tools.bench.quixpeer",
        [
            "--bootstrap", bench.bootstrap, "--topic", topic, "--group", group,
            "--sink", bench.sink.url, "--users", str(o.http_users),
            "--webhook-secret", WEBHOOK_SECRET, "--state-dir", str(bench.root / "quix"),
        ],
        bench.root / "quixpeer.log",
    )
    out: dict[str, Any] = {
        "version": version("quixstreams"),
        "process": "python -m notifyd.tools.bench.quixpeer",
        "users": o.http_users,
        "channels": list(HTTP_CHANNELS),
    }
    users = [f"u{i}" for i in range(o.http_users)]
    peer.start()
    try:
        # Warm-up: the app has joined its group and sends (its start-up is not measured).
        await bench._events_run(
            "quix-warm", topic, min(WARM_EVENTS, n), None, users, None,
            HTTP_KINDS, HTTP_CHANNELS, peer.exited,
        )
        meter = CpuMeter(bench.pids(peer=peer.pid)).start()
        sts, info = await bench._events_run(
            "quix-tput", topic, n, None, users, None, HTTP_KINDS, HTTP_CHANNELS, peer.exited
        )
        cpu = meter.stop()
        out["peer_rss_mb"] = proc_mem_mb(peer.pid)[0]
        out["peer_exited"] = peer.exited()
    finally:
        with contextlib.suppress(ProcessLookupError):
            peer.stop()
    out.update(_figures(sts, n, info["t_first"]))
    out.update(
        produce_s=info["produce_s"],
        events_per_s=rate(min(st.received for st in sts), out["seconds"]),
        cpu_s=cpu,
        peer_cpu_us_per_event=per_event_us(cpu.get("peer"), n),
    )
    if out["peer_exited"]:
        bench.progress.note(f"quix: the peer stopped early, see {peer.log_path}")
    bench.progress.note(f"Quix Streams webhook+push: {out['deliveries_per_s']} deliveries/s")
    return out
