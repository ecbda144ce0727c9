"""Per-channel limits: concurrency per channel, token bucket, channel-wide pause on 429.

Time is a :class:`VirtualClock` the test advances, so "no call during the pause" is
checked on the times the providers saw, never against the wall clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from notifyd.config import Settings
from notifyd.errors import (
    DeliveryError,
    RateLimitedDeliveryError,
    RetriableDeliveryError,
)
from notifyd.metrics import metrics
from notifyd.model.records import Delivery
from notifyd.providers import ratelimit
from notifyd.providers.base import SendReceipt
from notifyd.providers.httpapi import SmsProvider
from notifyd.providers.ratelimit import ChannelLimits, LimitedProvider, PauseGate, TokenBucket
from notifyd.stream.runtime import Timer
from notifyd.tools.sandbox.provider import SandboxServer
from tests.support.app import app_agent, build_app
from tests.support.memory_provider import MemoryProvider
from tests.support.statuses import capture_statuses
from tests.support.waiting import until


class VirtualClock:
    """Monotonic time that moves only when the test calls :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, fut))
        try:
            await fut
        finally:
            self.sleepers = [(t, f) for t, f in self.sleepers if f is not fut]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for due, fut in self.sleepers:
            if due <= self.now and not fut.done():
                fut.set_result(None)


def delivery(channel: str, user: str, nid: str) -> Delivery:
    address = {"email": "u@example.com", "sms": "+15551234567", "webhook": "https://e.com/h"}
    return Delivery(
        notification_id=nid,
        event_id=f"ev-{nid}",
        user_id=user,
        channel=channel,
        title="t",
        body="b",
        address=address.get(channel),
        tokens=["tok"] if channel == "push" else [],
    )


# --- settings ---------------------------------------------------------------------------


def test_concurrency_per_channel_falls_back_to_delivery_concurrency() -> None:
    s = Settings(delivery_concurrency=32)
    assert [s.concurrency_for(c) for c in ("email", "sms", "push", "webhook", "inapp")] == [
        8, 32, 32, 32, 32,  # SMTP relays cap connections per client: 8 unless set
    ]
    s = Settings(delivery_concurrency=4, sms_concurrency=16, email_concurrency=2)
    assert [s.concurrency_for(c) for c in ("email", "sms", "push")] == [2, 16, 4]
    assert Settings(delivery_concurrency=1).concurrency_for("email") == 1
    assert Settings(sms_rate_limit=2.5).rate_limit_for("sms") == 2.5
    assert Settings().rate_limit_for("push") == 0.0
    with pytest.raises(ValueError):
        Settings(sms_rate_limit=-1)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFYD_EMAIL_CONCURRENCY", "3")
    monkeypatch.setenv("NOTIFYD_SMS_RATE_LIMIT", "10")
    s = Settings()
    assert s.concurrency_for("email") == 3 and s.rate_limit_for("sms") == 10.0


# --- token bucket and gate --------------------------------------------------------------


def test_token_bucket_bursts_then_spaces_calls() -> None:
    vc = VirtualClock()
    bucket = TokenBucket(2.0, clock=vc.time, sleep=vc.sleep)  # burst: one second's worth
    assert [bucket.reserve() for _ in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]
    vc.advance(10)  # refills, but never beyond the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.5]


async def test_token_bucket_waits_on_its_clock_and_refunds_a_cancelled_wait() -> None:
    vc = VirtualClock()
    bucket = TokenBucket(1.0, clock=vc.time, sleep=vc.sleep)
    assert await bucket.acquire() == 0.0
    waiter = asyncio.create_task(bucket.acquire())
    await until(lambda: len(vc.sleepers) == 1)
    assert vc.sleepers[0][0] == 1.0
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    vc.advance(1.0)
    assert bucket.reserve() == 0.0  # the cancelled caller's token was given back


async def test_gate_is_extended_by_a_later_pause() -> None:
    vc = VirtualClock()
    gate = PauseGate(clock=vc.time, sleep=vc.sleep)
    assert await gate.wait() == 0.0
    assert gate.pause(2.0) is True
    waiter = asyncio.create_task(gate.wait())
    await until(lambda: len(vc.sleepers) == 1)
    vc.advance(1.0)
    assert gate.pause(5.0) is False  # already closed: extended to t=6, not a new pause
    vc.advance(1.0)  # t=2: the first deadline wakes the waiter, which sleeps again
    await until(lambda: len(vc.sleepers) == 1 and vc.sleepers[0][0] == 6.0)
    assert not waiter.done()
    vc.advance(4.0)
    assert await waiter == 6.0


def channel_pauses(channel: str) -> float:
    value = metrics.registry.get_sample_value(
        "notifyd_channel_pauses_total", {"channel": channel}
    )
    return value or 0.0


def waited(channel: str, cause: str) -> float:
    value = metrics.registry.get_sample_value(
        "notifyd_provider_wait_seconds_total", {"channel": channel, "cause": cause}
    )
    return value or 0.0


class Recording(MemoryProvider):
    """Records the (virtual) time of every call; fails the first ones on demand."""

    def __init__(self, channel: str, vc: VirtualClock) -> None:
        super().__init__(channel)
        self.vc = vc
        self.times: list[float] = []

    async def send(self, d: Delivery) -> SendReceipt:
        self.times.append(self.vc.time())
        return await super().send(d)


@pytest.mark.parametrize(
    ("error", "channel", "paused_for"),
    [
        (RateLimitedDeliveryError("http_429", retry_after=5.0), "sms", 5.0),
        (RateLimitedDeliveryError("http_429"), "sms", 1.0),  # no hint: default pause
        (RateLimitedDeliveryError("http_429", retry_after=9999.0), "push", 300.0),  # capped
        (RateLimitedDeliveryError("http_429", retry_after=5.0), "webhook", 0.0),  # per user
        (RetriableDeliveryError("http_503", retry_after=5.0), "sms", 0.0),  # not a 429
    ],
)
async def test_limited_provider_pauses_only_on_a_providers_rate_limit(
    error: DeliveryError, channel: str, paused_for: float
) -> None:
    vc = VirtualClock()
    limits = ratelimit.channel_limits(channel, Settings(), clock=vc.time, sleep=vc.sleep)
    inner = Recording(channel, vc)
    provider = LimitedProvider(inner, limits)
    inner.fail_next(error)
    pauses = channel_pauses(channel)
    with pytest.raises(type(error)):
        await provider.send(delivery(channel, "u", "n1"))
    assert limits.gate.remaining() == paused_for
    assert channel_pauses(channel) == pauses + (paused_for > 0)
    second = asyncio.create_task(provider.send(delivery(channel, "u", "n2")))
    if paused_for:
        await until(lambda: len(vc.sleepers) == 1)
        vc.advance(paused_for)
    await second
    assert inner.times == [0.0, paused_for]


async def test_rate_limit_spaces_provider_calls() -> None:
    vc = VirtualClock()
    limits = ChannelLimits("sms", rate=4.0, clock=vc.time, sleep=vc.sleep)
    inner = Recording("sms", vc)
    provider = LimitedProvider(inner, limits)
    before = waited("sms", "rate_limit")
    sends = [asyncio.create_task(provider.send(delivery("sms", "u", f"n{i}"))) for i in range(6)]
    await until(lambda: len(inner.times) == 4 and len(vc.sleepers) == 2)
    for _ in range(2):
        vc.advance(0.25)
        await until(lambda: len(vc.sleepers) == 0 or vc.sleepers[0][0] > vc.now)
    await asyncio.gather(*sends)
    assert inner.times == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5]
    assert waited("sms", "rate_limit") - before == pytest.approx(0.75)


# --- on the channel agents --------------------------------------------------------------


class Blocking(MemoryProvider):
    """Every send waits until the test releases it; records the most in flight at once."""

    def __init__(self, channel: str) -> None:
        super().__init__(channel)
        self.active = 0
        self.max_active = 0
        self.release = asyncio.Event()

    async def send(self, d: Delivery) -> SendReceipt:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.release.wait()
            return await super().send(d)
        finally:
            self.active -= 1


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[dict[str, Any]]]]:
    return capture_statuses(monkeypatch)


def chosen(providers: dict[str, MemoryProvider]) -> Any:
    """``build_provider`` giving each channel its provider of ``providers``."""
    return lambda channel, settings: providers[channel]


async def test_each_channel_keeps_its_own_number_of_calls_in_flight(
    published: list[Any],
) -> None:
    email, sms = Blocking("email"), Blocking("sms")
    rt = build_app(
        build_provider=chosen({"email": email, "sms": sms}),
        delivery_concurrency=32,
        email_concurrency=2,
        sms_concurrency=0,  # inherits 32
    )
    tag = uuid.uuid4().hex[:6]
    users = [f"u{i}-{tag}" for i in range(6)]  # one user each: ordering never serialises
    email_agent, sms_agent = app_agent("agent.email", rt), app_agent("agent.sms", rt)
    async with email_agent.test_context() as ea, sms_agent.test_context() as sa:
        for i, u in enumerate(users):
            for tc, ch in ((ea, "email"), (sa, "sms")):
                d = delivery(ch, u, f"{tag}-{ch}-{i}")
                await tc.put(d.dumps(), key=u.encode(), partition=i % 4, wait=False)
        try:
            # Both streams hold six deliveries; SMS has all of them at its provider at
            # once, e-mail only two, the other four waiting for a slot.
            await until(lambda: sms.active == len(users) and email.active >= 2)
            assert email.active == 2
        finally:
            email.release.set()
            sms.release.set()
        await until(lambda: len(published) == 2 * len(users))
    assert (email.max_active, sms.max_active) == (2, len(users))
    assert len(email.deliveries) == len(sms.deliveries) == len(users)


@pytest.fixture
async def virtual_limits() -> AsyncIterator[VirtualClock]:
    vc = VirtualClock()
    yield vc
    vc.advance(1e9)  # nothing may stay asleep after the test


async def test_a_429_pauses_its_channel_only_and_the_delivery_is_retried(
    published: list[tuple[str, list[dict[str, Any]]]],
    virtual_limits: VirtualClock,
) -> None:
    vc = virtual_limits
    sms, push = Recording("sms", vc), Recording("push", vc)
    rt = build_app(
        build_provider=chosen({"sms": sms, "push": push}),
        timer=Timer(vc.time, vc.sleep),
        delivery_concurrency=8,
        retry_max_s=60.0,
    )
    sms_agent, push_agent = app_agent("agent.sms", rt), app_agent("agent.push", rt)
    sms.fail_next(RateLimitedDeliveryError("http_429: sms api answered 429", retry_after=5.0))
    tag = uuid.uuid4().hex[:6]
    paused_before = waited("sms", "paused"), waited("push", "paused")
    async with sms_agent.test_context() as sa, push_agent.test_context() as pa:
        first = delivery("sms", f"a-{tag}", f"{tag}-s0")
        await sa.put(first.dumps(), key=first.user_id.encode(), partition=0)
        await until(lambda: len(published) == 1)
        status = published[0][1][0]
        assert status["status"] == "retrying"  # retried as any failure, at least 5 s later
        assert status["deliver_at"] - status["ts"] >= 5.0
        for i in range(1, 4):
            d = delivery("sms", f"s{i}-{tag}", f"{tag}-s{i}")
            await sa.put(d.dumps(), key=d.user_id.encode(), partition=i % 4)
            p = delivery("push", f"p{i}-{tag}", f"{tag}-p{i}")
            await pa.put(p.dumps(), key=p.user_id.encode(), partition=i % 4)
        # Push goes on at t=0 while the three SMS wait at the channel's gate.
        await until(lambda: len(push.deliveries) == 3 and len(vc.sleepers) == 3)
        assert push.times == [0.0, 0.0, 0.0]
        vc.advance(5.0)
        await until(lambda: len(sms.deliveries) == 3)
        await until(lambda: len(published) == 7)
    assert sms.times == [0.0, 5.0, 5.0, 5.0]
    # Three SMS waited 5 s each; push never waited.
    assert waited("sms", "paused") - paused_before[0] == pytest.approx(15.0)
    assert waited("push", "paused") == paused_before[1]


async def test_a_webhook_receivers_429_does_not_pause_the_other_webhooks(
    published: list[tuple[str, list[dict[str, Any]]]],
    virtual_limits: VirtualClock,
) -> None:
    vc = virtual_limits
    hooks = Recording("webhook", vc)
    rt = build_app(
        build_provider=chosen({"webhook": hooks}),
        timer=Timer(vc.time, vc.sleep),
        delivery_concurrency=1,
    )
    webhook_agent = app_agent("agent.webhook", rt)
    hooks.fail_next(RateLimitedDeliveryError("http_429: webhook answered 429", retry_after=5.0))
    tag = uuid.uuid4().hex[:6]
    async with webhook_agent.test_context() as wa:
        for i in range(3):
            d = delivery("webhook", f"w{i}-{tag}", f"{tag}-w{i}")
            await wa.put(d.dumps(), key=d.user_id.encode(), partition=0)
        await until(lambda: len(published) == 3)
    assert hooks.times == [0.0, 0.0, 0.0] and len(hooks.deliveries) == 2


# --- the sandbox and the HTTP mapping --------------------------------------------------


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    server = SandboxServer(seed=3)
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_429_maps_to_a_rate_limit_error_with_its_retry_after(
    sandbox: SandboxServer, form: str
) -> None:
    if form == "seconds":
        header, expected = "7", (7.0, 7.0)
    else:
        when = datetime.now(UTC) + timedelta(seconds=30)
        header, expected = format_datetime(when, usegmt=True), (25.0, 30.0)
    sandbox.state.load.rate_limit("sms", 1, header)
    provider = SmsProvider(Settings(sms_api_url=f"{sandbox.url}/v1/sms"))
    async with provider:
        with pytest.raises(RateLimitedDeliveryError) as info:
            await provider.send(delivery("sms", "u", "n1"))
        assert info.value.retriable and info.value.reason.startswith("http_429")
        assert info.value.retry_after is not None
        assert expected[0] <= info.value.retry_after <= expected[1]
        await provider.send(delivery("sms", "u", "n1"))  # one 429 only, then accepted
    load = sandbox.state.load.snapshot()
    assert [(r["kind"], r["retry_after"]) for r in load["rate_limited"]] == [("sms", header)]
    assert len(sandbox.deliveries("sms")) == 1


async def test_sandbox_counts_requests_in_flight_per_kind(sandbox: SandboxServer) -> None:
    sandbox.state.configure({"latency_ms": 50})
    provider = SmsProvider(Settings(sms_api_url=f"{sandbox.url}/v1/sms"))
    async with provider:
        await asyncio.gather(
            *(provider.send(delivery("sms", f"u{i}", f"n{i}")) for i in range(3))
        )
        await provider.send(delivery("sms", "u9", "n9"))
    load = sandbox.state.load.snapshot()
    assert load["max_inflight"]["sms"] == 3 and load["inflight"]["sms"] == 0
    assert load["max_inflight"]["push"] == 0
