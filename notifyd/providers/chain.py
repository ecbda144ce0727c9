"""Failover: a channel's ordered providers behind one Provider, each with a circuit breaker.

:class:`FailoverProvider` tries the channel's providers (``NOTIFYD_<CHANNEL>_PROVIDERS``,
:mod:`.spec`) in order with the *same* delivery, hence the same idempotency key: a
provider that received a request it then failed to acknowledge (timeout, 5xx) may have
delivered, and a second provider cannot know; the key at least lets each provider drop
its own duplicates, and the ledger keeps notifyd from sending again once one succeeded.

What moves a delivery to the next provider, and what does not:

* a **retriable** failure (timeout, connection refused, 5xx, 429, Apprise "not
  accepted") or an **open circuit**: next provider;
* a provider whose ``check()`` refuses the input (e.g. a ``{token}`` service for a
  user who has only Apprise URLs) is skipped without a call; if every provider refuses,
  the delivery is ``failed`` with the first one's reason.  A bad address fails alike
  everywhere, since every provider of a channel applies the channel's rules;
* a **permanent** refusal by a provider that was called (4xx, SMTP 5xx: the provider
  judged this message) ends the delivery as ``failed`` without failover, as with one
  provider: another provider would be sent the same refused input, and a permanent
  answer is not a sign the provider is down (it counts as success for its circuit).

When every provider failed or was skipped for an open circuit the delivery raises
:class:`~notifyd.errors.RetriableDeliveryError` and is retried with backoff as before
(``retry_after``: when the first open circuit may be probed again).

Circuit breaker (per provider, per worker: each worker learns on its own): closed
until ``failures`` consecutive retriable failures; then **open** for ``cooldown_s``
(deliveries skip it); then **half-open**: exactly one delivery probes it (concurrent
ones skip it) and its outcome closes the circuit or opens it for another cool-down.
The clock is injectable so tests move time instead of sleeping.  State changes and
calls are counted in :mod:`notifyd.metrics` and listed by :data:`board` for the
operator console.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from notifyd.errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError, clip
from notifyd.metrics import metrics as default_metrics
from notifyd.model.records import Delivery
from notifyd.providers.base import Provider, SendReceipt

log = structlog.stdlib.get_logger("notifyd.providers.chain")

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"  # metrics.CIRCUIT_STATE_VALUES
_REASON_MAX = 500


class ProviderMetrics(Protocol):
    """What the chain reports (implemented by :class:`notifyd.metrics.Metrics`)."""

    def provider_attempted(self, channel: str, provider: str) -> None: ...
    def provider_failed(self, channel: str, provider: str, kind: str) -> None: ...
    def provider_skipped(self, channel: str, provider: str) -> None: ...
    def provider_circuit(self, channel: str, provider: str, state: str) -> None: ...


class Circuit:
    """One provider's breaker (see the module doc); not thread-safe, one event loop."""

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError("a circuit needs failures >= 1 and cooldown_s > 0")
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self._on_change = on_change

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def retry_in(self) -> float:
        """Seconds until an open circuit may be probed (0 unless open)."""
        if self.state != OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def allow(self) -> bool:
        """May a delivery call this provider now?  In half-open, True for one probe only."""
        if self.state == OPEN:
            if self.retry_in() > 0:
                return False
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def success(self) -> None:
        self._probing = False
        self.consecutive_failures = 0
        self.opened_at = None
        self._set(CLOSED)

    def failure(self) -> None:
        self.consecutive_failures += 1
        was_probe, self._probing = self._probing, False
        if self.state == OPEN:
            return  # a call that started before it opened: the cool-down stands
        if was_probe or self.state == HALF_OPEN or self.consecutive_failures >= self.threshold:
            self.opened_at = self.clock()
            self._set(OPEN)

    def abandon(self) -> None:
        """A call ended without an outcome (cancelled): let another probe go."""
        self._probing = False


@dataclass
class Link:
    """One provider of a chain and what the console shows about it."""

    name: str
    provider: Provider
    circuit: Circuit
    attempts: int = 0
    failures: int = 0
    skipped: int = 0
    last_error: str | None = None

    def health(self, channel: str, position: int) -> dict[str, Any]:
        c = self.circuit
        return {
            "channel": channel,
            "provider": self.name,
            "position": position,
            "state": c.state,
            "consecutive_failures": c.consecutive_failures,
            "failure_threshold": c.threshold,
            "retry_in_s": round(c.retry_in(), 3),
            "attempts": self.attempts,
            "failures": self.failures,
            "skipped": self.skipped,
            "last_error": self.last_error,
        }


class FailoverProvider(Provider):
    """A channel's ordered providers as one (module doc)."""

    def __init__(
        self,
        channel: str,
        providers: Iterable[tuple[str, Provider]],
        *,
        failures: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        # ``channel`` is a ClassVar on Provider; a chain serves the channel it is built for.
        self.channel = channel  # type: ignore[misc]
        self.name = "failover"
        if metrics is None:
            metrics = default_metrics
        self.metrics: ProviderMetrics = metrics
        self.links: list[Link] = []
        for name, provider in providers:
            provider.name = name
            circuit = Circuit(failures, cooldown_s, clock, self._state_reporter(name))
            self.links.append(Link(name, provider, circuit))
            metrics.provider_circuit(channel, name, CLOSED)
        if len(self.links) < 1:
            raise ValueError("a failover chain needs at least one provider")
        if len({link.name for link in self.links}) != len(self.links):
            raise ValueError("provider names of a chain must be unique")

    def _state_reporter(self, name: str) -> Callable[[str], None]:
        def report(state: str) -> None:
            self.metrics.provider_circuit(self.channel, name, state)
            log.warning("provider.circuit", channel=self.channel, provider=name, state=state)

        return report

    async def start(self) -> None:
        started: list[Provider] = []
        try:
            for link in self.links:
                await link.provider.start()
                started.append(link.provider)
        except BaseException:
            for p in reversed(started):
                await p.stop()
            raise
        board.add(self)

    async def stop(self) -> None:
        board.discard(self)
        errors: list[BaseException] = []
        for link in reversed(self.links):
            try:
                await link.provider.stop()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]

    def check(self, delivery: Delivery) -> None:
        """Refuse only an input that no provider of the chain would take."""
        first: PermanentDeliveryError | None = None
        for link in self.links:
            try:
                link.provider.check(delivery)
                return
            except PermanentDeliveryError as exc:
                first = first or exc
        assert first is not None
        raise first

    def health(self) -> list[dict[str, Any]]:
        return [link.health(self.channel, i) for i, link in enumerate(self.links, 1)]

    async def send(self, delivery: Delivery) -> SendReceipt:
        failed: list[str] = []
        refused: PermanentDeliveryError | None = None
        retry_after: float | None = None
        for link in self.links:
            try:
                link.provider.check(delivery)
            except PermanentDeliveryError as exc:
                refused = refused or exc
                continue
            circuit = link.circuit
            if not circuit.allow():
                link.skipped += 1
                self.metrics.provider_skipped(self.channel, link.name)
                wait = circuit.retry_in()
                retry_after = wait if retry_after is None else min(retry_after, wait)
                failed.append(f"{link.name}: circuit_open")
                continue
            link.attempts += 1
            self.metrics.provider_attempted(self.channel, link.name)
            try:
                receipt = await link.provider.send(delivery)
            except asyncio.CancelledError:
                circuit.abandon()
                raise
            except DeliveryError as err:
                link.failures += 1
                link.last_error = clip(err.reason, 200)
                if not err.retriable:
                    # The provider answered and judged this message: up, and final.
                    self.metrics.provider_failed(self.channel, link.name, "permanent")
                    circuit.success()
                    raise
                self.metrics.provider_failed(self.channel, link.name, "retriable")
                circuit.failure()
                failed.append(f"{link.name}: {err.reason}")
                log.info("provider.failover", provider=link.name, reason=clip(err.reason, 200))
                continue
            except Exception as exc:  # a provider bug: this provider failed, try the next
                reason = f"provider_error: {type(exc).__name__}: {clip(str(exc), 120)}"
                link.failures += 1
                link.last_error = reason
                self.metrics.provider_failed(self.channel, link.name, "retriable")
                circuit.failure()
                failed.append(f"{link.name}: {reason}")
                log.exception("provider.crashed", provider=link.name)
                continue
            circuit.success()
            receipt.provider = link.name
            if failed:
                receipt.detail = {**receipt.detail, "failed_over": failed}
            return receipt
        if not failed:
            assert refused is not None  # every provider refused the input
            raise refused
        reason = "providers_failed: " + " | ".join(failed)
        raise RetriableDeliveryError(clip(reason, _REASON_MAX), retry_after=retry_after)


class HealthBoard:
    """The chains running in this process, for the console (``/api/v1/admin/providers``)."""

    def __init__(self) -> None:
        self._chains: list[FailoverProvider] = []

    def add(self, chain: FailoverProvider) -> None:
        if chain not in self._chains:
            self._chains.append(chain)

    def discard(self, chain: FailoverProvider) -> None:
        if chain in self._chains:
            self._chains.remove(chain)

    def snapshot(self) -> list[dict[str, Any]]:
        rows = [row for chain in self._chains for row in chain.health()]
        return sorted(rows, key=lambda r: (r["channel"], r["position"]))


#: This worker's chains (each worker has its own circuits).
board = HealthBoard()
