"""Metrics: names, labels and values on a private registry; scrape-time gauges read from
a stand-in for Faust's app (consumer, tables, monitor); the /metrics handler."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from faust.types import TP
from prometheus_client.parser import text_string_to_metric_families

from notifyd.metrics import CONTENT_TYPE, Metrics, e2e_latency_s, reason_code
from notifyd.model.records import Delivery


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` parsed back from the text output."""
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(m: Metrics, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples(m) if n == name]


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def delivery(channel: str = "email", attempt: int = 1, **kw: Any) -> Delivery:
    return Delivery(
        notification_id="n1", event_id="e1", user_id="u1", channel=channel,
        title="T", body="B", attempt=attempt, **kw,
    )


# --- names and labels ------------------------------------------------------------------


def test_own_registry_not_the_global_default() -> None:
    m = Metrics()
    assert m.registry is not prometheus_client.REGISTRY
    m.event_received("notifyd.events")
    assert prometheus_client.REGISTRY.get_sample_value(
        "notifyd_events_received_total", {"topic": "notifyd.events"}
    ) is None


def test_metric_names_types_and_help() -> None:
    text = Metrics().render().decode()
    for name, kind in (
        ("notifyd_events_received_total", "counter"),
        ("notifyd_events_accepted_total", "counter"),
        ("notifyd_events_dead_lettered_total", "counter"),
        ("notifyd_deliveries_total", "counter"),
        ("notifyd_delivery_attempts_total", "counter"),
        ("notifyd_delivery_retries_total", "counter"),
        ("notifyd_dead_letters_produced_total", "counter"),
        ("notifyd_delivery_latency_seconds", "histogram"),
        ("notifyd_consumer_lag", "gauge"),
        ("notifyd_consumer_lag_total", "gauge"),
        ("notifyd_consumer_commit_lag", "gauge"),
        ("notifyd_dlq_messages", "gauge"),
        ("notifyd_table_keys", "gauge"),
    ):
        assert f"# HELP {name} " in text, name
        assert f"# TYPE {name} {kind}\n" in text, name


def test_event_counters() -> None:
    m = Metrics()
    m.event_received("notifyd.events")
    m.event_received("notifyd.events")
    m.event_received("notifyd.events.rekeyed")
    m.event_accepted()
    m.event_dead_lettered("invalid_json: unexpected character", "notifyd.events.dlq")
    m.event_dead_lettered("missing_field: event_id is required", "notifyd.events.dlq")
    m.event_dead_lettered("invalid_json: again")
    assert value(m, "notifyd_events_received_total", topic="notifyd.events") == 2
    assert value(m, "notifyd_events_received_total", topic="notifyd.events.rekeyed") == 1
    assert value(m, "notifyd_events_accepted_total") == 1
    assert value(m, "notifyd_events_dead_lettered_total", reason="invalid_json") == 2
    assert value(m, "notifyd_events_dead_lettered_total", reason="missing_field") == 1
    assert value(m, "notifyd_dead_letters_produced_total", topic="notifyd.events.dlq") == 2


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("invalid_json: x", "invalid_json"),
        ("partition_mismatch: rekeyed to 1, expected 2", "partition_mismatch"),
        ("invalid_preferences: email 'x' is not valid", "invalid_preferences"),
        ("no code here", "other"),
        ("Weird-Code: x", "other"),
        ("", "other"),
        ("x" * 60 + ": long", "other"),
    ],
)
def test_reason_code_is_bounded(reason: str, code: str) -> None:
    assert reason_code(reason) == code


def test_status_updates_by_channel_and_status() -> None:
    m = Metrics()
    m.status_updates([
        {"channel": "email", "status": "queued"},
        {"channel": "sms", "status": "suppressed", "reason": "no_address: x"},
        {"channel": "push", "status": "deferred"},
    ])
    m.status_updates([{"channel": "email", "status": "sent"}])
    m.status_updates([{"channel": "email", "status": "retrying"}])
    m.status_updates([{"channel": "sms", "status": "failed"}, {"channel": "push", "status": "dead"}])
    m.status_updates([{"channel": "email", "status": "bogus"}])  # not a state: ignored
    for ch, st in [("email", "queued"), ("sms", "suppressed"), ("push", "deferred"),
                   ("email", "sent"), ("email", "retrying"), ("sms", "failed"),
                   ("push", "dead")]:
        assert value(m, "notifyd_deliveries_total", channel=ch, status=st) == 1, (ch, st)
    assert value(m, "notifyd_deliveries_total", channel="email", status="bogus") is None


def test_attempts_retries_and_dead_letters() -> None:
    m = Metrics()
    m.delivery_attempted(delivery("sms", attempt=1))
    m.delivery_attempted(delivery("sms", attempt=2))
    m.delivery_attempted(delivery("sms", attempt=3))
    m.delivery_dead("notifyd.deliveries.dlq")
    assert value(m, "notifyd_delivery_attempts_total", channel="sms") == 3
    assert value(m, "notifyd_delivery_retries_total", channel="sms") == 2
    assert value(m, "notifyd_dead_letters_produced_total", topic="notifyd.deliveries.dlq") == 1


def test_latency_histogram_per_channel() -> None:
    m = Metrics()
    now = time.time()
    m.delivery_sent(delivery("push", produced_at=now - 0.3, accepted_at=now - 0.1))
    m.delivery_sent(delivery("push", produced_at=now - 20))
    assert value(m, "notifyd_delivery_latency_seconds_count", channel="push") == 2
    assert value(m, "notifyd_delivery_latency_seconds_bucket", channel="push", le="0.5") == 1
    assert value(m, "notifyd_delivery_latency_seconds_bucket", channel="push", le="30.0") == 2
    total = value(m, "notifyd_delivery_latency_seconds_sum", channel="push")
    assert total is not None and 20.2 < total < 21.5


def test_e2e_latency_origin() -> None:
    # The producer's timestamp when known (real time), else acceptance (notifyd's clock).
    assert e2e_latency_s(delivery(produced_at=100.0, accepted_at=105.0), now=110.0) == 10.0
    d = delivery(accepted_at=time.time() - 2)
    assert 1.9 < e2e_latency_s(d) < 3
    assert e2e_latency_s(delivery(produced_at=200.0), now=100.0) == 0.0  # clock skew


# --- scrape-time gauges -----------------------------------------------------------------


@dataclass
class FakeConsumer:
    assigned: set[TP]
    positions: dict[TP, int]
    highs: dict[TP, int | None]
    calls: int = 0

    def assignment(self) -> set[TP]:
        self.calls += 1
        return self.assigned

    async def position(self, tp: TP) -> int | None:
        if tp.partition == 99:
            raise RuntimeError("not assigned any more")
        return self.positions.get(tp)

    def highwater(self, tp: TP) -> int | None:
        return self.highs.get(tp)



class FakeCluster:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1} if topic.endswith(".dlq") else None


class FakeKafkaClient:
    async def fetch_all_metadata(self) -> FakeCluster:
        return FakeCluster()


class FakeOffsetsConsumer:
    """Stands in for the group-less aiokafka consumer of the DLQ gauge."""

    def __init__(self) -> None:
        self._client = FakeKafkaClient()
        self.ends = {("notifyd.events.dlq", 0): 5, ("notifyd.events.dlq", 1): 2,
                     ("notifyd.deliveries.dlq", 0): 1}
        self.starts = {("notifyd.events.dlq", 0): 1}
        self.stopped = False

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.ends.get((tp.topic, tp.partition), 0) for tp in tps}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.starts.get((tp.topic, tp.partition), 0) for tp in tps}

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class FakeTable:
    data: dict[str, Any]


class FakeMonitor:
    tp_committed_offsets = {TP("notifyd.events", 0): 8}
    messages_received_by_topic = Counter({"notifyd.events": 7})
    messages_sent_by_topic = Counter({"notifyd.status": 3})
    events_total = 11
    events_active = 1
    events_runtime_avg = 0.002
    rebalances = 2


class FakeConf:
    topic_partitions = 2


@dataclass
class FakeApp:
    consumer: FakeConsumer
    tables: dict[str, FakeTable]
    monitor: Any = field(default_factory=FakeMonitor)
    conf: Any = field(default_factory=FakeConf)


def fake_app() -> FakeApp:
    ev0, ev1 = TP("notifyd.events", 0), TP("notifyd.events", 1)
    push = TP("notifyd.deliver.push", 0)
    changelog = TP("notifyd-preferences-changelog", 0)
    gone = TP("notifyd.status", 99)
    nowater = TP("notifyd.control", 0)
    consumer = FakeConsumer(
        assigned={ev0, ev1, push, changelog, gone, nowater},
        positions={ev0: 10, ev1: 5, push: 3, changelog: 0, nowater: 1},
        highs={ev0: 15, ev1: 5, push: 4, changelog: 100, gone: 9, nowater: None},
    )
    tables = {"preferences": FakeTable({"u1": {}, "u2": {}}), "seen": FakeTable({})}
    return FakeApp(consumer, tables)


DLQS = ("notifyd.events.dlq", "notifyd.deliveries.dlq", "notifyd.missing.dlq2")


@pytest.fixture
def offsets() -> FakeOffsetsConsumer:
    return FakeOffsetsConsumer()


def reading(fake: FakeOffsetsConsumer) -> Metrics:
    """Metrics whose DLQ sizes come from ``fake`` (instead of a Kafka client)."""

    async def start(bootstrap: Any) -> FakeOffsetsConsumer:
        assert bootstrap == ["127.0.0.1:9092"]
        return fake

    return Metrics(start_offsets=start)


async def test_refresh_reads_lag_dlq_tables_and_monitor(offsets: FakeOffsetsConsumer) -> None:
    m = reading(offsets)
    app = fake_app()
    m.bind(app)
    await m.refresh(dlq_topics=DLQS, bootstrap=["127.0.0.1:9092"])
    assert value(m, "notifyd_consumer_lag", topic="notifyd.events", partition="0") == 5
    assert value(m, "notifyd_consumer_lag", topic="notifyd.events", partition="1") == 0
    assert value(m, "notifyd_consumer_lag", topic="notifyd.deliver.push", partition="0") == 1
    # Changelogs, partitions without a position or a highwater are left out.
    got = samples(m)
    lag_topics = {dict(k[1]).get("topic") for k in got if k[0] == "notifyd_consumer_lag"}
    assert lag_topics == {"notifyd.events", "notifyd.deliver.push"}
    assert value(m, "notifyd_consumer_lag_total") == 6
    assert value(m, "notifyd_consumer_commit_lag", topic="notifyd.events", partition="0") == 7
    assert len(series(m, "notifyd_consumer_commit_lag")) == 1
    assert value(m, "notifyd_dlq_messages", topic="notifyd.events.dlq") == 6
    assert value(m, "notifyd_dlq_messages", topic="notifyd.deliveries.dlq") == 1
    assert value(m, "notifyd_dlq_messages", topic="notifyd.missing.dlq2") == 0
    assert value(m, "notifyd_table_keys", table="preferences") == 2
    assert value(m, "notifyd_table_keys", table="seen") == 0
    assert value(m, "notifyd_faust_messages_received_total", topic="notifyd.events") == 7
    assert value(m, "notifyd_faust_messages_sent_total", topic="notifyd.status") == 3
    assert value(m, "notifyd_faust_events_total") == 11
    assert value(m, "notifyd_faust_rebalances_total") == 2
    assert value(m, "notifyd_faust_events_active") == 1
    await m.close()
    assert offsets.stopped


async def test_dlq_failure_keeps_values_and_reconnects(offsets: FakeOffsetsConsumer) -> None:
    m = reading(offsets)
    await m.refresh(fake_app(), dlq_topics=DLQS, bootstrap=["127.0.0.1:9092"])
    m.dlq_ttl_s = 0.0

    async def broken(tps: list[Any]) -> dict[Any, int]:
        raise OSError("broker gone")

    offsets.end_offsets = broken  # type: ignore[method-assign]
    await m.refresh(fake_app(), dlq_topics=DLQS, bootstrap=["127.0.0.1:9092"])
    assert offsets.stopped  # dropped; a new client is started next time
    assert value(m, "notifyd_dlq_messages", topic="notifyd.events.dlq") == 6


async def test_refresh_is_cached_and_survives_failures() -> None:
    m = Metrics()
    app = fake_app()
    await m.refresh(app)
    await m.refresh(app)
    assert app.consumer.calls == 1  # within LAG_TTL_S: not read again
    m.lag_ttl_s = 0.0

    def broken() -> set[TP]:
        raise RuntimeError("consumer not started")

    app.consumer.assignment = broken  # type: ignore[method-assign]
    await m.refresh(app)  # keeps the last values, does not raise
    assert value(m, "notifyd_consumer_lag", topic="notifyd.events", partition="0") == 5


async def test_no_app_bound_renders_empty_gauges() -> None:
    m = Metrics()
    await m.refresh()
    text = m.render().decode()
    assert "notifyd_consumer_lag_total 0.0" in text
    assert "notifyd_faust_events" not in text


async def test_metrics_route_serves_prometheus_text(offsets: FakeOffsetsConsumer) -> None:
    from notifyd.config import Settings
    from notifyd.web.api.state import make_handlers

    m = reading(offsets)
    m.event_received("notifyd.events")
    webapp = web.Application()
    settings = Settings(broker_url="kafka://127.0.0.1:9092")
    webapp.add_routes(make_handlers(fake_app(), settings, m))  # type: ignore[arg-type]
    async with TestClient(TestServer(webapp)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        text = await resp.text()
    assert 'notifyd_events_received_total{topic="notifyd.events"} 1.0' in text
    assert 'notifyd_consumer_lag{partition="0",topic="notifyd.events"} 5.0' in text
    assert "notifyd_dlq_messages{" in text


def test_metrics_route_is_documented_and_public() -> None:
    from notifyd.web.api import v1 as api
    from notifyd.web.auth.setup import PUBLIC_PATHS

    op = api.openapi_document()["paths"]["/metrics"]["get"]
    assert op["x-notifyd-auth"] == "public"
    assert "text/plain; version=0.0.4" in op["responses"]["200"]["content"]
    assert "/metrics" in PUBLIC_PATHS


def test_hot_path_counts_are_seen_by_every_reader() -> None:
    """Counts kept aside by the hot path reach a scrape, ``get_sample_value`` and a
    metric's own ``collect()`` after ``flush()`` (the console's reader)."""
    m = Metrics()
    m.event_received("notifyd.events")
    m.event_received("notifyd.events")
    m.delivery_queued("webhook", "lane")
    assert m.registry.get_sample_value(
        "notifyd_events_received_total", {"topic": "notifyd.events"}
    ) == 2
    m.status_updates([{"channel": "sms", "status": "sent"}])
    assert value(m, "notifyd_deliveries_total", channel="sms", status="sent") == 1
    assert value(m, "notifyd_deliveries_queued_total", channel="webhook", route="lane") == 1
    m.delivery_sent(delivery("push", accepted_at=time.time()))
    m.flush()
    got = {s.labels.get("channel"): s.value
           for fam in m.delivery_latency.collect() for s in fam.samples
           if s.name.endswith("_count")}
    assert got == {"push": 1}


def test_pending_observations_are_bounded() -> None:
    """A worker nobody scrapes does not keep every observation."""
    from notifyd.metrics import PENDING_OBSERVATIONS

    m = Metrics()
    for _ in range(PENDING_OBSERVATIONS + 10):
        m.delivery_sent(delivery("push", accepted_at=time.time()))
    assert len(m._pending.observed) < PENDING_OBSERVATIONS
    assert value(m, "notifyd_delivery_latency_seconds_count", channel="push") == (
        PENDING_OBSERVATIONS + 10
    )
