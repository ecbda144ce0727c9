"""Issue 13 item 7: per-channel limits on the real stack (Apache Kafka, sandbox provider).

One worker with ``NOTIFYD_SMS_CONCURRENCY=1`` against its own sandbox, which counts the
requests it is serving per kind and can answer 429 + ``Retry-After`` on demand.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from notifyd.tools.broker.kafka import KafkaBroker
from notifyd.tools.sandbox.provider import Load
from tests.integration.conftest import start_stack
from tests.support.harness import Sinks, Stack, new_id, wait_for

pytestmark = pytest.mark.integration

#: The Retry-After of the injected 429 (below NOTIFYD_RETRY_MAX_S, so not capped).
PAUSE_S = 8.0


@pytest.fixture(scope="module")
def limits_stack(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("limits")
    sinks = Sinks()
    st = start_stack(
        kafka.url, kafka.bootstrap, root, "limits", sinks,
        {"NOTIFYD_SMS_CONCURRENCY": "1", "NOTIFYD_RETRY_MAX_S": "20",
         "NOTIFYD_THROTTLE_LIMIT": "0"},
    )
    yield st
    for w in st.workers:
        w.stop()
    sinks.close()


def sandbox_load(sinks: Sinks) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        return sinks.sandbox.state.load.snapshot()

    return sinks.lt.call(get())


def sandbox_set(sinks: Sinks, *, latency_ms: float | None = None, fresh_load: bool = False,
                rate_limit: tuple[str, int, str] | None = None) -> None:
    async def apply() -> None:
        state = sinks.sandbox.state
        if latency_ms is not None:
            state.configure({"latency_ms": latency_ms})
        if fresh_load:
            state.load = Load()
        if rate_limit is not None:
            state.load.rate_limit(*rate_limit)

    sinks.lt.call(apply())


def phone() -> str:
    return f"+1555{uuid.uuid4().int % 10**7:07d}"


async def put_users(st: Stack, users: dict[str, dict[str, Any]]) -> None:
    await st.produce(
        st.names.preferences,
        [(u.encode(), orjson.dumps({"op": "put", "user_id": u, "fields": f}))
         for u, f in users.items()],
    )
    for u in users:
        await wait_for(lambda u=u: st.worker.table("preferences", u), timeout=60,
                       what=f"prefs {u}")


def sms_to(sinks: Sinks, phones: set[str]) -> list[dict[str, Any]]:
    return [d for d in sinks.deliveries("sms") if d["payload"]["to"] in phones]


def push_to(sinks: Sinks, tokens: set[str]) -> list[dict[str, Any]]:
    return [d for d in sinks.deliveries("push") if d["payload"]["tokens"][0] in tokens]


async def test_sms_concurrency_holds_at_the_provider_while_push_runs_in_parallel(
    limits_stack: Stack,
) -> None:
    st = limits_stack
    users = {new_id("cu"): {"phone": phone(), "push_tokens": [new_id("tok")]} for _ in range(12)}
    await put_users(st, users)
    sandbox_set(st.sinks, latency_ms=300, fresh_load=True)
    try:
        await st.send_events(*(
            {"event_id": new_id("ce"), "user_id": u, "title": "t", "body": "concurrency",
             "channels": ["sms", "push"]}
            for u in users
        ))
        phones = {f["phone"] for f in users.values()}
        tokens = {f["push_tokens"][0] for f in users.values()}
        await wait_for(lambda: len(sms_to(st.sinks, phones)) == len(users)
                       and len(push_to(st.sinks, tokens)) == len(users),
                       timeout=120, what="every sms and push delivered")
    finally:
        sandbox_set(st.sinks, latency_ms=0)
    load = sandbox_load(st.sinks)
    print(f"\nMAX IN FLIGHT at the sandbox: {load['max_inflight']}")
    # NOTIFYD_SMS_CONCURRENCY=1: one SMS request at a time; push keeps its 32.
    assert load["max_inflight"]["sms"] == 1
    assert load["max_inflight"]["push"] >= 2


async def test_a_429_pauses_sms_only_and_every_sms_is_delivered_once(
    limits_stack: Stack,
) -> None:
    st = limits_stack
    sms_users = {new_id("su"): {"phone": phone()} for _ in range(5)}
    push_users = {new_id("pu"): {"push_tokens": [new_id("tok")]} for _ in range(6)}
    await put_users(st, {**sms_users, **push_users})
    receipts_before = st.sinks.sandbox.receipts("sms")
    sandbox_set(st.sinks, fresh_load=True, rate_limit=("sms", 1, f"{PAUSE_S:g}"))
    first, *rest = sms_users
    await st.send_events({"event_id": new_id("re"), "user_id": first, "title": "t",
                          "body": "rate limited", "channels": ["sms"]})
    limited = await wait_for(lambda: sandbox_load(st.sinks)["rate_limited"], timeout=60,
                             what="the injected 429")
    answered_at = limited[0]["answered_at"]
    # Sent after the 429: the SMS wait for the pause, push does not.
    await st.send_events(
        *({"event_id": new_id("re"), "user_id": u, "title": "t", "body": "after the 429",
           "channels": ["sms"]} for u in rest),
        *({"event_id": new_id("re"), "user_id": u, "title": "t", "body": "push",
           "channels": ["push"]} for u in push_users),
    )
    phones = {f["phone"] for f in sms_users.values()}
    tokens = {f["push_tokens"][0] for f in push_users.values()}
    await wait_for(lambda: len(sms_to(st.sinks, phones)) == len(phones)
                   and len(push_to(st.sinks, tokens)) == len(tokens),
                   timeout=120, what="every sms and push delivered")
    sms = sms_to(st.sinks, phones)
    push = push_to(st.sinks, tokens)
    sms_after = sorted(d["received_at"] - answered_at for d in sms)
    push_after = sorted(d["received_at"] - answered_at for d in push)
    print(f"\n429 PAUSE {PAUSE_S:g}s: sms at +{[round(t, 2) for t in sms_after]}, "
          f"push at +{[round(t, 2) for t in push_after]}")
    # No SMS reached the provider before its Retry-After had passed (the refused one
    # included: retried no earlier); push went on meanwhile.
    assert min(sms_after) >= PAUSE_S - 0.05
    assert min(push_after) < PAUSE_S
    # Nothing lost, nothing twice: one delivery per phone, one 429 and five sends in all.
    assert Counter(d["payload"]["to"] for d in sms) == Counter(phones)
    assert len({d["idempotency_key"] for d in sms}) == len(phones)
    assert st.sinks.sandbox.receipts("sms") - receipts_before == len(phones) + 1
