"""Hand a delivery to its channel's topic, where its channel agent calls the provider.

The one place a delivery is produced, together with the ``queued`` status update that
records it: from :mod:`.dispatch` (an event's channel is sent now), :mod:`.schedule`
(a deferred or retried delivery is due) and :func:`requeue_overdue`, the scheduler's
reconciler (an outcome is overdue, the delivery is produced again).
"""

from __future__ import annotations

from typing import Any

import structlog

from notifyd.metrics import metrics
from notifyd.model.records import dumps
from notifyd.stream import handoff
from notifyd.stream.app import settings
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.status import UpdateFields, status_update
from notifyd.stream.pending import PENDING, pending
from notifyd.stream.tables import status
from notifyd.stream.topics import deliver_topics, partition_for

log = structlog.stdlib.get_logger("notifyd.stream.handlers.queueing")


async def queue_delivery(
    delivery: dict[str, Any], ts: float, *, attempt: int | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Produce ``delivery`` (a ``Delivery.to_dict()``) to its channel topic, keyed by
    its user, or hand it to the channel's lane in this process when it may skip the
    topic (``notifyd.stream.handoff``); returns its ``queued`` status update for the
    caller to publish, alone or with the other channels' updates of the same event in
    one status record."""
    topic = deliver_topics[delivery["channel"]]
    user_id = str(delivery["user_id"])
    key, value = user_id.encode(), dumps(delivery)
    lanes = handoff.of(topic.app)
    headers = None
    if lanes is not None:
        name, partition = topic.get_topic_name(), partition_for(user_id)
        if await lanes.offer(name, partition, key, value):
            metrics.delivery_queued(delivery["channel"], "lane")
            return _queued(delivery, ts, attempt, reason)
        headers = lanes.topic_headers(name, partition, key)
    await topic.send(key=key, value=value, headers=headers)
    metrics.delivery_queued(delivery["channel"], "topic")
    return _queued(delivery, ts, attempt, reason)


def _queued(
    delivery: dict[str, Any], ts: float, attempt: int | None, reason: str | None
) -> dict[str, Any]:
    fields: UpdateFields = {"delivery": delivery}
    if attempt is not None:
        fields["attempt"] = attempt
    if reason is not None:
        fields["reason"] = reason
    return status_update(delivery["channel"], "queued", ts, **fields)


async def requeue_overdue(active: frozenset[int], now: float) -> int:
    """Re-queue deliveries of partitions ``active`` whose outcome is overdue (the
    scheduler's reconciler: a safety net, at-least-once).

    The status table (this worker's partitions) knows every channel still
    ``queued``/``retrying``/``deferred`` with the delivery it is waiting for; the
    rows holding one are found through their index (``notifyd.stream.pending``).  One
    overdue by ``requeue_after_s`` is produced to its channel topic again: if it was
    in fact delivered the channel agent finds it in the ledger and re-states the
    outcome; if a crash or rebalance left its record unprocessed it is delivered now.
    """
    requeued: list[str] = []
    grace = settings.requeue_after_s
    data = status.data
    if not pending.current(data, active):
        await pending.rebuild(data, active)
    for nid in pending.overdue(active, now - grace):
        doc = data.get(nid)
        if not doc or doc.get("p") not in active:
            pending.note(nid, None)  # expired, or its partition moved on
            continue
        for channel, entry in doc.get("channels", {}).items():
            delivery = entry.get("delivery")
            if not delivery or entry.get("status") not in PENDING:
                continue
            due = max(entry.get("ts") or 0, entry.get("deliver_at") or 0)
            if now - due < grace:
                continue
            queued = await queue_delivery(
                delivery, now, attempt=delivery.get("attempt", 1),
                reason=f"requeued: no outcome {grace:.0f}s after it was due",
            )
            await statuses.publish_status(nid, [queued], user_id=doc.get("user_id"))
            requeued.append(f"{nid}:{channel}")
    if requeued:
        log.warning("reconcile.requeued", count=len(requeued), keys=requeued[:20])
        # Every key, for tracing what was re-queued (tests/integration/test_reliability).
        for i in range(20, len(requeued), 500):
            log.info("reconcile.requeued_keys", keys=requeued[i : i + 500])
    return len(requeued)
