"""GET /metrics on a real worker (Apache Kafka + Redis): counters move as events flow,
lag gauges exist per consumed partition, the DLQ and table gauges see the data; push
deliveries reach an Apprise ``json://`` target served by the test."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifyd.model.records import notification_id_for
from tests.support.harness import Stack, new_id, wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    with urllib.request.urlopen(f"{stack.worker.url}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


class AppriseTarget:
    """What an Apprise ``json://`` URL posts to: a plain HTTP server in a thread."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                target.received.append({
                    "path": self.path,
                    "idempotency_key": self.headers.get("Idempotency-Key"),
                    "body": json.loads(self.rfile.read(n) or b"{}"),
                })
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def apprise_target() -> Iterator[AppriseTarget]:
    t = AppriseTarget()
    yield t
    t.close()


async def test_metrics_move_with_traffic(stack: Stack, apprise_target: AppriseTarget) -> None:
    names = stack.names

    def lag_gauges() -> Samples | None:
        # One per partition the worker consumes (4 per topic here), once the consumer
        # has fetched from it (the highwater comes with a fetch response).
        samples = scrape(stack)
        lag = series(samples, "notifyd_consumer_lag")
        wanted = {names.events, names.deliver("push"), names.status}
        if not {s["topic"] for s in lag} >= wanted:
            return None
        if {s["partition"] for s in lag if s["topic"] == names.events} != {"0", "1", "2", "3"}:
            return None
        return samples

    before = await wait_for(lag_gauges, timeout=30, interval=0.5, what="lag gauges")
    assert ("notifyd_consumer_lag_total", ()) in before

    user = new_id("u-metrics")
    await stack.set_preferences(
        user, {"email": f"{user}@example.com", "apprise_urls": [apprise_target.url(user)]}
    )
    eid = new_id("evt")
    await stack.send_events(
        {"event_id": eid, "user_id": user, "title": "Metrics", "body": "count me",
         "channels": ["email", "push", "sms"]}
    )
    await stack.produce(names.events, [(user.encode(), b"{not json")])
    nid = notification_id_for(user, eid)

    def delivered() -> bool:
        doc = stack.worker.table("status", nid)
        chans = (doc or {}).get("channels", {})
        return all(chans.get(ch, {}).get("status") == "sent" for ch in ("email", "push"))

    await wait_for(delivered, what="email and push sent")

    # The push channel delivered through Apprise to the user's json:// URL.
    [hook] = [r for r in apprise_target.received if r["path"] == f"/{user}"]
    assert hook["body"]["title"] == "Metrics" and hook["body"]["message"] == "count me"
    assert hook["idempotency_key"] == f"{nid}:push"

    def moved() -> Samples | None:
        after = scrape(stack)
        d = {
            "received": get(after, "notifyd_events_received_total", topic=names.events)
            - get(before, "notifyd_events_received_total", topic=names.events),
            "accepted": get(after, "notifyd_events_accepted_total")
            - get(before, "notifyd_events_accepted_total"),
            "dead": get(after, "notifyd_events_dead_lettered_total", reason="invalid_json")
            - get(before, "notifyd_events_dead_lettered_total", reason="invalid_json"),
            "push_sent": get(after, "notifyd_deliveries_total", channel="push", status="sent")
            - get(before, "notifyd_deliveries_total", channel="push", status="sent"),
            "sms_suppressed": get(
                after, "notifyd_deliveries_total", channel="sms", status="suppressed"
            ) - get(before, "notifyd_deliveries_total", channel="sms", status="suppressed"),
            "push_latency": get(after, "notifyd_delivery_latency_seconds_count", channel="push")
            - get(before, "notifyd_delivery_latency_seconds_count", channel="push"),
            "dlq": get(after, "notifyd_dlq_messages", topic=names.events_dlq),
        }
        ok = (d["received"] >= 2 and d["accepted"] >= 1 and d["dead"] >= 1
              and d["push_sent"] >= 1 and d["sms_suppressed"] >= 1
              and d["push_latency"] >= 1 and d["dlq"] >= 1
              # the partition just processed was committed: its commit lag is known
              and bool(series(after, "notifyd_consumer_commit_lag")))
        return after if ok else None

    after = await wait_for(moved, timeout=40, interval=1, what="metrics to move")
    assert get(after, "notifyd_table_keys", table="preferences") >= 1
    assert get(after, "notifyd_table_keys", table="status") >= 1
    assert get(after, "notifyd_delivery_attempts_total", channel="push") >= 1
    # Faust's own monitor is exposed too.
    assert get(after, "notifyd_faust_messages_received_total", topic=names.events) >= 2
    assert get(after, "notifyd_faust_events_total") > 0
    # Latency is end to end and plausible (seconds, not milliseconds or epochs).
    total = get(after, "notifyd_delivery_latency_seconds_sum", channel="push")
    count = get(after, "notifyd_delivery_latency_seconds_count", channel="push")
    assert 0 < total / count < 60


async def test_metrics_is_public_and_documented(stack: Stack) -> None:
    status, doc = stack.worker.get("/api/v1/openapi.json")
    assert status == 200
    assert doc["paths"]["/metrics"]["get"]["x-notifyd-auth"] == "public"
    samples = scrape(stack)  # no Authorization header needed
    assert ("notifyd_consumer_lag_total", ()) in samples
