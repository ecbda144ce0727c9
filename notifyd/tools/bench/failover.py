"""``notifyd bench`` phase **state**, part *failover*: a standby replica takes over.

Two workers on the state phase's app id (its recovered preferences changelog), both
with ``NOTIFYD_TABLE_STANDBY_REPLICAS=1``, each with its own RocksDB data dir: once
both are ready and the partitions are split between them, the one that owns partition
0 (the *victim*) is stopped, and events are produced every ``TICK_S`` to a recovered
user of each partition.  Measured from the stop signal:

* ``failover_s``: until every victim partition delivered (webhook at the sink) an
  event produced after the stop: the survivor took those partitions over;
* ``survivor_pause_ms``: the highest end-to-end latency of the survivor's own
  partitions meanwhile (Faust stops every stream while it rebalances).

Two modes, each with its own pair of workers:

* ``clean``: SIGTERM with the deployed settings (``broker_session_timeout_s`` 30 s):
  the victim leaves the group as it shuts down, so the rebalance starts at once; what
  bounds the failover is the victim's shutdown until it leaves, the survivor's next
  heartbeat (every ``min(3 s, session/3)``) and Faust's rebalance and table recovery.
* ``kill``: SIGKILL, as a crash: nobody leaves the group, the coordinator notices only
  when the victim's session expires, so this is bounded below by the session timeout;
  run with the lowest one notifyd accepts (``KILL_SESSION_TIMEOUT_S``, Kafka's
  ``group.min.session.timeout.ms`` default too).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from notifyd.config import Settings
from notifyd.tools.bench.load import RunStats, _event
from notifyd.tools.bench.procs import WorkerProc
from notifyd.tools.bench.schedule import Bench, partition_of
from notifyd.tools.bench.stats import latency_summary

#: Seconds between two probe events to each partition.
TICK_S = 0.05
#: The lowest ``NOTIFYD_BROKER_SESSION_TIMEOUT_S`` (notifyd.config; Kafka's minimum).
KILL_SESSION_TIMEOUT_S = 6.0
#: Users probed per partition (one event per tick, in turn).
USERS_PER_PARTITION = 4

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Mode:
    name: str
    sig: signal.Signals
    #: NOTIFYD_BROKER_SESSION_TIMEOUT_S for both workers; None: the setting's default.
    session_timeout_s: float | None


MODES = (
    Mode("clean", signal.SIGTERM, None),
    Mode("kill", signal.SIGKILL, KILL_SESSION_TIMEOUT_S),
)


def users_by_partition(users: int, partitions: int, per_partition: int) -> dict[int, list[str]]:
    """``per_partition`` of the state users ``s0 .. s{users-1}`` in each partition (the
    lowest numbers; fewer where the users run out)."""
    out: dict[int, list[str]] = {p: [] for p in range(partitions)}
    missing = partitions
    for i in range(users):
        u = f"s{i}"
        got = out[partition_of(u, partitions)]
        if len(got) < per_partition:
            got.append(u)
            if len(got) == per_partition:
                missing -= 1
                if not missing:
                    break
    return out


def split_ok(owned: Iterable[Iterable[int]], partitions: int) -> bool:
    """Every worker owns some partitions, none twice, all of them in all."""
    sets = [set(o) for o in owned]
    seen: set[int] = set()
    for s in sets:
        if not s or s & seen:
            return False
        seen |= s
    return seen == set(range(partitions))


def summarize(
    stop_at: float,
    first_receipt: Mapping[int, float | None],
    victim: Iterable[int],
    pause_ms: Mapping[int, float],
) -> dict[str, Any]:
    """Figures of one round from the receipts (wall-clock seconds): per partition the
    delay from the stop to its first receipt of an event produced after it."""
    victim = sorted(victim)
    survivor = sorted(set(first_receipt) - set(victim))
    delay = {
        p: (round(t - stop_at, 3) if t is not None else None) for p, t in first_receipt.items()
    }
    v = [delay[p] for p in victim]
    pauses = [pause_ms[p] for p in survivor if p in pause_ms]
    done = [d for d in v if d is not None]
    return {
        "victim_partitions": victim,
        "survivor_partitions": survivor,
        # None unless every victim partition delivered again
        "failover_s": max(done) if done and len(done) == len(v) else None,
        "first_delivery_s": {str(p): delay[p] for p in sorted(delay)},
        "survivor_pause_ms": round(max(pauses), 1) if pauses else None,
    }


def readiness(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The worker's ``/readyz`` document (200 or 503), None if it does not answer."""
    req = urllib.request.Request(f"{url}/readyz")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            body = json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:  # 503 while not ready: a document too
        try:
            body = json.loads(exc.read() or b"null")
        except ValueError:
            return None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return body if isinstance(body, dict) else None


async def wait_split(workers: list[WorkerProc], partitions: int, timeout: float) -> list[set[int]]:
    """Wait until every worker is ready and they share the partitions between them."""
    deadline = time.monotonic() + timeout
    owned: list[set[int]] = []
    while time.monotonic() < deadline:
        docs = [await asyncio.to_thread(readiness, w.url) for w in workers]
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker exited:\n{w.log_tail()}")
        if all(d and d.get("ready") for d in docs):
            owned = [set(d.get("partitions") or ()) for d in docs if d]
            if split_ok(owned, partitions):
                return owned
        await asyncio.sleep(0.2)
    raise TimeoutError(f"workers not ready with the partitions split in {timeout}s: {owned}")


class Prober:
    """Produces one event per partition per tick to that partition's users and keeps
    each partition's receipts apart (a Collector run per partition)."""

    def __init__(self, bench: Bench, topic: str, users: Mapping[int, list[str]], run: str):
        self.bench = bench
        self.topic = topic
        self.users = users
        self.stats: dict[int, RunStats] = {
            p: bench.collector.expect("sink", f"{run}-p{p}", 1 << 30) for p in users
        }
        self.runs = {p: f"{run}-p{p}" for p in users}
        self.sent = dict.fromkeys(users, 0)

    async def tick(self, parts: Iterable[int]) -> None:
        for p in parts:
            n = self.sent[p]
            u = self.users[p][n % len(self.users[p])]
            await self.bench.producer.send(self.topic, _event(self.runs[p], n, u), key=u.encode())
            self.sent[p] = n + 1

    def received(self, p: int) -> int:
        return self.stats[p].received

    async def wait_all(self, timeout: float) -> bool:
        """Every event produced so far reached the sink (duplicates aside)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.received(p) >= self.sent[p] for p in self.users):
                return True
            await asyncio.sleep(0.05)
        return False


async def failover_round(
    bench: Bench, mode: Mode, app_id: str, prefix: str, events_topic: str, users: int
) -> dict[str, Any]:
    """Start the pair, stop the owner of partition 0 as ``mode`` says, time the takeover."""
    o = bench.opts
    extra = {"NOTIFYD_TABLE_STANDBY_REPLICAS": "1"}
    if mode.session_timeout_s is not None:
        extra["NOTIFYD_BROKER_SESSION_TIMEOUT_S"] = str(mode.session_timeout_s)
    pair = [bench.new_worker(name, app_id, prefix, "rocksdb://")
            for name in ("worker-state", "worker-state-b")]
    for w in pair:
        w.env.update(extra)
    out: dict[str, Any] = {
        "signal": mode.sig.name,
        "standby_replicas": 1,
        "session_timeout_s": mode.session_timeout_s
        or Settings.model_fields["broker_session_timeout_s"].default,
    }
    t0 = time.monotonic()
    for w in pair:
        w.start()
    try:
        owned = await wait_split(pair, o.partitions, o.drain_timeout * 5)
        out["pair_ready_s"] = round(time.monotonic() - t0, 2)
        vi = next(i for i, parts in enumerate(owned) if 0 in parts)
        victim, survivor = pair[vi], pair[1 - vi]
        probe_users = users_by_partition(users, o.partitions, USERS_PER_PARTITION)
        # Both deliver before the stop (connections open, lanes running).
        warm = Prober(bench, events_topic, probe_users, f"failover-{mode.name}-warm-{bench.tag}")
        await warm.tick(range(o.partitions))
        if not await warm.wait_all(60):
            raise RuntimeError("failover: the pair did not deliver before the stop")
        probe = Prober(bench, events_topic, probe_users, f"failover-{mode.name}-{bench.tag}")
        stop_at = time.time()
        stopped = time.monotonic()
        assert victim.proc is not None
        victim.proc.send_signal(mode.sig)
        exited_s: float | None = None
        deadline = stopped + max(60.0, 4 * (mode.session_timeout_s or 30.0))
        # Probe every partition each tick until every victim partition delivered.
        while time.monotonic() < deadline:
            if exited_s is None and victim.proc.poll() is not None:
                exited_s = round(time.monotonic() - stopped, 3)
            if all(probe.received(p) for p in owned[vi]):
                break
            await probe.tick(range(o.partitions))
            await asyncio.sleep(TICK_S)
        delivered_all = await probe.wait_all(60)
        if exited_s is None:
            await asyncio.to_thread(victim.proc.wait, 60)
            exited_s = round(time.monotonic() - stopped, 3)
        first = {p: probe.stats[p].first_at for p in range(o.partitions)}
        pause = {p: max(probe.stats[p].latencies_ms, default=0.0) for p in range(o.partitions)}
        out.update(summarize(stop_at, first, owned[vi], pause))
        out["victim_exited_s"] = exited_s
        out["probes_sent"] = sum(probe.sent.values())
        out["probes_delivered"] = sum(probe.received(p) for p in probe.sent)
        out["duplicates"] = sum(st.duplicates for st in probe.stats.values())
        out["all_delivered"] = delivered_all
        # Undelivered within a minute after the takeover, by partition (at-least-once:
        # none should be).
        out["missing_by_partition"] = {
            str(p): probe.sent[p] - probe.received(p)
            for p in sorted(probe.sent) if probe.sent[p] > probe.received(p)
        }
        out["e2e_after_stop"] = latency_summary(
            [ms for st in probe.stats.values() for ms in st.latencies_ms]
        )
        after = await asyncio.to_thread(readiness, survivor.url)
        out["survivor_partitions_after"] = (after or {}).get("partitions")
    finally:
        for w in pair:
            w.stop(120)
    return out


async def failover_phase(
    bench: Bench, app_id: str, prefix: str, events_topic: str, users: int
) -> dict[str, Any]:
    """Both modes on the state phase's app (its workers stopped, data dirs kept)."""
    out: dict[str, Any] = {}
    for mode in MODES:
        bench.progress.note(f"state: failover ({mode.name}, {mode.sig.name}) ...")
        out[mode.name] = await failover_round(bench, mode, app_id, prefix, events_topic, users)
        bench.progress.note(
            f"state: failover {mode.name}: {out[mode.name]['failover_s']} s "
            f"(survivor paused {out[mode.name]['survivor_pause_ms']} ms)"
        )
    return out
