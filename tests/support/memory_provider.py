"""In-memory provider for unit tests of the pipeline: records, dedupes, fails on demand."""

from __future__ import annotations

from collections import deque

from notifyd.domain.channel_rules import check_e164, check_email, check_http_url
from notifyd.errors import DeliveryError, PermanentDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.base import Provider, SendReceipt


class MemoryProvider(Provider):
    """A provider double that behaves like a well-behaved real one.

    * ``deliveries``: unique deliveries, in order (a repeated idempotency key is
      answered with the first receipt and not recorded again);
    * ``calls``: every ``send`` call, including failed and duplicate ones;
    * ``fail_next(error, times)``: the next ``times`` sends raise ``error``;
    * ``check`` applies the same address rules as the real provider of the channel.
    """

    def __init__(self, channel: str) -> None:
        # ``channel`` is a ClassVar on Provider; this double serves any channel.
        self.channel = channel  # type: ignore[misc]
        self.deliveries: list[Delivery] = []
        self.calls: int = 0
        self.started = False
        self._receipts: dict[str, SendReceipt] = {}
        self._failures: deque[DeliveryError] = deque()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def fail_next(self, error: DeliveryError, times: int = 1) -> None:
        """Make the next ``times`` sends raise ``error`` (queued after earlier ones)."""
        self._failures.extend([error] * times)

    @property
    def keys(self) -> list[str]:
        return [d.idempotency_key for d in self.deliveries]

    def clear(self) -> None:
        self.deliveries.clear()
        self._receipts.clear()
        self._failures.clear()
        self.calls = 0

    def check(self, delivery: Delivery) -> None:
        if self.channel == "email":
            check_email(delivery.address)
        elif self.channel == "sms":
            check_e164(delivery.address)
        elif self.channel == "webhook":
            check_http_url(delivery.address)
        elif self.channel == "push" and not delivery.tokens:
            raise PermanentDeliveryError("invalid_address: no push device token")

    async def send(self, delivery: Delivery) -> SendReceipt:
        self.calls += 1
        if self._failures:
            raise self._failures.popleft()
        key = delivery.idempotency_key
        if key in self._receipts:
            return self._receipts[key]
        receipt = SendReceipt(provider_id=f"mem-{len(self.deliveries) + 1}", detail={})
        self._receipts[key] = receipt
        self.deliveries.append(delivery)
        return receipt
