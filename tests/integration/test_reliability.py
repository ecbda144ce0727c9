"""Issue 5: faults, crashes and bad input — nothing lost, nothing sent twice.

Figures printed by these tests (``-s``) are the ones quoted in the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from notifyd.model.records import notification_id_for
from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.crash_evidence import (
    Snapshot,
    consumer_warnings,
    explain_missing,
    requeued_keys,
    rescued_by_reconciler,
    snapshot,
)
from tests.support.harness import Sinks, Stack, header, http_json, new_id, wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def webhook_keys(sinks: Sinks) -> list[str]:
    return [d["idempotency_key"] for d in sinks.deliveries("webhook")]


def receipts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def put_webhook_users(stack: Stack, users: list[str]) -> None:
    await stack.produce(
        stack.names.preferences,
        [
            (u.encode(), orjson.dumps({"op": "put", "user_id": u,
                                       "fields": {"webhook_url": stack.sinks.webhook_url(u)}}))
            for u in users
        ],
    )
    for u in users:
        await wait_for(lambda u=u: stack.workers[0].table("preferences", u), timeout=90,
                       what=f"prefs {u}")


def stop_stack(st: Stack) -> None:
    for w in st.workers:
        w.stop()


# --------------------------------------------------------------------------------------
# Crash test: two workers, 20,000 events, one worker SIGKILLed and restarted 3 times.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crash_stack(
    kafka: KafkaBroker, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("crash")
    sinks = Sinks(ledger_path=root / "receipts.jsonl")
    st = start_stack(
        kafka.url, kafka.bootstrap, root, "crash", sinks,
        {"NOTIFYD_BROKER_SESSION_TIMEOUT_S": "8", "NOTIFYD_THROTTLE_LIMIT": "0",
         # INFO: the evidence a failure reports (offset bookkeeping, re-queued keys).
         # The reconciler waits longer than any backlog of this test lasts (~2 minutes):
         # what it re-queues and the provider only sees after that was lost.
         "NOTIFYD_LOG_LEVEL": "INFO", "NOTIFYD_REQUEUE_AFTER_S": "180"},
        workers=2, redis_url=redis.url,
    )
    yield st
    stop_stack(st)
    sinks.close()


async def test_crash_sigkill_loses_nothing_and_sends_nothing_twice(
    crash_stack: Stack, tmp_path: Path
) -> None:
    st = crash_stack
    n_events = int(os.environ.get("NOTIFYD_CRASH_EVENTS", "20000"))
    users = [new_id("cu") for _ in range(64)]
    await put_webhook_users(st, users)
    events = [
        {"event_id": new_id("ce"), "user_id": users[i % len(users)], "title": f"n{i}",
         "body": "crash test", "channels": ["webhook"]}
        for i in range(n_events)
    ]
    expected = {f"{notification_id_for(e['user_id'], e['event_id'])}:webhook" for e in events}
    # Four bursts; the victim is killed in the middle of each of the first three, as soon
    # as the sink has seen some of that burst (and before it has seen all of it).
    bursts = [events[k * n_events // 4:(k + 1) * n_events // 4] for k in range(4)]
    started = time.monotonic()
    victim = st.workers[1]
    producing: list[asyncio.Task[None]] = []
    at_kill: list[tuple[int, int]] = []  # (delivered, outstanding) at each SIGKILL
    # Committed offsets of the group (and end offsets) right before each SIGKILL: evidence
    # for the failure message.
    group = st.workers[0].app_id
    watched = [st.names.events, st.names.deliver("webhook"), st.names.status]
    snapshots: list[Snapshot] = []
    by_nid = {notification_id_for(e["user_id"], e["event_id"]): e for e in events}
    logs = [w.log_path for w in st.workers]

    async def evidence(keys: list[str]) -> str:
        try:
            return await explain_missing(st.bootstrap, group, st.names.prefix, keys, by_nid,
                                         snapshots, logs)
        except Exception as exc:  # the report must not hide the failure it explains
            return f"(evidence unavailable: {type(exc).__name__}: {exc})"

    def delivered(keys: set[str]) -> int:
        return len(keys & set(webhook_keys(st.sinks)))

    for k in range(3):
        if k:
            # Back, with partitions of its own, before the next burst: the kill hits a
            # worker that is delivering, not one still starting.
            await victim.wait_ready_async(180)
        burst = {f"{notification_id_for(e['user_id'], e['event_id'])}:webhook" for e in bursts[k]}
        producing.append(asyncio.create_task(st.send_events(*bursts[k])))
        some = max(1, len(burst) // 20)
        await wait_for(lambda burst=burst, some=some: delivered(burst) >= some,
                       timeout=120, interval=0.05, what=f"deliveries of burst {k} under way")
        snapshots.append(await snapshot(st.bootstrap, group, watched, f"kill {k + 1}"))
        done_before = delivered(expected)
        victim.kill()  # SIGKILL: no commit, no flush, no goodbye (returns once it is gone)
        done_after, burst_after = delivered(expected), delivered(burst)
        # Deliveries only grow: done before the kill, outstanding after it => in flight.
        assert done_before > 0, "killed before anything was delivered"
        assert burst_after < len(burst), f"burst {k} was complete before the kill"
        at_kill.append((done_before, n_events - done_after))
        victim.start(wait=False)
    producing.append(asyncio.create_task(st.send_events(*bursts[3])))
    await asyncio.gather(*producing)
    kills = len(at_kill)
    try:
        await wait_for(
            lambda: expected <= set(webhook_keys(st.sinks)), timeout=420, interval=1,
            what=f"{n_events} webhooks delivered",
        )
    except AssertionError as exc:
        # Say what became of the missing ones (their status documents) before failing.
        missing = sorted(expected - set(webhook_keys(st.sinks)))
        docs = {k: st.workers[0].table("status", k.rsplit(":", 1)[0]) for k in missing[:5]}
        raise AssertionError(f"{exc}; {len(missing)} missing, kills at {at_kill}; "
                             f"status of the first: {docs}\n{await evidence(missing)}") from None
    elapsed = time.monotonic() - started
    keys = webhook_keys(st.sinks)
    dup_deliveries = [k for k, c in Counter(keys).items() if c > 1]
    raw = [r for r in receipts(st.sinks.sandbox.state.ledger_path) if r["kind"] == "webhook"]
    accepted = Counter(r["idempotency_key"] for r in raw if r.get("status") == 201)
    repeats = sum(1 for r in raw if r.get("duplicate"))
    requeued = sum(w.log_path.read_text(errors="replace").count('"reconcile.requeued"')
                   for w in st.workers)
    requeued_ids = requeued_keys(logs)
    # A re-queue of a delivery that was made (its outcome not folded yet) is harmless; one
    # the provider first saw *after* the re-queue was lost, and only the safety net found it.
    rescued = rescued_by_reconciler(requeued_ids, raw)
    if rescued:
        print(f"\nRESCUED by the reconciler: {len(rescued)}\n{await evidence(rescued)}")
    print("\n" + "\n".join(consumer_warnings(logs)))
    refetched = sum(w.log_path.read_text(errors="replace").count(
        '"consumer.refetched_below_read_offset"') for w in st.workers)
    print(
        f"\nCRASH TEST: {n_events} events, 2 workers, {kills} SIGKILLs: delivered "
        f"{len(set(keys) & expected)}/{n_events}, duplicate deliveries {len(dup_deliveries)}, "
        f"re-sent requests absorbed by idempotency keys {repeats}, "
        f"reconciler re-queue rounds {requeued} ({len(requeued_ids)} deliveries, "
        f"{len(rescued)} of them lost until then), re-fetches Faust would have dropped "
        f"{refetched}, {elapsed:.0f}s; "
        f"(delivered, outstanding) at each kill: {at_kill}"
    )
    assert set(keys) == expected
    assert dup_deliveries == []
    assert all(c == 1 for c in accepted.values())
    assert rescued == [], f"{len(rescued)} deliveries were lost until the reconciler re-queued them"


# --------------------------------------------------------------------------------------
# Broker restart: Kafka stopped and restarted on the same data dir mid-run.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restart_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-restart"))
    broker.start()
    asyncio.run(broker.wait_ready(120))
    yield broker
    broker.stop()


async def _produce_resilient(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]],
                             pace_s: float, failures: list[str] | None = None) -> None:
    """A producer that keeps retrying through a broker outage (as a real service would);
    each failed attempt is appended to ``failures``."""
    i = 0
    while i < len(values):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    request_timeout_ms=5000, retry_backoff_ms=200)
        try:
            await producer.start()
            while i < len(values):
                k, v = values[i]
                await producer.send_and_wait(topic, v, key=k)
                i += 1
                await asyncio.sleep(pace_s)  # pacing: a steady trickle, not a burst
        except Exception as exc:
            if failures is not None:
                failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)  # back-off before reconnecting, as a client would
        finally:
            await producer.stop()


async def test_broker_restart_loses_nothing(
    restart_broker: KafkaBroker, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("restart")
    sinks = Sinks()
    st = start_stack(
        restart_broker.url, restart_broker.bootstrap, root, "restart", sinks,
        {"NOTIFYD_THROTTLE_LIMIT": "0"}, redis_url=redis.url,
    )
    try:
        users = [new_id("ru") for _ in range(8)]
        await put_webhook_users(st, users)
        events = [
            {"event_id": new_id("re"), "user_id": users[i % 8], "title": f"r{i}",
             "channels": ["webhook"]}
            for i in range(1500)
        ]
        expected = {f"{notification_id_for(e['user_id'], e['event_id'])}:webhook" for e in events}
        failures: list[str] = []
        produce = asyncio.create_task(_produce_resilient(
            restart_broker.bootstrap, st.names.events,
            [(e["user_id"].encode(), orjson.dumps(e)) for e in events], pace_s=0.004,
            failures=failures,
        ))

        def delivered() -> int:
            return len(expected & set(webhook_keys(sinks)))

        # Stop the broker mid-run: once deliveries are under way, before they are done.
        await wait_for(lambda: delivered() >= 20, timeout=120, interval=0.05,
                       what="deliveries under way")
        done_before = delivered()
        await asyncio.to_thread(restart_broker.stop)  # returns once the broker has exited
        outstanding = len(expected) - delivered()
        assert done_before > 0 and outstanding > 0, (done_before, outstanding)
        # Down until a client noticed: the producer's sends fail.
        await wait_for(lambda: failures, timeout=60, interval=0.1,
                       what="the producer noticing the outage")
        await asyncio.to_thread(restart_broker.start)
        await restart_broker.wait_ready(120)
        await produce
        await wait_for(lambda: expected <= set(webhook_keys(sinks)), timeout=240, interval=1,
                       what="all events delivered after the broker restart")
        keys = webhook_keys(sinks)
        print(f"\nBROKER RESTART: {len(expected)} events, delivered {len(set(keys) & expected)}, "
              f"duplicates {len(keys) - len(set(keys))}, worker alive: {st.worker.alive()}; "
              f"at the stop {done_before} delivered, {outstanding} outstanding; "
              f"producer failures during the outage {len(failures)}")
        assert set(keys) == expected
        assert len(keys) == len(set(keys))
    finally:
        stop_stack(st)
        sinks.close()


# --------------------------------------------------------------------------------------
# Provider faults: 30 % of calls fail and some are slow; dead letters can be re-driven.
# --------------------------------------------------------------------------------------


def control(sinks: Sinks, **changes: Any) -> None:
    code, _ = http_json("POST", f"{sinks.url}/v1/_control", changes)
    assert code == 200


async def test_provider_faults_end_sent_or_dead_and_other_channels_unaffected(
    stack: Stack,
) -> None:
    users = [new_id("pf") for _ in range(10)]
    for u in users:
        await stack.set_preferences(u, {"phone": "+15550001" + str(abs(hash(u)) % 1000).zfill(3)})
    events = [
        {"event_id": new_id("pfe"), "user_id": users[i % 10], "title": f"f{i}", "body": "x",
         "channels": ["sms", "inapp"], "priority": "critical"}
        for i in range(60)
    ]
    control(stack.sinks, fail_rate=0.3, latency_ms=30, jitter_ms=60)
    try:
        await stack.send_events(*events)
        nids = [notification_id_for(e["user_id"], e["event_id"]) for e in events]

        def all_final() -> list[dict[str, Any]] | None:
            docs = [stack.worker.table("status", n) for n in nids]
            if all(d and d["channels"]["sms"]["status"] in ("sent", "dead")
                   and d["channels"]["inapp"]["status"] == "sent" for d in docs):
                return docs  # type: ignore[return-value]
            return None

        docs = await wait_for(all_final, timeout=120, interval=1, what="all final")
    finally:
        control(stack.sinks, fail_rate=0.0, latency_ms=0, jitter_ms=0)
    sms = Counter(d["channels"]["sms"]["status"] for d in docs)
    retried = sum(1 for d in docs if d["channels"]["sms"]["attempts"] > 1)
    for d in docs:
        if d["channels"]["sms"]["status"] == "dead":
            assert d["channels"]["sms"]["reason"]
    inapp = sorted(d["channels"]["inapp"]["latency_ms"] for d in docs)
    sms_lat = sorted(d["channels"]["sms"].get("latency_ms", 0) for d in docs
                     if d["channels"]["sms"]["status"] == "sent")
    print(f"\nPROVIDER FAULTS (30% failing, 30-90 ms): sms {dict(sms)}, retried {retried}; "
          f"inapp p50 {inapp[len(inapp)//2]:.1f} ms max {inapp[-1]:.1f} ms; "
          f"sms p50 {sms_lat[len(sms_lat)//2] if sms_lat else 0:.1f} ms")
    assert sms["sent"] + sms["dead"] == len(events)
    assert retried > 0
    # The SMS provider's failures and latency never hold up in-app delivery.
    assert inapp[len(inapp) // 2] < (sms_lat[len(sms_lat) // 2] if sms_lat else 1e9)


async def test_dead_letter_redriven_after_fix(stack: Stack, tmp_path: Path) -> None:
    user = new_id("dead")
    await stack.set_preferences(user, {"phone": "+15550009999"})
    eid = new_id("evt")
    control(stack.sinks, fail_rate=1.0)
    try:
        await stack.send_events({"event_id": eid, "user_id": user, "title": "t", "body": "b",
                                 "channels": ["sms"]})
        nid = notification_id_for(user, eid)
        doc = await wait_for(
            lambda: (d := stack.worker.table("status", nid)) and
            d["channels"]["sms"]["status"] == "dead" and d,
            timeout=60, what="dead after retries",
        )
    finally:
        control(stack.sinks, fail_rate=0.0)
    assert doc["channels"]["sms"]["attempts"] == 3
    assert "503" in doc["channels"]["sms"]["reason"] or "unavailable" in doc["channels"]["sms"]["reason"]
    recs = await stack.read_topic(stack.names.deliveries_dlq,
                                  lambda rs: any(nid.encode() in r.value for r in rs))
    rec = next(r for r in recs if nid.encode() in r.value)
    assert header(rec, "notifyd-attempts") == "3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")}
    env.update(NOTIFYD_BROKER_URL=stack.worker.broker_url, NOTIFYD_TOPIC_PREFIX=stack.names.prefix)
    res = subprocess.run(
        [sys.executable, "-m", "notifyd", "dlq", "redrive", "--topic", "deliveries",
         "--notification-id", nid], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "re-drove 1 of" in res.stdout
    await wait_for(
        lambda: stack.worker.table("status", nid)["channels"]["sms"]["status"] == "sent",
        timeout=30, what="sent after re-drive",
    )
    # A second re-drive, through the operator API, does not send it again: the ledger
    # says sent.
    code, body = http_json(
        "POST", f"{stack.worker.url}/api/v1/admin/dlq/redrive",
        {"topic": "deliveries", "notification_ids": [nid]}, stack.worker.op_headers,
    )
    assert code == 200 and body["redriven"] == 1, body
    code, body = http_json("POST", f"{stack.worker.url}/api/v1/admin/dlq/redrive",
                           {"topic": "deliveries"}, stack.worker.op_headers)
    assert code == 422 and body["code"] == "missing_field"  # schema-valid, names nothing
    marker = new_id("evt")
    await stack.send_events({"event_id": marker, "user_id": user, "title": "m", "body": "m",
                             "channels": ["sms"]})
    await wait_for(
        lambda: (d := stack.worker.table("status", notification_id_for(user, marker))) and
        d["channels"]["sms"]["status"] == "sent", what="marker",
    )
    bodies = [d for d in stack.sinks.deliveries("sms") if d["payload"]["to"] == "+15550009999"]
    assert len(bodies) == 2  # the re-driven one once, and the marker


# --------------------------------------------------------------------------------------
# Degraded dependency: Redis down → auth answers 503, the pipeline keeps delivering.
# --------------------------------------------------------------------------------------


@pytest.fixture
def redisdown(
    kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, RedisServer]]:
    redis = RedisServer()
    redis.start()
    sinks = Sinks()
    st = start_stack(kafka.url, kafka.bootstrap, tmp_path_factory.mktemp("redisdown"),
                     "redisdown", sinks, redis_url=redis.url)
    yield st, redis
    stop_stack(st)
    sinks.close()
    redis.stop()


async def test_redis_down_auth_503_pipeline_delivers(
    redisdown: tuple[Stack, RedisServer],
) -> None:
    st, redis = redisdown
    user = new_id("rd")
    await put_webhook_users(st, [user])
    redis.stop()
    code, body = st.worker.get(f"/api/v1/admin/tables/inbox/{user}", st.worker.op_headers)
    assert code == 503 and body["code"] == "credential_store_unavailable", body
    eid = new_id("evt")
    await st.send_events({"event_id": eid, "user_id": user, "title": "still here",
                          "channels": ["webhook"]})
    key = f"{notification_id_for(user, eid)}:webhook"
    await wait_for(lambda: key in webhook_keys(st.sinks), what="delivery without Redis")
    code, body = st.worker.get("/healthz")
    assert code == 200


# --------------------------------------------------------------------------------------
# Fuzz: thousands of generated bad events between good ones.
# --------------------------------------------------------------------------------------

_int64 = st.integers(-(2**63), 2**63 - 1)  # what JSON producers can write
_json_scalar = st.one_of(st.none(), st.booleans(), _int64, st.floats(allow_nan=False),
                         st.text(max_size=20))
bad_event = st.one_of(
    st.binary(max_size=200).filter(lambda b: not b.strip().startswith(b"{")),
    st.builds(lambda v: orjson.dumps(v), st.lists(_json_scalar, max_size=5)),
    # required fields missing or mistyped
    st.builds(lambda eid, uid: orjson.dumps({"event_id": eid, "user_id": uid, "title": "t"}),
              st.one_of(st.none(), _int64, st.lists(_int64, max_size=2)),
              st.text(min_size=1, max_size=10)),
    st.builds(lambda uid: orjson.dumps({"event_id": "e", "user_id": uid, "title": "t"}),
              st.one_of(st.none(), _int64, st.just(""), st.booleans())),
    # unknown channels, bad priority, oversized values, data of the wrong type
    st.builds(lambda ch: orjson.dumps({"event_id": "e", "user_id": "u", "title": "t",
                                       "channels": [ch]}),
              st.text(max_size=10).filter(lambda c: c not in
                                          ("email", "sms", "push", "webhook", "inapp"))),
    st.builds(lambda p: orjson.dumps({"event_id": "e", "user_id": "u", "title": "t",
                                      "priority": p}),
              st.text(max_size=10).filter(lambda p: p not in ("low", "normal", "high", "critical"))),
    st.builds(lambda n: orjson.dumps({"event_id": "e", "user_id": "u", "body": "x" * n}),
              st.integers(20_001, 40_000)),
    st.builds(lambda d: orjson.dumps({"event_id": "e", "user_id": "u", "title": "t", "data": d}),
              st.one_of(st.lists(_int64, max_size=3), st.text(max_size=5), _int64)),
    st.just(b'{"event_id": "e", "user_id": "\xff\xfe", "title": "t"}'),
)


def test_fuzzed_bad_events_all_dead_lettered_good_ones_delivered(stack: Stack) -> None:
    # Hypothesis generates the events (40 examples of 50); the real stack then takes all
    # 2,000 in one run, interleaved with good ones.
    bad: list[bytes] = []

    @seed(20261125)
    @settings(max_examples=40, deadline=None, phases=[Phase.generate], database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(bad_event, min_size=50, max_size=50))
    def collect(batch: list[bytes]) -> None:
        bad.extend(batch)

    collect()
    assert len(bad) == 2000
    asyncio.run(_fuzz(stack, bad))


async def _fuzz(stack: Stack, bad: list[bytes]) -> None:
    pid = stack.worker.proc.pid if stack.worker.proc else None
    user = new_id("fz")
    await put_webhook_users(stack, [user])
    tag = new_id("fuzz")
    values: list[tuple[bytes | None, bytes]] = []
    good_keys: set[str] = set()
    bad_keys: set[bytes] = set()
    for i, raw in enumerate(bad):
        if i % 10 == 0:
            eid = f"{tag}-good-{i}"
            good_keys.add(f"{notification_id_for(user, eid)}:webhook")
            values.append((user.encode(), orjson.dumps(
                {"event_id": eid, "user_id": user, "title": "good", "channels": ["webhook"],
                 "priority": "critical"})))  # critical: this worker's throttle is 4/hour
        key = f"{tag}-bad-{i}".encode()
        bad_keys.add(key)
        values.append((key, raw))
    await stack.produce(stack.names.events, values)
    await wait_for(lambda: good_keys <= set(webhook_keys(stack.sinks)), timeout=120,
                   what="good events delivered")
    recs = await stack.read_topic(stack.names.events_dlq,
                                  lambda rs: bad_keys <= {r.key for r in rs}, timeout=60)
    dead = {r.key: header(r, "notifyd-reason") for r in recs if r.key in bad_keys}
    print(f"\nFUZZ: {len(bad)} generated bad events → {len(dead)} in the DLQ with reasons; "
          f"{len(good_keys)} good ones delivered; reasons: "
          f"{dict(Counter((v or '').split(':')[0] for v in dead.values()))}")
    assert set(dead) == bad_keys
    assert all(dead.values())
    assert stack.worker.alive() and stack.worker.proc is not None and stack.worker.proc.pid == pid



# --------------------------------------------------------------------------------------
# Security: secrets never reach the logs; brute force is throttled.
# --------------------------------------------------------------------------------------


async def test_passwords_and_tokens_never_logged_and_brute_force_throttled(stack: Stack) -> None:
    w = stack.worker
    username, password = new_id("sec").replace("-", "_"), "Sup3r-secret-passw0rd!"
    code, _ = http_json("POST", f"{w.url}/api/v1/users",
                        {"username": username, "password": password,
                         "email": f"{username}@example.com"})
    assert code == 201
    code, tok = http_json("POST", f"{w.url}/api/v1/auth/token",
                          {"username": username, "password": password})
    assert code == 200
    token = tok["access_token"]
    code, _ = http_json("GET", f"{w.url}/api/v1/preferences",
                        headers={"Authorization": f"Bearer {token}"})
    assert code == 200
    # Brute force: wrong passwords are refused, then throttled with 429 + Retry-After.
    codes = []
    for _ in range(12):
        code, body = http_json("POST", f"{w.url}/api/v1/auth/token",
                               {"username": username, "password": "wrong-password"})
        codes.append(code)
    assert codes[0] == 401 and codes[-1] == 429, codes
    assert body["code"] == "login_throttled"
    log = w.log_path.read_text(errors="replace")
    assert password not in log
    assert token not in log
    assert tok["refresh_token"] not in log
