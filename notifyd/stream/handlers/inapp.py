"""The in-app provider: a delivery becomes an item of the user's bounded inbox table.

Each new item is also handed to the inbox listeners of this process: the web view
registers its live-stream hub there (``notifyd.web.realtime``), so the core imports
nothing of the web view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from notifyd import clock
from notifyd.metrics import metrics
from notifyd.model.records import Delivery
from notifyd.providers.base import Provider, SendReceipt
from notifyd.stream.app import settings
from notifyd.stream.handlers.status import sent_update
from notifyd.stream.tables import inbox

#: Called as ``listener(user_id, item, unread)`` for each new inbox item.
InboxListener = Callable[[str, dict[str, Any], int], object]
_listeners: list[InboxListener] = []


def on_new_inbox_item(listener: InboxListener) -> Callable[[], None]:
    """Have ``listener`` called for each item :func:`deliver_inapp` adds in this process;
    returns what removes it.  Registering a listener again keeps one registration, so a
    web view set up twice does not publish each item twice."""
    if listener not in _listeners:
        _listeners.append(listener)

    def remove() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return remove


def deliver_inapp_inline(delivery: Delivery, now: float) -> dict[str, Any]:
    """Write the inbox from the ingest agent itself.

    The inbox table is keyed by user id, like the event, so it lives on the partition
    being processed: a round trip through ``notifyd.deliver.inapp`` would cost five
    more Kafka records per event (deliver produce + consume, ledger changelog, status
    produce + consume) to come back here.  Idempotent without the ledger: the inbox
    keeps at most one item per notification id.  Scheduled, retried and re-driven
    in-app deliveries still go through the in-app agent.
    """
    metrics.delivery_attempted(delivery)
    provider_id = deliver_inapp(delivery)
    metrics.delivery_sent(delivery)
    return sent_update(delivery, provider_id, clock.now(), "inapp")


def deliver_inapp(delivery: Delivery) -> str:
    """In-app provider: add to the user's bounded inbox (idempotent by notification id)."""
    box = inbox.get(delivery.user_id) or {"items": [], "unread": 0}
    items: list[dict[str, Any]] = box["items"]
    if any(it["id"] == delivery.notification_id for it in items):
        return delivery.notification_id
    items.insert(
        0,
        {
            "id": delivery.notification_id,
            "title": delivery.title,
            "body": delivery.body,
            "category": delivery.category,
            "priority": delivery.priority,
            "data": delivery.data,
            "created_at": clock.now(),
            "read": False,
            "archived": False,
        },
    )
    del items[settings.inbox_max_items :]
    box["unread"] = sum(1 for it in items if not it["read"] and not it["archived"])
    inbox[delivery.user_id] = box
    for listener in _listeners:  # live inbox streams (GET /api/v1/notifications/stream)
        listener(delivery.user_id, items[0], box["unread"])
    return delivery.notification_id


class InboxProvider(Provider):
    """In-app: writes the user's inbox table (runs inside the inapp agent's event)."""

    channel = "inapp"

    async def send(self, delivery: Delivery) -> SendReceipt:
        return SendReceipt(provider_id=deliver_inapp(delivery))
