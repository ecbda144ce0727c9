"""``notifyd bench`` phase **schedule**: a million pending scheduled sends on one worker.

The ``scheduled`` table's changelog is written as the ingest agent writes it (a row
``event:<scope>`` per scheduled event, in its user's partition, due in 30 to 31 days),
then a fresh worker on ``rocksdb://`` recovers it.  Measured:

* ``recovery_s``: worker start to ready (table recovery done), and ``index_s``: to the
  scheduler's index holding every row (``notifyd_scheduled`` on ``/metrics``);
* RSS after recovery and after the index is built (the heap of ``(due, key,
  partition)`` is the only per-row memory the scheduler keeps);
* due lag: ``probe_events`` scheduled sends made through the real ingest path, due
  5-15 s ahead while the million others wait: how late the scheduler released them
  (``notifyd_scheduler_due_lag_seconds``, from the worker) and when the webhook reached
  the sink (end to end, from the due time);
* ``warm_restart_s``: the same worker again on its RocksDB data dir.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from notifyd.model.records import idempotency_scope, notification_id_for
from notifyd.tools.bench.load import Collector, Progress, wait_done
from notifyd.tools.bench.meter import proc_mem_mb
from notifyd.tools.bench.procs import WorkerProc
from notifyd.tools.bench.sink import Sink
from notifyd.tools.bench.stats import latency_summary, rate


class ScheduleOptions(Protocol):
    """The options this phase reads (``notifyd.tools.bench.run.BenchOptions``)."""

    schedule_entries: int
    partitions: int
    drain_timeout: float
    worker_patches: tuple[str, ...]


class Bench(Protocol):
    """What this phase uses of the bench (``notifyd.tools.bench.run.Bench``): the run
    imports the phase, so the phase names its needs instead of importing the run."""

    @property
    def opts(self) -> ScheduleOptions: ...

    tag: str
    bootstrap: str
    progress: Progress
    producer: Any
    sink: Sink
    collector: Collector

    def new_worker(
        self, name: str, app_id: str, prefix: str, store: str, profile: Path | None = None
    ) -> WorkerProc: ...

PROBE_EVENTS = 200
USERS_PER_ROW = 10  # one user per ten rows: users hold several schedules, as in life
_METRIC_RE = re.compile(r'^(notifyd_[a-z_]+)(\{[^}]*\})? ([0-9.eE+\-]+|NaN|\+Inf)$')


def partition_of(key: str, partitions: int) -> int:
    from notifyd.stream.partitioner import partition_of as of_bytes

    return of_bytes(key.encode(), partitions)


async def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of the worker's notifyd_* metrics."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


async def wait_metric(url: str, name: str, at_least: float, timeout: float) -> float | None:
    """Seconds until ``name`` reached ``at_least`` (None: not within ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if (await scrape(url)).get(name, -1.0) >= at_least:
                return time.monotonic() - t0
        except (aiohttp.ClientError, TimeoutError):
            pass  # the worker is busy recovering: ask again
        await asyncio.sleep(0.5)
    return None


def lag_from_histogram(metrics: dict[str, float], kind: str) -> dict[str, Any]:
    """count, mean and the bucket counts of the due-lag histogram for ``kind``."""
    prefix = "notifyd_scheduler_due_lag_seconds"
    label = f'kind="{kind}"'
    count = metrics.get(f"{prefix}_count{{{label}}}", 0.0)
    total = metrics.get(f"{prefix}_sum{{{label}}}", 0.0)
    buckets = {
        k.split('le="')[1].rstrip('"}'): v
        for k, v in metrics.items()
        if k.startswith(f"{prefix}_bucket{{") and label in k
    }
    return {
        "count": int(count),
        "mean_s": round(total / count, 4) if count else None,
        "le_buckets": buckets,
    }


async def schedule_phase(b: Bench) -> dict[str, Any]:
    from notifyd.config import Settings
    from notifyd.stream.topology import TopicNames, ensure_topics

    o = b.opts
    n = o.schedule_entries
    parts = o.partitions
    app_id, prefix = f"notifyd-bench-sched-{b.tag}", f"bench-sched-{b.tag}"
    s = Settings(broker_url=f"kafka://{b.bootstrap}", app_id=app_id, topic_prefix=prefix,
                 topic_partitions=parts)
    await ensure_topics(s)
    names = TopicNames(prefix)
    changelog = f"{app_id}-scheduled-changelog"
    now = time.time()
    users = max(1, n // USERS_PER_ROW)
    out: dict[str, Any] = {"entries": n, "store": "rocksdb://", "partitions": parts}

    t0 = time.monotonic()
    futs = []
    with b.progress.bar(n, "schedule: write changelog") as bar:
        for i in range(n):
            user = f"p{i % users}"
            eid = f"sched-{i}"
            key = "event:" + idempotency_scope(user, eid)
            p = partition_of(user, parts)
            due = now + 30 * 86400 + (i % 86400)
            row = {
                "kind": "event", "due": due, "p": p, "user_id": user, "event_id": eid,
                "nid": notification_id_for(user, eid), "channels": ["webhook"],
                "event": {"event_id": eid, "user_id": user, "title": "Reminder",
                          "body": f"scheduled {i}", "channels": ["webhook"],
                          "delay_s": 30 * 86400},
                "scheduled_at": now, "title": "Reminder",
            }
            futs.append(await b.producer.send(changelog, orjson.dumps(row), key=key.encode(),
                                              partition=p))
            if i % 1000 == 999:
                bar.update(1000)
                if len(futs) > 50_000:
                    await asyncio.gather(*futs)
                    futs.clear()
        await asyncio.gather(*futs)
        bar.update(n % 1000)
    out["changelog_write_s"] = round(time.monotonic() - t0, 2)

    w = b.new_worker("worker-sched", app_id, prefix, "rocksdb://")
    b.progress.note(f"schedule: fresh worker recovers {n:,} pending schedules ...")
    w.start()
    try:
        peak = 0.0
        ready_task = asyncio.create_task(w.wait_ready_async(o.drain_timeout * 5))
        while not ready_task.done():
            peak = max(peak, proc_mem_mb(w.pid)[0] or 0.0)
            await asyncio.sleep(0.5)
        out["recovery_s"] = round(ready_task.result(), 2)
        out["rss_ready_mb"] = proc_mem_mb(w.pid)[0]
        index = await wait_metric(w.url, "notifyd_scheduled", n, o.drain_timeout * 5)
        out["index_after_ready_s"] = None if index is None else round(index, 2)
        out["rss_indexed_mb"], out["rss_peak_mb"] = proc_mem_mb(w.pid)
        out["rss_peak_sampled_mb"] = max(peak, out["rss_indexed_mb"] or 0.0)
        out["due_lag"] = await _probe_lag(b, w.url, names.events, names.preferences)
        out["rss_end_mb"] = proc_mem_mb(w.pid)[0]
    finally:
        w.stop(120)
    w2 = WorkerProc(env=w.env, datadir=w.datadir, web_port=w.web_port,
                    patches=o.worker_patches)
    w2.start()
    try:
        out["warm_restart_s"] = round(await w2.wait_ready_async(o.drain_timeout * 2), 2)
        index = await wait_metric(w2.url, "notifyd_scheduled", n, o.drain_timeout * 2)
        out["warm_index_after_ready_s"] = None if index is None else round(index, 2)
        out["warm_rss_indexed_mb"] = proc_mem_mb(w2.pid)[0]
    finally:
        w2.stop(120)
    return out


async def _probe_lag(b: Bench, url: str, events: str, prefs_topic: str) -> dict[str, Any]:
    """Scheduled sends through the real path, due 5-15 s ahead: how late they fire."""

    run_id = f"sched-lag-{b.tag}"
    probe_users = [f"lag{i}" for i in range(20)]
    sink_url = f"{b.sink.url}/hook/sched"
    for u in probe_users:
        doc = {"op": "put", "user_id": u, "fields": {"webhook_url": sink_url}}
        await b.producer.send_and_wait(prefs_topic, orjson.dumps(doc), key=u.encode())
    # One immediate event per probe user: once all reached the sink, the preferences
    # are applied (the condition the probes' release needs).  Preferences and events
    # are different topics, so an event may be handled before its user's webhook URL
    # is (suppressed: no URL): a user whose event has not arrived gets another one.
    ready = b.collector.expect("sink", f"{run_id}-ready", len(probe_users))
    deadline = time.monotonic() + 120
    attempt = 0
    while not ready.done.is_set() and time.monotonic() < deadline:
        for i, u in enumerate(probe_users):
            if i in ready.seqs:
                continue
            ev = {"event_id": f"{run_id}-ready-{i}-{attempt}", "user_id": u, "title": "ready",
                  "body": "ready", "channels": ["webhook"],
                  "data": {"run": f"{run_id}-ready", "seq": i, "t0": time.time()}}
            await b.producer.send_and_wait(events, orjson.dumps(ev), key=u.encode())
        attempt += 1
        await wait_done([ready], min(3.0, max(0.0, deadline - time.monotonic())))
    st = b.collector.expect("sink", run_id, PROBE_EVENTS)
    base = time.time() + 5
    futs = []
    for i in range(PROBE_EVENTS):
        u = probe_users[i % len(probe_users)]
        due = base + 10 * i / PROBE_EVENTS
        ev = {"event_id": f"{run_id}-{i}", "user_id": u, "title": "Lag probe",
              "body": "due", "channels": ["webhook"],
              "send_at": datetime.fromtimestamp(due, UTC).isoformat(),
              "data": {"run": run_id, "seq": i, "t0": due}}
        futs.append(await b.producer.send(events, orjson.dumps(ev), key=u.encode()))
    await asyncio.gather(*futs)
    done = await wait_done([st], 120)
    metrics = await scrape(url)
    return {
        "probe_events": PROBE_EVENTS,
        "delivered": st.received,
        "complete": done,
        "scheduler": lag_from_histogram(metrics, "event"),
        "end_to_end_from_due_ms": latency_summary(st.latencies_ms),
        "deliveries_per_s": rate(st.received, (st.last_at or 0) - (st.first_at or 0)),
    }
