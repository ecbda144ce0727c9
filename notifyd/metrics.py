"""Prometheus metrics of a worker, served as ``GET /metrics`` (text format 0.0.4).

Everything lives on one :class:`Metrics` object with its own
:class:`~prometheus_client.CollectorRegistry` (never the process-global default), so
tests can build as many as they like and nothing else in the process leaks in.

Two kinds of metrics:

* **Counters and a histogram** moved by the pipeline as it works (one-line calls in
  :mod:`notifyd.stream.handlers`): events received per topic, accepted, dead-lettered per
  reason code; delivery transitions per channel and status (``queued``, ``sent``,
  ``failed``, ``suppressed``, ``deferred``, ``retrying``, ``dead``); attempts and
  retries; channel pauses on a provider's 429 and time spent waiting for a channel's
  rate limit or pause (:mod:`notifyd.providers.ratelimit`); end-to-end latency per channel, from
  the producer's Kafka timestamp (else the moment notifyd accepted the event) to the
  provider's success; per provider of a failover chain (``notifyd.providers.chain``):
  attempts, failures, skips for an open circuit, and the circuit's state (a gauge set on
  each change).
* **Gauges read when scraped** (:meth:`Metrics.refresh`): consumer lag per assigned
  partition (the consumer's highwater minus its position), dead letters held by the
  two DLQ topics (end minus earliest offsets, cached), table sizes (local data of
  each table, cached) and a few counters of Faust's own monitor (``app.monitor``).

Label values are bounded: channels, statuses and configured provider names come from
fixed lists, a dead-letter reason is reduced to its code (``"invalid_json: ..."`` →
``invalid_json``), topics are notifyd's own.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifyd import clock
from notifyd.model.records import STATUSES, Delivery

log = structlog.stdlib.get_logger("notifyd.metrics")

#: The Prometheus text exposition format ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "notifyd"
#: The circuit state gauge's values, by the state a failover chain reports.
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
#: End-to-end latency buckets (seconds): sub-second deliveries up to quiet-hour deferrals.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 6 * 3600.0, 24 * 3600.0,
)
#: Scheduler lateness: its tick is at most 0.5 s, so most releases sit below 1 s.
DUE_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_REASON_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: The circuit state gauge's values, by state of a failover chain's breaker
#: (``notifyd.providers.chain``, which reports here and so is not imported).
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
#: Scrape-time values are recomputed at most this often (seconds).
LAG_TTL_S = 2.0
DLQ_TTL_S = 15.0
TABLES_TTL_S = 15.0
#: A scrape never waits longer than this for the broker (stale values are kept).
REFRESH_TIMEOUT_S = 5.0


def reason_code(reason: str) -> str:
    """The code of a ``"<code>: <detail>"`` reason, ``other`` if it has none."""
    code = reason.split(":", 1)[0].strip().lower()
    return code if _REASON_CODE_RE.match(code) else "other"


def e2e_latency_s(delivery: Delivery, now: float | None = None) -> float:
    """Seconds from the producer's write (else notifyd's acceptance) to now.

    ``produced_at`` is a Kafka timestamp (real time); ``accepted_at`` was read from
    :func:`notifyd.clock.now`, which a simulation may shift, so each is compared
    with the clock it came from.
    """
    if delivery.produced_at:
        start, current = delivery.produced_at, time.time() if now is None else now
    else:
        start, current = delivery.accepted_at, clock.now() if now is None else now
    return max(0.0, current - start)


@dataclass
class Snapshot:
    """Scrape-time values, refreshed by :meth:`Metrics.refresh` (None: never read)."""

    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    commit_lag: dict[tuple[str, int], int] = field(default_factory=dict)
    lag_at: float = 0.0
    dlq: dict[str, int] | None = None
    dlq_at: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)
    tables_at: float = 0.0


class _ScrapeCollector(Collector):
    """Yields the gauges of the last :class:`Snapshot` and Faust's monitor counters."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        snap = self._owner.snapshot
        yield _gauge(
            "consumer_lag",
            "Messages behind the end of each partition this worker consumes "
            "(highwater minus position)",
            ["topic", "partition"],
            snap.lag,
        )
        total = GaugeMetricFamily(
            f"{NAMESPACE}_consumer_lag_total", "Sum of consumer lag over assigned partitions"
        )
        total.add_metric([], sum(snap.lag.values()))
        yield total
        yield _gauge(
            "consumer_commit_lag",
            "Messages not yet processed and committed (highwater minus the offset this "
            "worker last committed), per partition it committed since it started",
            ["topic", "partition"],
            snap.commit_lag,
        )
        yield _gauge(
            "dlq_messages",
            "Dead letters held by a DLQ topic (end minus earliest offsets, all partitions)",
            ["topic"],
            snap.dlq or {},
        )
        yield _gauge(
            "table_keys",
            "Keys in this worker's local store of each table (RocksDB: active partitions)",
            ["table"],
            snap.tables,
        )
        yield _scheduled_gauge()
        yield from self._owner.monitor_metrics()


def _scheduled_gauge() -> Metric:
    """Entries in this worker's scheduler index (deferred deliveries, scheduled events,
    open digests; superseded entries count until they come due)."""
    family = GaugeMetricFamily(
        f"{NAMESPACE}_scheduled",
        "Pending entries in this worker's scheduler index (deferred and retrying "
        "deliveries, scheduled sends, open digests)",
    )
    # Only in a worker; never imported here.  The module may still be importing (it
    # imports this one, whose registry collects once on registration): no index yet.
    index = getattr(sys.modules.get("notifyd.stream.scheduler"), "scheduler", None)
    family.add_metric([], float(len(index.heap)) if index is not None else 0.0)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: Mapping[Any, float]) -> Metric:
    """A labelled gauge family; a tuple key gives one label value per element."""
    family = GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, labels=labels)
    for key, value in sorted(values.items()):
        parts = key if isinstance(key, tuple) else (key,)
        family.add_metric([str(p) for p in parts], value)
    return family


#: Observations the hot path keeps before handing them to their histograms (bounds the
#: memory of a worker nobody scrapes).
PENDING_OBSERVATIONS = 4096


class _Pending(Collector):
    """The hot path's counts and observations, handed to their prometheus_client metrics
    when the registry is collected (a scrape, ``get_sample_value``), so a count costs a
    dict update instead of ``inc()``'s checks and lock (~5 % of a busy worker's CPU for
    the six counted per event).  Registered before every metric of its registry: the
    registry collects in registration order, so a scrape sees every count made before
    it."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        self.observed: list[tuple[Any, float]] = []

    def inc(self, metric: Any) -> None:
        counts = self.counts
        counts[metric] = counts.get(metric, 0.0) + 1.0

    def observe(self, metric: Any, value: float) -> None:
        self.observed.append((metric, value))
        if len(self.observed) >= PENDING_OBSERVATIONS:
            self.flush()

    def flush(self) -> None:
        counts, self.counts = self.counts, {}
        observed, self.observed = self.observed, []
        for metric, n in counts.items():
            metric.inc(n)
        for metric, value in observed:
            metric.observe(value)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        self.flush()
        return iter(())


class _Children:
    """A labelled metric's children by label values, each looked up in prometheus_client
    once: its ``labels()`` checks the values and takes a lock on every call (~2 % of a
    busy worker's CPU for the five counted per event)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The worker's metrics on a private registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        start_offsets: Callable[[list[str] | str], Awaitable[Any]] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        #: Opens the client that reads DLQ sizes (default: :func:`start_offsets_client`).
        self.start_offsets = start_offsets or start_offsets_client
        #: How long lag and DLQ sizes are served from the last read.
        self.lag_ttl_s = LAG_TTL_S
        self.dlq_ttl_s = DLQ_TTL_S
        r = self.registry
        self._pending = _Pending()
        r.register(self._pending)  # first: see _Pending
        self.events_received = Counter(
            "events_received", "Events read from an input topic", ["topic"],
            namespace=NAMESPACE, registry=r,
        )
        self.events_accepted = Counter(
            "events_accepted", "Events validated and fanned out to the channels",
            namespace=NAMESPACE, registry=r,
        )
        self.events_dead_lettered = Counter(
            "events_dead_lettered",
            "Records sent to the events DLQ (invalid events and preferences), by reason code",
            ["reason"], namespace=NAMESPACE, registry=r,
        )
        self.deliveries = Counter(
            "deliveries",
            "Delivery state transitions published, by channel and status",
            ["channel", "status"], namespace=NAMESPACE, registry=r,
        )
        self.deliveries_queued = Counter(
            "deliveries_queued",
            "Deliveries queued, by channel and route: 'lane' (handed to the channel's lane "
            "in this worker) or 'topic' (through the channel topic)",
            ["channel", "route"], namespace=NAMESPACE, registry=r,
        )
        self.delivery_attempts = Counter(
            "delivery_attempts", "Provider calls made, by channel",
            ["channel"], namespace=NAMESPACE, registry=r,
        )
        self.delivery_retries = Counter(
            "delivery_retries", "Provider calls that were a retry (attempt > 1), by channel",
            ["channel"], namespace=NAMESPACE, registry=r,
        )
        self.dead_letters_produced = Counter(
            "dead_letters_produced", "Dead letters this worker wrote, by DLQ topic",
            ["topic"], namespace=NAMESPACE, registry=r,
        )
        self.delivery_latency = Histogram(
            "delivery_latency_seconds",
            "End to end: producer timestamp (else acceptance) to provider success",
            ["channel"], buckets=LATENCY_BUCKETS, namespace=NAMESPACE, registry=r,
        )
        self.channel_pauses = Counter(
            "channel_pauses",
            "Channel-wide pauses of provider calls after the provider answered 429",
            ["channel"], namespace=NAMESPACE, registry=r,
        )
        self.provider_wait = Counter(
            "provider_wait_seconds",
            "Time provider calls waited before being made, by channel and cause "
            "(rate_limit: the channel's token bucket; paused: a 429 pause)",
            ["channel", "cause"], namespace=NAMESPACE, registry=r,
        )
        # Failover chains (notifyd.providers.chain): per channel and configured provider.
        self.provider_attempts = Counter(
            "provider_attempts", "Calls to a provider of a failover chain",
            ["channel", "provider"], namespace=NAMESPACE, registry=r,
        )
        self.provider_failures = Counter(
            "provider_failures",
            "Failed calls to a provider of a failover chain, by kind (retriable, permanent)",
            ["channel", "provider", "kind"], namespace=NAMESPACE, registry=r,
        )
        self.provider_skipped_total = Counter(
            "provider_skipped", "Deliveries that skipped a provider because its circuit was open",
            ["channel", "provider"], namespace=NAMESPACE, registry=r,
        )
        self.provider_circuit_state = Gauge(
            "provider_circuit_state",
            "Circuit of a provider on this worker: 0 closed, 1 half-open, 2 open",
            ["channel", "provider"], namespace=NAMESPACE, registry=r,
        )
        self.scheduler_due_lag = Histogram(
            "scheduler_due_lag_seconds",
            "How late the scheduler released a due entry (release time minus due time), "
            "by kind: delivery (deferred/retry), event (scheduled send), digest (window)",
            ["kind"], buckets=DUE_LAG_BUCKETS, namespace=NAMESPACE, registry=r,
        )
        self.digests_sent = Counter(
            "digests_sent", "Digest notifications sent (window closed with items)",
            namespace=NAMESPACE, registry=r,
        )
        self.snapshot = Snapshot()
        # The hot path's labelled metrics, their children looked up once per label values.
        self._received = _Children(self.events_received)
        self._deliveries = _Children(self.deliveries)
        self._attempts = _Children(self.delivery_attempts)
        self._retries = _Children(self.delivery_retries)
        self._latency = _Children(self.delivery_latency)
        self._queued = _Children(self.deliveries_queued)
        self.app: Any = None
        #: A group-less consumer asking the broker for DLQ offsets (started when needed).
        self._offsets: Any = None
        self._refresh_lock = asyncio.Lock()
        r.register(_ScrapeCollector(self))

    # --- pipeline hooks (cheap, never raise) ----------------------------------------

    def flush(self) -> None:
        """Hand the hot path's pending counts to their metrics (before reading a metric's
        own ``collect()``; a registry collect does it itself)."""
        self._pending.flush()

    def event_received(self, topic: str) -> None:
        self._pending.inc(self._received(topic))

    def delivery_queued(self, channel: str, route: str) -> None:
        self._pending.inc(self._queued(channel, route))

    def event_accepted(self) -> None:
        self._pending.inc(self.events_accepted)

    def event_dead_lettered(self, reason: str, topic: str | None = None) -> None:
        self.events_dead_lettered.labels(reason_code(reason)).inc()
        if topic is not None:
            self.dead_letters_produced.labels(topic).inc()

    def status_updates(self, updates: Iterable[Mapping[str, Any]]) -> None:
        """Count each published ``{"channel", "status"}`` transition."""
        for u in updates:
            st = u.get("status")
            if st in STATUSES:
                self._pending.inc(self._deliveries(str(u.get("channel")), st))

    def delivery_attempted(self, delivery: Delivery) -> None:
        self._pending.inc(self._attempts(delivery.channel))
        if delivery.attempt > 1:
            self._pending.inc(self._retries(delivery.channel))

    def delivery_sent(self, delivery: Delivery) -> None:
        self._pending.observe(self._latency(delivery.channel), e2e_latency_s(delivery))

    def delivery_dead(self, topic: str) -> None:
        self.dead_letters_produced.labels(topic).inc()

    def channel_paused(self, channel: str) -> None:
        self.channel_pauses.labels(channel).inc()

    def provider_waited(self, channel: str, cause: str, seconds: float) -> None:
        self.provider_wait.labels(channel, cause).inc(seconds)

    def provider_attempted(self, channel: str, provider: str) -> None:
        self.provider_attempts.labels(channel, provider).inc()

    def provider_failed(self, channel: str, provider: str, kind: str) -> None:
        self.provider_failures.labels(channel, provider, kind).inc()

    def provider_skipped(self, channel: str, provider: str) -> None:
        self.provider_skipped_total.labels(channel, provider).inc()

    def provider_circuit(self, channel: str, provider: str, state: str) -> None:
        self.provider_circuit_state.labels(channel, provider).set(CIRCUIT_STATE_VALUES[state])

    def due_lag(self, kind: str, seconds: float) -> None:
        self.scheduler_due_lag.labels(kind).observe(max(0.0, seconds))

    def digest_sent(self) -> None:
        self.digests_sent.inc()

    # --- scrape -----------------------------------------------------------------------

    def bind(self, app: Any) -> None:
        """Read lag, DLQ size, tables and Faust's monitor from this app when scraped."""
        self.app = app

    def monitor_metrics(self) -> Iterator[Metric]:
        """Counters of Faust's own sensor (``app.monitor``), if an app is bound."""
        monitor = getattr(self.app, "monitor", None) if self.app is not None else None
        if monitor is None:
            return
        try:
            received = CounterMetricFamily(
                f"{NAMESPACE}_faust_messages_received",
                "Messages the Faust consumer received, by topic", labels=["topic"],
            )
            for topic, n in sorted(dict(monitor.messages_received_by_topic or {}).items()):
                received.add_metric([str(topic)], n)
            sent = CounterMetricFamily(
                f"{NAMESPACE}_faust_messages_sent",
                "Messages the Faust producer sent, by topic", labels=["topic"],
            )
            for topic, n in sorted(dict(monitor.messages_sent_by_topic or {}).items()):
                sent.add_metric([str(topic)], n)
            events = CounterMetricFamily(
                f"{NAMESPACE}_faust_events", "Stream events processed by Faust agents"
            )
            events.add_metric([], monitor.events_total)
            rebalances = CounterMetricFamily(
                f"{NAMESPACE}_faust_rebalances", "Consumer group rebalances seen"
            )
            rebalances.add_metric([], getattr(monitor, "rebalances", 0) or 0)
            active = GaugeMetricFamily(
                f"{NAMESPACE}_faust_events_active", "Stream events being processed now"
            )
            active.add_metric([], monitor.events_active)
            runtime = GaugeMetricFamily(
                f"{NAMESPACE}_faust_event_runtime_avg_seconds",
                "Median processing time of recent stream events",
            )
            runtime.add_metric([], float(monitor.events_runtime_avg or 0.0))
        except Exception:  # a Faust upgrade must not break the whole scrape
            log.exception("metrics.monitor_failed")
            return
        yield from (received, sent, events, rebalances, active, runtime)

    async def refresh(
        self,
        app: Any = None,
        *,
        dlq_topics: Iterable[str] = (),
        bootstrap: list[str] | str | None = None,
    ) -> None:
        """Update the scrape-time gauges that are due (each has its own TTL).

        DLQ sizes are asked from the broker at ``bootstrap`` (skipped without one).
        """
        app = app if app is not None else self.app
        if app is None:
            return
        async with self._refresh_lock:  # concurrent scrapes share one refresh
            now = time.monotonic()
            snap = self.snapshot
            jobs = []
            if now - snap.lag_at >= self.lag_ttl_s:
                jobs.append(self._refresh_lag(app))
            if now - snap.dlq_at >= self.dlq_ttl_s and dlq_topics and bootstrap:
                jobs.append(self._refresh_dlq(bootstrap, tuple(dlq_topics)))
            if now - snap.tables_at >= TABLES_TTL_S:
                jobs.append(self._refresh_tables(app))
            if jobs:
                await asyncio.gather(*jobs)

    async def _refresh_lag(self, app: Any) -> None:
        try:
            lag, commit_lag = await asyncio.wait_for(consumer_lag(app), REFRESH_TIMEOUT_S)
            self.snapshot.lag, self.snapshot.commit_lag = lag, commit_lag
        except Exception as exc:  # keep the last values; the scrape still answers
            log.warning("metrics.lag_failed", error=f"{type(exc).__name__}: {exc}")
        self.snapshot.lag_at = time.monotonic()

    async def _refresh_dlq(self, bootstrap: list[str] | str, topics: tuple[str, ...]) -> None:
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                if self._offsets is None:
                    self._offsets = await self.start_offsets(bootstrap)
                self.snapshot.dlq = await topic_sizes(self._offsets, topics)
        except Exception as exc:
            log.warning("metrics.dlq_failed", error=f"{type(exc).__name__}: {exc}")
            await self.close()  # a fresh connection next time
        self.snapshot.dlq_at = time.monotonic()

    async def close(self) -> None:
        """Stop the broker client of the DLQ gauge (the web server's cleanup)."""
        client, self._offsets = self._offsets, None
        if client is not None:
            try:
                await client.stop()
            except Exception:  # closing a broken connection
                log.debug("metrics.close_failed", exc_info=True)

    async def _refresh_tables(self, app: Any) -> None:
        try:
            self.snapshot.tables = await table_sizes(app)
        except Exception as exc:
            log.warning("metrics.tables_failed", error=f"{type(exc).__name__}: {exc}")
        self.snapshot.tables_at = time.monotonic()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- scrape-time readers ----------------------------------------------------------------


def _is_changelog(topic: str) -> bool:
    # Changelog partitions are read during recovery (and by standbys) only; their
    # "lag" would be meaningless for an active table.
    return topic.endswith("-changelog")


LagMap = dict[tuple[str, int], int]


async def consumer_lag(app: Any) -> tuple[LagMap, LagMap]:
    """Per ``(topic, partition)`` of the consumer's stream partitions: highwater minus
    position, and highwater minus the last offset committed (where one was).

    Uses Faust's consumer (``app.consumer``): its assignment, the broker highwater it
    tracks from fetch responses (known once a fetch answered for the partition) and
    the fetch position; commits come from Faust's monitor (``tp_committed_offsets``).
    """
    consumer = app.consumer
    assigned = [tp for tp in consumer.assignment() if not _is_changelog(tp.topic)]
    if not assigned:
        return {}, {}
    positions = await asyncio.gather(
        *(consumer.position(tp) for tp in assigned), return_exceptions=True
    )
    committed: Mapping[Any, int] = getattr(app.monitor, "tp_committed_offsets", None) or {}
    out: LagMap = {}
    commit_out: LagMap = {}
    for tp, pos in zip(assigned, positions, strict=True):
        if isinstance(pos, BaseException) or pos is None:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:
            continue
        if high is None:
            continue
        out[(tp.topic, tp.partition)] = max(0, int(high) - int(pos))
        done = committed.get(tp)
        if done is not None:
            commit_out[(tp.topic, tp.partition)] = max(0, int(high) - int(done))
    return out, commit_out


async def start_offsets_client(bootstrap: list[str] | str) -> Any:
    """A consumer without a group: only asks for offsets, never joins or commits."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id="notifyd-metrics",
        request_timeout_ms=int(REFRESH_TIMEOUT_S * 1000),
    )
    await consumer.start()
    return consumer


async def topic_sizes(consumer: Any, topics: Iterable[str]) -> dict[str, int]:
    """Messages held per topic: sum over partitions of end minus earliest offset.

    ``consumer`` is an aiokafka consumer (:func:`start_offsets_client`).  The
    partitions come from the cluster's metadata (the consumer subscribes to nothing,
    so its own view knows no topic); a missing topic counts 0.
    """
    from aiokafka import TopicPartition

    cluster = await consumer._client.fetch_all_metadata()
    out: dict[str, int] = {}
    for topic in topics:
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            out[topic] = 0
            continue
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        out[topic] = sum(max(0, int(ends[tp]) - int(starts[tp])) for tp in tps)
    return out


async def table_sizes(app: Any) -> dict[str, int]:
    """Keys of each table in this worker's local store (RocksDB is counted off the loop)."""
    out: dict[str, int] = {}
    for name, table in app.tables.items():
        data = table.data
        if isinstance(data, dict) or type(data).__module__.endswith("memory"):
            out[str(name)] = len(data)
        else:
            out[str(name)] = await asyncio.to_thread(len, data)
    return out


#: The process-wide metrics of a worker.
metrics = Metrics()
