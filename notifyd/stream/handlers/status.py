"""Status updates: what handlers publish, and their fold into the ``status`` table (one
document per notification, in its user's partition), here or through ``notifyd.status``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypedDict, Unpack

import structlog
from faust.types import EventT

from notifyd.domain.callbacks import channel_states, fold_callbacks
from notifyd.domain.callbacks import jobs_for as callback_jobs_for
from notifyd.metrics import metrics
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.records import Delivery, dumps, loads
from notifyd.stream.app import settings
from notifyd.stream.handlers.deadletter import dead_letter_failure
from notifyd.stream.pending import pending
from notifyd.stream.tables import current_event, held_partition, status
from notifyd.stream.topics import callbacks_topic, partition_for, status_topic

log = structlog.stdlib.get_logger("notifyd.stream.handlers.status")

TERMINAL = frozenset({"sent", "failed", "dead", "suppressed", "cancelled", "digested"})


class UpdateFields(TypedDict, total=False):
    """The optional fields of a status update.  A field is in the update only when
    given: absent and ``None`` differ (the fold keeps a channel's previous reason when
    an update has none, and records ``provider_id: None`` of a provider without ids)."""

    reason: str | None
    attempt: int
    deliver_at: float | None
    #: The delivery a pending channel waits on (``Delivery.to_dict()``), for the reconciler.
    delivery: dict[str, Any]
    provider_id: str | None
    provider: str
    latency_ms: float
    digest_id: str
    #: A cancel that may move a ``digested`` channel (see ``_may_move``).
    force: bool


def status_update(
    channel: str, state: str, ts: float, **fields: Unpack[UpdateFields]
) -> dict[str, Any]:
    """One channel's status update, as published to ``notifyd.status`` and folded.

    The one place an update is built, so its shape is stated once.
    """
    return {"channel": channel, "status": state, "ts": ts, **fields}


def sent_update(
    delivery: Delivery, provider_id: str | None, now: float, provider: str | None = None
) -> dict[str, Any]:
    """The status update of a delivery the provider accepted (``provider``: its
    configured name, the one that delivered in a failover chain)."""
    fields: UpdateFields = {
        "attempt": delivery.attempt,
        "provider_id": provider_id,
        "latency_ms": round((now - delivery.accepted_at) * 1000, 3),
    }
    if provider:
        fields["provider"] = provider
    return status_update(delivery.channel, "sent", now, **fields)


async def publish_status(
    nid: str,
    updates: list[dict[str, Any]],
    content: dict[str, Any] | None = None,
    callbacks: list[dict[str, Any]] | None = None,
    cancel: dict[str, Any] | None = None,
    *,
    user_id: str | None,
) -> None:
    """One status record (its model: ``notifyd.model.status.StatusRecord``), folded into
    the notification's row, which lives in its user's partition.

    Handled while this worker holds that partition (an event, delivery or command of
    the user: every topic is co-partitioned by user), the record is folded here and now,
    with no ``notifyd.status`` round trip.  Else (a timer, the reconciler, a callback
    outcome keyed by notification id) it goes to ``notifyd.status`` in the user's
    partition, whose owner folds it.  ``user_id`` None (a row from before rows carried
    it): the notification id's partition, where such rows were kept.
    """
    value: dict[str, Any] = {
        "notification_id": nid, "updates": updates, "schema_version": SCHEMA_VERSION
    }
    if content is not None:
        value["content"] = content
    if callbacks:
        value["callbacks"] = callbacks  # outcomes of delivery callbacks (notifyd.stream.callbacks)
    if cancel is not None:
        value["cancel"] = cancel
    metrics.status_updates(updates)
    partition = partition_for(user_id if user_id is not None else nid)
    raw = dumps(value)
    if held_partition() == partition:
        # The record as the topic would carry it: JSON types only (a provider's id may be
        # a str subclass, content may hold tuples) and nothing shared with the caller.
        jobs = fold_one(nid, loads(raw), partition)
        await enqueue_callbacks(jobs)
        return
    await status_topic.send(key=nid.encode(), value=raw, partition=partition)


def fold_one(nid: str, msg: dict[str, Any], partition: int) -> list[dict[str, Any]]:
    """Fold ``msg`` into the row of ``nid`` (in ``partition``, the current event's) and
    write it; returns the callback jobs the change calls for."""
    doc, jobs = _folded(status.get(nid), msg, partition)
    status[nid] = doc
    pending.note(nid, doc)
    return jobs


def _folded(
    doc: dict[str, Any] | None, msg: dict[str, Any], partition: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``doc`` with ``msg`` folded in, and the callback jobs the change calls for: the
    one fold of a record, here and now (:func:`fold_one`) or in a batch
    (:func:`fold_status_events`), which write the row themselves."""
    before = channel_states(doc)
    doc = fold_status(doc, msg, partition)
    return doc, callback_jobs_for(before, doc, settings.callback_url)


def fold_status(
    current: dict[str, Any] | None, msg: dict[str, Any], partition: int
) -> dict[str, Any]:
    doc = current or {"notification_id": msg["notification_id"], "channels": {}}
    doc["p"] = partition
    doc["schema_version"] = SCHEMA_VERSION  # rows folded before it existed: version 1
    if "content" in msg:
        doc.update(msg["content"])
    if "callbacks" in msg:
        fold_callbacks(doc, msg["callbacks"])
    channels: dict[str, Any] = doc["channels"]
    _fold_updates(channels, msg.get("updates", ()))
    cancel = msg.get("cancel")
    if cancel is not None:
        # Every channel not finished yet is cancelled, whichever worker holds it now.
        doc["cancelled_at"] = doc.get("cancelled_at") or cancel.get("at")
        _fold_updates(
            channels,
            [
                status_update(ch, "cancelled", cancel.get("at"),
                              reason="cancelled: before it was sent")
                for ch, cur in channels.items()
                if cur.get("status") not in TERMINAL
            ],
        )
    return doc


def _fold_updates(channels: dict[str, Any], updates: Iterable[dict[str, Any]]) -> None:
    for u in updates:
        ch = u["channel"]
        cur = channels.get(ch)
        if cur is not None and cur["status"] in TERMINAL and not _may_move(cur["status"], u):
            continue  # a re-processed record must not move a finished channel back
        entry = dict(cur or {})
        history = entry.get("history", [])
        history.append({k: u[k] for k in ("status", "ts", "reason") if k in u})
        entry.update({k: v for k, v in u.items() if k not in ("channel", "force")})
        if u["status"] in TERMINAL:
            entry.pop("delivery", None)  # kept only while an outcome is pending
        entry["history"] = history[-20:]
        entry["attempts"] = max(int(u.get("attempt") or 0), int((cur or {}).get("attempts", 0)))
        if u["status"] in ("sent", "queued", "retrying") and "reason" not in u:
            entry.pop("reason", None)
        channels[ch] = entry


def _may_move(current: str, update: dict[str, Any]) -> bool:
    """May a finished channel take ``update``?  Only to another finished state (a
    re-processed record never moves it back); ``cancelled`` only to ``sent`` (the send
    was already under way at the provider: the truth wins), ``digested`` only to
    ``cancelled`` forced by a cancel (the item left a still-open digest)."""
    new = update["status"]
    if new not in TERMINAL:
        return False
    if current == "cancelled":
        return new == "sent"
    if current == "digested":
        return new == "cancelled" and bool(update.get("force"))
    return True


async def fold_status_events(events: Sequence[EventT[Any]]) -> int:
    """Fold a batch of ``notifyd.status`` records; one table write per notification.

    A notification's queued and sent updates usually arrive close together, so under
    load this writes one changelog record where one per update would be written.
    Records of one notification share a key, hence a partition, and keep their order.
    A record that cannot be folded is dead-lettered (``internal_error``) before the
    batch is acked; the rest of the batch is kept.  Returns the number of table writes.
    """
    folded: dict[str, tuple[EventT[Any], dict[str, Any]]] = {}
    failed: list[tuple[EventT[Any], Exception]] = []
    callback_jobs: list[dict[str, Any]] = []
    for ev in events:
        # In a batch the current event is whichever came last: point it at this record.
        with current_event(ev):
            try:
                msg = loads(ev.value)
                nid = msg["notification_id"]
                prev = folded.get(nid)
                doc, jobs = _folded(
                    prev[1] if prev is not None else status.get(nid), msg, ev.message.partition
                )
                folded[nid] = (ev, doc)
                callback_jobs += jobs
            except Exception as exc:  # one bad record must not lose the rest of the batch
                m = ev.message
                log.exception(
                    "status.record_failed", topic=m.topic, partition=m.partition, offset=m.offset
                )
                failed.append((ev, exc))
    for nid, (ev, doc) in folded.items():
        with current_event(ev):
            status[nid] = doc
        pending.note(nid, doc)
    await enqueue_callbacks(callback_jobs)  # before the batch is acked: at least once
    for bad, error in failed:
        await dead_letter_failure(bad, error)
    return len(folded)


async def enqueue_callbacks(jobs: list[dict[str, Any]]) -> None:
    """The fold's callback jobs to ``notifyd.callbacks`` (keyed by notification id), where
    the callbacks agent (``notifyd.stream.callbacks``) POSTs them."""
    for job in jobs:
        nid = job["payload"]["notification_id"]
        await callbacks_topic.send(key=nid.encode(), value=dumps(job))
