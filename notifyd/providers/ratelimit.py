"""Per-channel limits in front of a provider: a token bucket and a pause after a 429.

Each channel agent consumes its own stream, so whatever waits here holds up that
channel only: an SMS provider answering 429 pauses SMS while e-mail and push go on.
The number of calls in flight per channel is the agent's concurrency
(``Settings.concurrency_for``); this module adds

* an optional rate (``NOTIFYD_<CHANNEL>_RATE_LIMIT`` calls per second, per worker),
  taken before each provider call, and
* a channel-wide pause: when the provider refuses for its rate limit
  (:class:`~notifyd.errors.RateLimitedDeliveryError`, HTTP 429) every further call
  would be refused too, so no new call starts until its ``Retry-After`` has passed.
  The refused delivery itself is retried by the pipeline as any retriable failure.

Time is read through an injected ``clock``/``sleep`` (monotonic, asyncio) so tests
can drive it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from notifyd.config import Settings
from notifyd.errors import DeliveryError, RateLimitedDeliveryError
from notifyd.metrics import metrics
from notifyd.model.records import Delivery
from notifyd.providers.base import Provider, SendReceipt

log = structlog.stdlib.get_logger("notifyd.providers.ratelimit")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Channels whose deliveries go to hosts the users chose (each webhook its own
#: receiver): one receiver's 429 speaks for itself only, so it never pauses the channel.
USER_DESTINATION_CHANNELS = frozenset({"webhook"})


class TokenBucket:
    """``rate`` calls per second in bursts of up to ``burst`` (default: one second's worth).

    A caller takes its token at once, the balance going negative if need be, then sleeps
    until that balance has refilled: no polling, and callers are served in arrival order.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._at = clock()

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return max(0.0, -self._tokens / self.rate)

    async def acquire(self) -> float:
        """Wait for a token; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            try:
                await self._sleep(wait)
            except asyncio.CancelledError:
                self._tokens += 1.0  # not used: give it back
                raise
        return wait


class PauseGate:
    """Open, or closed until an instant; a later pause only ever extends it."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = float("-inf")

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def pause(self, seconds: float) -> bool:
        """Close for ``seconds`` from now; True if the gate was open (a new pause)."""
        now = self._clock()
        was_open = now >= self._until
        self._until = max(self._until, now + seconds)
        return was_open

    async def wait(self) -> float:
        """Return once open (at once if it is); the seconds waited."""
        waited = 0.0
        while (left := self._until - self._clock()) > 0:
            await self._sleep(left)  # the pause may be extended meanwhile: look again
            waited += left
        return waited


class ChannelLimits:
    """What a channel's provider calls wait for: the pause gate, then the token bucket."""

    def __init__(
        self,
        channel: str,
        *,
        rate: float = 0.0,
        pause_on_rate_limit: bool = True,
        default_pause_s: float = 1.0,
        max_pause_s: float = 300.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.channel = channel
        self.pause_on_rate_limit = pause_on_rate_limit
        self.default_pause_s = default_pause_s
        self.max_pause_s = max_pause_s
        self.gate = PauseGate(clock=clock, sleep=sleep)
        self.bucket = TokenBucket(rate, clock=clock, sleep=sleep) if rate > 0 else None

    async def before_call(self) -> None:
        paused = await self.gate.wait()
        if self.bucket is not None:
            waited = await self.bucket.acquire()
            if waited:
                metrics.provider_waited(self.channel, "rate_limit", waited)
            paused += await self.gate.wait()  # a pause that began while we queued
        if paused:
            metrics.provider_waited(self.channel, "paused", paused)

    def after_error(self, err: DeliveryError) -> None:
        """Pause the channel if ``err`` is the provider's rate limit."""
        if not (self.pause_on_rate_limit and isinstance(err, RateLimitedDeliveryError)):
            return
        hint = err.retry_after if err.retry_after is not None else self.default_pause_s
        seconds = min(hint, self.max_pause_s)
        if seconds <= 0:
            return
        if self.gate.pause(seconds):
            metrics.channel_paused(self.channel)
            log.warning("channel.paused", paused_channel=self.channel, pause_s=round(seconds, 3))


class LimitedProvider(Provider):
    """``inner`` with the channel's limits applied around each :meth:`send`."""

    def __init__(self, inner: Provider, limits: ChannelLimits) -> None:
        self.channel = inner.channel  # type: ignore[misc]  # a ClassVar elsewhere
        self.inner = inner
        self.limits = limits

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def check(self, delivery: Delivery) -> None:
        self.inner.check(delivery)

    async def send(self, delivery: Delivery) -> SendReceipt:
        await self.limits.before_call()
        try:
            return await self.inner.send(delivery)
        except DeliveryError as err:
            self.limits.after_error(err)
            raise


def channel_limits(
    channel: str,
    settings: Settings,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> ChannelLimits:
    """The limits configured for ``channel``.

    A 429 without ``Retry-After`` pauses for ``retry_base_s``; a hint is capped at
    ``retry_max_s``, the longest a retried delivery waits anyway.
    """
    return ChannelLimits(
        channel,
        rate=settings.rate_limit_for(channel),
        pause_on_rate_limit=channel not in USER_DESTINATION_CHANNELS,
        default_pause_s=settings.retry_base_s,
        max_pause_s=settings.retry_max_s,
        clock=clock,
        sleep=sleep,
    )
