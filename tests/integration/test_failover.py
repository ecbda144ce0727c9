"""Issue 18: a provider of choice per channel, and failover, on the real stack.

One worker on Apache Kafka whose SMS channel is ``flaky`` (an Apprise ``json://``
service pointing at a local HTTP server that answers 500) then ``http`` (notifyd's HTTP
format, the sandbox).  SMS deliveries fail over to the sandbox with the same
idempotency key; after ``NOTIFYD_CIRCUIT_FAILURES`` failures the first provider's
circuit is open (console endpoint and Prometheus metrics) and it is not called again;
once the server answers 200, the first delivery after the cool-down probes it and the
circuit closes.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifyd.model.records import notification_id_for
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import LoopThread, Sinks, Stack, http_json, new_id, wait_for
from tests.support.http_target import HttpTarget
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

FAILURES = 2
#: Long enough for the steps between opening and the probe, short enough to wait out.
COOLDOWN_S = 15


class FlakyService:
    """A local HTTP server (its own loop thread) that refuses every request with 500."""

    def __init__(self) -> None:
        self.lt = LoopThread()
        self.target = self.lt.call(HttpTarget(status=500).start())

    def answer(self, status: int) -> None:
        async def set_status() -> None:
            self.target.status = status

        self.lt.call(set_status())

    def requests(self) -> list[dict[str, Any]]:
        async def get() -> list[dict[str, Any]]:
            return list(self.target.requests)

        return self.lt.call(get())

    def close(self) -> None:
        self.lt.call(self.target.close())
        self.lt.close()


@pytest.fixture(scope="module")
def flaky() -> Iterator[FlakyService]:
    svc = FlakyService()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def failover_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, flaky: FlakyService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    providers = (f"flaky=json://127.0.0.1:{flaky.target.port}/v1/sms?:to={{phone}}"
                 "&:user={user_id} http")
    st = start_stack(
        kafka.url, kafka.bootstrap, tmp_path_factory.mktemp("failover"), "failover", sinks,
        {"NOTIFYD_SMS_PROVIDERS": providers,
         "NOTIFYD_CIRCUIT_FAILURES": str(FAILURES),
         "NOTIFYD_CIRCUIT_COOLDOWN_S": str(COOLDOWN_S)},
        redis_url=redis.url,
    )
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()


async def _send_sms(st: Stack, user: str, phone: str) -> tuple[str, dict[str, Any]]:
    eid = new_id("fo")
    # critical: not throttled (the probe step sends one user a few dozen SMS).
    await st.send_events({"event_id": eid, "user_id": user, "title": "Order",
                          "body": f"shipped {eid}", "channels": ["sms"],
                          "priority": "critical"})
    nid = notification_id_for(user, eid)
    doc = await wait_for(
        lambda: (d := st.worker.table("status", nid)) and
        d["channels"]["sms"]["status"] in ("sent", "failed", "dead") and d,
        timeout=60, what=f"sms outcome of {nid}",
    )
    return nid, doc["channels"]["sms"]


async def test_sms_fails_over_circuit_opens_then_probe_closes_it(
    failover_stack: Stack, flaky: FlakyService
) -> None:
    st = failover_stack
    user, phone = new_id("fo-user"), "+15550007001"
    await st.set_preferences(user, {"phone": phone})

    # 1. The first provider fails (500), the sandbox delivers: same idempotency key.
    nid, sms = await _send_sms(st, user, phone)
    assert sms["status"] == "sent" and sms["provider"] == "http", sms
    assert sms["attempts"] == 1  # failover within one attempt, no retry round
    key = f"{nid}:sms"
    [tried] = [r for r in flaky.requests() if r["headers"].get("idempotency-key") == key]
    assert tried["method"] == "POST" and tried["path"] == "/v1/sms"
    body = json.loads(tried["body"])
    assert body["to"] == phone and body["user"] == user  # substituted per recipient
    [delivered] = [d for d in st.sinks.deliveries("sms") if d["idempotency_key"] == key]
    assert delivered["payload"]["to"] == phone

    # 2. A second failure opens the circuit (NOTIFYD_CIRCUIT_FAILURES=2).
    await _send_sms(st, user, phone)
    assert len(flaky.requests()) == FAILURES
    code, health = http_json("GET", f"{st.worker.url}/api/v1/admin/providers",
                             headers=st.worker.op_headers)
    assert code == 200, health
    assert health["configured"]["sms"] == ["flaky", "http"]
    assert health["configured"]["email"] == ["smtp"]
    rows = {r["provider"]: r for r in health["providers"] if r["channel"] == "sms"}
    assert rows["flaky"]["state"] == "open", rows
    assert rows["flaky"]["consecutive_failures"] == FAILURES
    assert rows["flaky"]["attempts"] == rows["flaky"]["failures"] == FAILURES
    assert rows["flaky"]["last_error"] == "apprise_failed: json://\u2026 failed for 1 of 1 target"
    assert rows["http"]["state"] == "closed" and rows["http"]["attempts"] == FAILURES
    assert health["workers"] == [{"worker": rows["flaky"]["worker"]}]
    code, _ = http_json("GET", f"{st.worker.url}/api/v1/admin/providers")
    assert code == 401  # operators only

    # 3. Open: the next delivery goes straight to the sandbox, the first is not called.
    _, sms3 = await _send_sms(st, user, phone)
    assert sms3["status"] == "sent" and sms3["provider"] == "http"
    assert len(flaky.requests()) == FAILURES

    with urllib.request.urlopen(f"{st.worker.url}/metrics") as resp:
        samples = [s for fam in text_string_to_metric_families(resp.read().decode())
                   for s in fam.samples]

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in samples
                 if s.name == f"notifyd_{name}" and s.labels == labels]
        assert len(found) == 1, f"{name}{labels} not in /metrics"
        return float(found[0])

    assert value("provider_circuit_state", channel="sms", provider="flaky") == 2
    assert value("provider_circuit_state", channel="sms", provider="http") == 0
    assert value("provider_attempts_total", channel="sms", provider="flaky") == FAILURES
    assert value("provider_failures_total", channel="sms", provider="flaky",
                 kind="retriable") == FAILURES
    assert value("provider_skipped_total", channel="sms", provider="flaky") == 1
    assert value("provider_attempts_total", channel="sms", provider="http") == 3

    # 4. The service recovers: after the cool-down one delivery probes it, succeeds, and
    #    the circuit closes (deliveries before that keep going to the sandbox).
    flaky.answer(200)
    deadline = time.monotonic() + COOLDOWN_S + 45
    while True:
        nid5, sms5 = await _send_sms(st, user, phone)
        assert sms5["status"] == "sent"
        if sms5["provider"] == "flaky":
            break
        assert time.monotonic() < deadline, "no probe of the recovered provider"
    [probe] = [r for r in flaky.requests() if r["headers"].get("idempotency-key") == f"{nid5}:sms"]
    assert json.loads(probe["body"])["to"] == phone
    code, health = http_json("GET", f"{st.worker.url}/api/v1/admin/providers?scope=local",
                             headers=st.worker.op_headers)
    rows = {r["provider"]: r for r in health["providers"] if r["channel"] == "sms"}
    assert rows["flaky"]["state"] == "closed" and rows["flaky"]["consecutive_failures"] == 0
