"""The provider interface: one small class per delivery back end.

A provider turns a :class:`~notifyd.model.records.Delivery` into a real message.  It checks
the channel's rules first (:meth:`Provider.check`, raising
:class:`~notifyd.errors.PermanentDeliveryError` for an input that can never be sent),
then :meth:`Provider.send` raises :class:`~notifyd.errors.DeliveryError` with
``retriable`` set on failure.  Every call carries ``delivery.idempotency_key`` so a
provider that honours it never delivers twice.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from notifyd.model.records import Delivery


@dataclass(slots=True)
class SendReceipt:
    """What a provider answered for a successful send."""

    provider_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: Name of the configured provider that delivered (failover chains; see .spec).
    provider: str | None = None


class Provider(abc.ABC):
    channel: ClassVar[str]
    #: The configured name (``NOTIFYD_<CHANNEL>_PROVIDERS``, see .spec): shown in status
    #: documents, metrics and the console instead of a URL.  Set by the registry.
    name: str = ""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open long-lived resources (HTTP sessions, connections)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Close what :meth:`start` opened."""

    def check(self, delivery: Delivery) -> None:  # noqa: B027 - optional hook
        """Apply the channel's rules; raise PermanentDeliveryError if it can never be sent."""

    @abc.abstractmethod
    async def send(self, delivery: Delivery) -> SendReceipt:
        """Deliver once; raise DeliveryError (retriable or not) on failure."""
