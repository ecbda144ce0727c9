"""``notifyd bench`` phases sink, http and quix (issue #15): bodies, ratios, the table,
the sink's per-channel counting and the capacity client against it (loopback, no broker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notifyd.tools.bench.bodies import (
    PUSH_PATH,
    WEBHOOK_PATH,
    bench_prefs,
    capacity_request,
    capacity_split,
    event_doc,
    idempotency_key,
    push_body,
    webhook_body,
)
from notifyd.tools.bench.stats import (
    HTTP_TARGETS,
    compute_ratios,
    delivery_figures,
    format_summary,
    http_ratios,
    missing_sections,
)

EVENT = event_doc("run-a", 7, "u3", ("webhook", "push"), t0=123.0)


def _delivery(channel: str, tokens: list[str] | None = None) -> Any:
    from notifyd.model.delivery import Delivery

    return Delivery(
        notification_id=f"n-{EVENT['event_id']}",
        event_id=EVENT["event_id"],
        user_id=EVENT["user_id"],
        channel=channel,
        title=EVENT["title"],
        body=EVENT["body"],
        category=EVENT["category"],
        address="http://127.0.0.1:1/hook/webhook",
        tokens=tokens or [],
        data=EVENT["data"],
    )


def test_webhook_body_is_notifyds_webhook_payload() -> None:
    from notifyd.providers.webhook import webhook_payload

    assert webhook_body(EVENT) == webhook_payload(_delivery("webhook"))
    assert webhook_body(EVENT)["data"] == {"run": "run-a", "seq": 7, "t0": 123.0}


async def test_push_body_is_what_the_push_provider_posts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import orjson

    from notifyd.config import Settings
    from notifyd.providers import httpapi

    posted: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    async def fake_post(
        session: Any, url: str, body: bytes, headers: dict[str, str], **kw: Any
    ) -> dict[str, Any]:
        posted.append((url, orjson.loads(body), headers))
        return {"id": "1"}

    monkeypatch.setattr(httpapi, "post_json", fake_post)
    provider = httpapi.PushProvider(Settings(push_api_url="http://sink/hook/push"))
    provider._session = object()  # type: ignore[assignment]  # never used: post_json is fake
    delivery = _delivery("push", ["device-u3"])
    await provider.send(delivery)
    url, body, headers = posted[0]
    assert url == "http://sink/hook/push"
    assert body == push_body(EVENT, ["device-u3"])
    assert headers["Idempotency-Key"] == idempotency_key(EVENT, "push")
    assert delivery.idempotency_key == idempotency_key(EVENT, "push")


def test_bench_prefs_are_valid_preferences_with_both_channels() -> None:
    from notifyd.domain.rules import _address
    from notifyd.model.preferences import validate_preferences

    fields = bench_prefs("u3", "http://127.0.0.1:9")
    assert validate_preferences("u3", fields)["push_tokens"] == ["device-u3"]
    assert fields["webhook_url"] == "http://127.0.0.1:9" + WEBHOOK_PATH
    assert _address("push", fields) == ("push", ["device-u3"])


def test_capacity_requests_alternate_webhook_and_push_per_event() -> None:
    reqs = [capacity_request("cap", i) for i in range(5)]
    assert [p for p, _ in reqs] == [WEBHOOK_PATH, PUSH_PATH] * 2 + [WEBHOOK_PATH]
    assert [b["data"]["seq"] for _, b in reqs] == [0, 0, 1, 1, 2]
    assert all(b["data"]["run"] == "cap" for _, b in reqs)
    assert reqs[1][1]["tokens"] == ["device-u0"]
    assert capacity_split(5) == {"webhook": 3, "push": 2}
    assert capacity_split(4) == {"webhook": 2, "push": 2}


def test_delivery_figures() -> None:
    f = delivery_figures(100, {"webhook": (100, 0), "push": (98, 3)}, 2.0)
    assert f["deliveries_expected"] == 200 and f["deliveries"] == 198
    assert f["lost"] == 2 and f["duplicates"] == 3
    assert f["deliveries_per_s"] == 99.0
    assert f["per_channel"]["push"] == {"received": 98, "duplicates": 3}
    assert delivery_figures(1, {"webhook": (0, 0)}, 0.0)["deliveries_per_s"] is None


SINK = {"requests_per_s": 10_000.0, "concurrency": 128, "requests": 20_000, "ok": 20_000,
        "lost": 0, "duplicates": 0, "sink_cpu_us_per_request": 90.0}
HTTP = {"users": 1000, "events": 20_000, "deliveries": 40_000, "deliveries_per_s": 5_000.0,
        "lost": 0, "duplicates": 0, "worker_cpu_us_per_event": 300.0}
QUIX = {"version": "3.28.1", "events": 20_000, "deliveries": 40_000,
        "deliveries_per_s": 1_000.0, "lost": 0, "duplicates": 0}


def test_http_ratios_and_targets() -> None:
    r = http_ratios(SINK, HTTP, QUIX)
    assert r["vs_quix"] == 5.0 and r["vs_sink"] == 0.5
    assert r["targets"] == HTTP_TARGETS
    assert r["met"] == {"vs_quix": True, "vs_sink": True}
    low = http_ratios(SINK, {"deliveries_per_s": 3_000.0}, QUIX)
    assert low["met"] == {"vs_quix": False, "vs_sink": False}
    none = http_ratios({"skipped": True}, HTTP, {})
    assert none["vs_quix"] is None and none["met"]["vs_sink"] is None
    assert compute_ratios({}, {}, SINK, HTTP, QUIX)["http"]["vs_quix"] == 5.0
    assert compute_ratios({}, {})["http"]["vs_sink"] is None


def _result(**sections: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"machine": {}, "broker": {}, "floor": {}, "notifyd": {}}
    res.update(sections)
    res["ratios"] = compute_ratios({}, {}, res.get("sink"), res.get("http"), res.get("quix"))
    return res


def test_format_summary_shows_the_http_phases_and_ratios() -> None:
    text = format_summary(_result(sink=SINK, http=HTTP, quix=QUIX))
    assert "sink capacity" in text and "10,000.0" in text
    assert "5,000.0" in text and "1,000.0" in text and "Quix Streams 3.28.1" in text
    assert "notifyd ÷ Quix Streams deliveries/s: 5.00 (target ≥ 4: met)" in text
    assert "notifyd ÷ sink capacity: 0.500 (target ≥ 0.4: met)" in text
    skipped = format_summary(
        _result(sink=SINK, http=HTTP, quix={"skipped": True, "error": "no wheel"})
    )
    assert "skipped: no wheel" in skipped and "n/a" in skipped
    assert "sink capacity" not in format_summary(_result(sink={"skipped": True}))


def test_missing_sections_checks_the_http_figures() -> None:
    res = _result(sink={"requests": 1}, http={"skipped": True}, quix=QUIX)
    missing = missing_sections(res)
    assert "sink.requests_per_s" in missing
    assert not any(m.startswith(("http.", "quix.")) for m in missing)


def test_cli_flags_reach_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import notifyd.tools.bench.run as bench_mod
    from notifyd.cli.commands import main
    from notifyd.tools.bench.run import BenchOptions

    seen: list[BenchOptions] = []
    monkeypatch.setattr(bench_mod, "run_bench", seen.append)
    args = ["bench", "--quick", "--skip-sink", "--skip-quix", "--http-events", "300",
            "--http-users", "30", "--sink-concurrency", "64"]
    ok = CliRunner().invoke(main, args)
    assert ok.exit_code == 0, ok.output
    o = seen[0]
    assert o.skip_sink and o.skip_quix and not o.skip_http
    assert (o.http_events, o.http_users, o.sink_concurrency) == (300, 30, 64)
    assert o.sink_requests == BenchOptions.quick_defaults()["sink_requests"]
    assert BenchOptions().http_events == 20_000 and BenchOptions().http_users == 1_000
    json.dumps(o.to_json())


async def test_capacity_client_against_the_sink_counts_each_channel_once() -> None:
    from notifyd.tools.bench.load import Collector
    from notifyd.tools.bench.sink import Sink
    from notifyd.tools.bench.sinkload import load

    collector = Collector()
    split = capacity_split(41)
    hook = collector.expect("sink.webhook", "cap", split["webhook"])
    push = collector.expect("sink.push", "cap", split["push"])
    sink = Sink(collector)
    await sink.start()
    try:
        out = await load(sink.url, 41, 8, "cap", warmup=6)
    finally:
        await sink.stop()
    assert out["ok"] == 41 and out["errors"] == 0 and out["requests_per_s"]
    # Webhook and push of one event carry the same run/seq: one receipt each, no duplicate.
    assert (hook.received, push.received) == (21, 20)
    assert hook.duplicates == push.duplicates == 0
    assert sink.requests == 47  # the warm-up is answered, not counted


def test_quix_peer_posts_a_signed_webhook_then_the_push() -> None:
    from notifyd.providers.webhook import verify
    from notifyd.tools.bench.quixpeer import make_deliver

    calls: list[tuple[str, dict[str, Any]]] = []

    class Answer:
        def raise_for_status(self) -> None:
            pass

    class Session:
        def post(self, url: str, **kw: Any) -> Answer:
            calls.append((url, kw))
            return Answer()

    sink = "http://127.0.0.1:9"
    prefs = {"u3": bench_prefs("u3", sink)}
    deliver = make_deliver(Session(), prefs, sink + PUSH_PATH, b"secret")
    deliver(dict(EVENT))
    deliver({**EVENT, "user_id": "nobody"})  # no preferences: nothing sent
    (hook_url, hook), (push_url, push) = calls
    assert hook_url == sink + WEBHOOK_PATH and push_url == sink + PUSH_PATH
    assert json.loads(hook["data"]) == webhook_body(EVENT)
    h = hook["headers"]
    assert verify(b"secret", h["X-Notifyd-Timestamp"], hook["data"], h["X-Notifyd-Signature"],
                  now=float(h["X-Notifyd-Timestamp"]))
    assert push["json"] == push_body(EVENT, ["device-u3"])
