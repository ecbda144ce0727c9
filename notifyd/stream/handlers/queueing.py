"""Hand a delivery to its channel's topic, where its channel agent calls the provider.

The one place a delivery is produced, together with the ``queued`` status update that
records it: from :mod:`.dispatch` (an event's channel is sent now), :mod:`.schedule`
(a deferred or retried delivery is due) and the scheduler's reconciler (an outcome is
overdue, the delivery is produced again).
"""

from __future__ import annotations

from typing import Any

from notifyd.records import dumps
from notifyd.stream.handlers.status import UpdateFields, status_update
from notifyd.topics import deliver_topics


async def queue_delivery(
    delivery: dict[str, Any], ts: float, *, attempt: int | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Produce ``delivery`` (a ``Delivery.to_dict()``) to its channel topic, keyed by
    its user; returns its ``queued`` status update for the caller to publish, alone or
    with the other channels' updates of the same event in one status record."""
    await deliver_topics[delivery["channel"]].send(
        key=str(delivery["user_id"]).encode(), value=dumps(delivery)
    )
    fields: UpdateFields = {"delivery": delivery}
    if attempt is not None:
        fields["attempt"] = attempt
    if reason is not None:
        fields["reason"] = reason
    return status_update(delivery["channel"], "queued", ts, **fields)
