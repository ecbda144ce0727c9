"""What the agents do with each message.  Agents (``notifyd.stream.agents``) are thin loops
over these functions, so the logic is testable with Faust's ``test_context()``.

Guarantees (README "Reliability"): processing is at-least-once.  Re-processing the
same Kafka record is harmless because every output is idempotent downstream: the
notification id is derived from ``(user_id, event_id)``, channel agents consult the
delivery ledger (``<notification_id>:<channel>``) before sending, providers get that
key as an idempotency key, and the status fold never moves a terminal state back.  A
*re-sent* event (same ``user_id`` and ``event_id``, another Kafka record) is dropped by
``seen``.  A record that cannot be handled ends in a dead-letter topic with a reason,
never in a log line only (:func:`dead_letter`, :func:`dead_letter_failure`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from aiokafka.partitioner import murmur2
from faust.types import EventT, TopicT

from notifyd import clock
from notifyd.domain.rules import DEFER, SEND, ThrottlePolicy, decide, prune_history
from notifyd.domain.templating import TemplateStore
from notifyd.errors import DeliveryError, InvalidEvent, failure_detail
from notifyd.metrics import metrics
from notifyd.model.records import (
    CancelRequest,
    Delivery,
    Event,
    dumps,
    idempotency_scope,
    legacy_notification_id_for,
    loads,
    parse_input,
)
from notifyd.providers.base import Provider
from notifyd.stream import audience, fallback
from notifyd.stream.app import settings
from notifyd.stream.callbacks import channel_states, fold_callbacks
from notifyd.stream.callbacks import enqueue as enqueue_callbacks
from notifyd.stream.callbacks import jobs_for as callback_jobs_for
from notifyd.stream.headers import header_value
from notifyd.stream.tables import (
    any_partition,
    cancels,
    current_event,
    inbox,
    ledger,
    preferences,
    scheduled,
    seen,
    status,
    throttle,
)
from notifyd.stream.topics import (
    control_topic,
    deliver_topics,
    deliveries_dlq_topic,
    events_dlq_topic,
    names,
    rekeyed_topic,
    status_topic,
)

log = structlog.stdlib.get_logger("notifyd.stream.pipeline")

TERMINAL = frozenset({"sent", "failed", "dead", "suppressed", "cancelled", "digested"})
ORIGIN_HEADER = "notifyd-origin"
_templates: TemplateStore | None = None


def templates() -> TemplateStore:
    global _templates
    if _templates is None:
        _templates = TemplateStore(settings.templates_dir, settings.default_locale)
    return _templates


def partition_for(key: str, partitions: int | None = None) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for a UTF-8 key."""
    n = partitions or settings.topic_partitions
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n


def throttle_policy() -> ThrottlePolicy:
    return ThrottlePolicy(
        settings.throttle_limit, settings.throttle_window_s, settings.throttle_mode
    )


#: Backoff between attempts to produce a dead letter: doubles from the base to the cap.
DEAD_LETTER_RETRY_BASE_S = 0.5
DEAD_LETTER_RETRY_MAX_S = 30.0


def dlq_for(source_topic: str) -> TopicT:
    """The dead-letter topic for a record of ``source_topic`` that cannot be handled.

    Producers' input (events, re-keyed events, preferences) goes to the events DLQ,
    whose re-drive sends the original bytes back through validation; notifyd's own
    records (deliveries, status updates, control messages) go to the deliveries DLQ.
    The ``notifyd-source-topic`` header tells them apart.
    """
    if source_topic in (names.events, names.events_rekeyed, names.preferences):
        return events_dlq_topic
    return deliveries_dlq_topic


def hold(ev: EventT[Any]) -> None:
    """Keep ``ev``'s offset from ever being committed by this process.

    For a record whose outcome is not written when its handler is cancelled (the
    worker stops): Faust's stream acks the current record in a ``finally`` even when
    the body raises, so an extra reference is what keeps the offset uncommitted, and
    the record is consumed again after the restart (at-least-once)."""
    ev.message.incref()


async def dead_letter(
    ev: EventT[Any], raw: bytes | None, reason: str, topic: TopicT | None = None
) -> None:
    """Original bytes to a dead-letter topic (default ``notifyd.events.dlq``), the reason
    and origin in headers; returns once the broker has acknowledged the dead letter.

    A failed produce is retried with capped exponential backoff for as long as the worker
    runs, rather than raised: an exception out of the handler would not stop the record
    from being acked (Faust acks in the stream's ``finally``; the status batch is acked
    by ``take_events``), so the record would be lost, while retrying keeps its partition
    (and only it) waiting until the broker takes the dead letter.  If the worker stops
    meanwhile the record is :func:`hold`-ed and handled again after the restart.
    """
    msg = ev.message
    dlq = topic if topic is not None else events_dlq_topic
    headers = [
        ("notifyd-reason", reason.encode()),
        ("notifyd-source-topic", msg.topic.encode()),
        ("notifyd-source-partition", str(msg.partition).encode()),
        ("notifyd-source-offset", str(msg.offset).encode()),
        ("notifyd-failed-at", str(clock.now()).encode()),
    ]
    attempt = 0
    try:
        while True:
            try:
                fut = await dlq.send(
                    key=msg.key, value=raw if raw is not None else b"", headers=headers
                )
                await fut
                break
            except Exception as exc:
                attempt += 1
                delay = min(
                    DEAD_LETTER_RETRY_MAX_S, DEAD_LETTER_RETRY_BASE_S * 2 ** min(attempt - 1, 10)
                )
                log.error(
                    "dead_letter.produce_failed",
                    reason=reason,
                    error=failure_detail(exc),
                    attempt=attempt,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
    except asyncio.CancelledError:
        hold(ev)
        raise
    metrics.event_dead_lettered(reason, dlq.get_topic_name())
    log.warning("event.dead_lettered", reason=reason, dlq=dlq.get_topic_name())


def raw_value(ev: EventT[Any]) -> bytes | None:
    """The record's value as it came from Kafka (every notifyd topic is raw bytes)."""
    value = ev.value
    if value is None or isinstance(value, bytes):
        return value
    raw = ev.message.value
    return raw if isinstance(raw, bytes) or raw is None else None


async def dead_letter_failure(ev: EventT[Any], exc: BaseException) -> None:
    """Dead-letter a record whose handler raised something nobody expected.

    The last resort of every agent (``agents.common._handle``, the status fold): a bug
    or an outage while handling one record must neither stop the partition nor lose
    the record in a log line.  The reason is ``internal_error: <Type>: <message>``; the
    original bytes go to :func:`dlq_for` the source topic, from where an operator
    re-drives them once the cause is fixed.
    """
    await dead_letter(
        ev, raw_value(ev), f"internal_error: {failure_detail(exc)}", dlq_for(ev.message.topic)
    )


# --------------------------------------------------------------------------------------
# Ingest: notifyd.events / notifyd.events.rekeyed
# --------------------------------------------------------------------------------------


async def on_key_partition(ev: EventT[Any], raw: bytes | None, key: str) -> bool:
    """Whether an ingest record stands on ``key``'s partition, so the caller goes on.

    If not, it is handled here and the caller stops: a record already rekeyed is
    dead-lettered (only possible if topics were created with different partition
    counts); any other (a producer keyed by something else, or used another
    partitioner) takes one hop through the rekeyed topic to the key's partition, so
    state is partition-local, with its first place as the origin header.
    """
    msg = ev.message
    expected = partition_for(key)
    if msg.partition == expected:
        return True
    if msg.topic == rekeyed_topic.get_topic_name():
        await dead_letter(
            ev, raw, f"partition_mismatch: rekeyed to {msg.partition}, expected {expected}"
        )
        return False
    origin = f"{msg.topic}/{msg.partition}/{msg.offset}"
    await rekeyed_topic.send(
        key=key.encode(), value=raw, headers=[(ORIGIN_HEADER, origin.encode())]
    )
    return False


def record_origin(ev: EventT[Any]) -> str:
    """Where an ingest record was first read: its origin header once rekeyed, else itself."""
    msg = ev.message
    return header_value(msg.headers, ORIGIN_HEADER) or f"{msg.topic}/{msg.partition}/{msg.offset}"


async def handle_event(ev: EventT[Any]) -> None:
    from notifyd.stream import timing

    msg = ev.message
    raw: bytes | None = ev.value
    timer = header_value(msg.headers, timing.TIMER_HEADER)
    if timer is not None and msg.topic != names.events:  # producers' topic: not trusted
        await timing.fire(ev, timer)  # a schedule or digest window came due (notifyd.stream.timing)
        return
    metrics.event_received(msg.topic)
    addressed_to_topic = audience.topic_event(raw)  # None unless "topic" without user_id
    if addressed_to_topic is not None:
        await audience.handle_topic_event(ev, addressed_to_topic)
        return
    try:
        event = parse_input(raw, settings.max_event_bytes)
    except InvalidEvent as exc:
        await dead_letter(ev, raw, exc.reason)
        return
    structlog.contextvars.bind_contextvars(
        user_id=event.user_id, notification_id=event.notification_id, event_id=event.event_id
    )
    if not await on_key_partition(ev, raw, event.user_id):
        return
    origin = record_origin(ev)
    now = clock.now()
    if isinstance(event, CancelRequest):
        await timing.cancel(event, msg.partition, now)
        return
    prev = _scoped_row(seen.get(event.dedupe_key))
    if prev is None:
        old = _legacy_row(seen.get(event.event_id))
        if old is not None and old[2] == origin:
            # The very record an older worker processed, replayed: same ids as then.
            event.legacy_ids = True
            structlog.contextvars.bind_contextvars(notification_id=event.notification_id)
            prev = old
        elif old is not None and legacy_duplicate(event):
            log.info("event.duplicate", first_seen=old[0], first_origin=old[2], legacy=True)
            return
    if prev is not None and prev[2] != origin:
        log.info("event.duplicate", first_seen=prev[0], first_origin=prev[2])
        return
    digest_key: str | None = None
    try:
        if cancels.get(event.dedupe_key) is not None:
            await timing.drop_cancelled_event(event, now)  # its cancel came first
        elif (due := event.due(now, settings.max_schedule_days)) is not None and due > now:
            key = timing.event_key(event.user_id, event.event_id)
            if prev is None:
                assert raw is not None
                await timing.schedule_event(event, loads(raw), due, msg.partition, now)
            elif (row := scheduled.get(key)) is not None:
                # The same record replayed: keep the due time it got the first time.
                await timing.schedule_event(event, row["event"], row["due"], msg.partition,
                                            row.get("scheduled_at", now))
            # else: replayed after its schedule fired or was cancelled: nothing to do
        else:
            digest_key = await process_event(
                event, msg.partition, now, produced_at=msg.timestamp,
                digest_key=prev[4] if prev is not None and len(prev) > 4 else None,
            )
    except InvalidEvent as exc:  # e.g. a template variable missing from data
        await dead_letter(ev, raw, exc.reason)
        return
    if prev is None or (digest_key is not None and len(prev) < 5):
        # Marked after the outputs: a crash before this line replays the record,
        # which is harmless (outputs are idempotent downstream).  The digest an event
        # went into is kept with it, so a cancel can take it out again.
        mark: list[Any] = [now, msg.partition, origin, event.user_id]
        if prev is not None:
            mark = list(prev[:4])
        seen[event.dedupe_key] = [*mark, digest_key] if digest_key is not None else mark


# ``seen`` rows: ``[first_seen, partition, origin, user_id]`` under
# ``records.idempotency_scope(user_id, event_id)``; rows written before ids were scoped
# to the user have no user_id and are keyed by the bare event id ("legacy" rows, gone
# after ``NOTIFYD_DEDUPE_TTL_S``).  A legacy row whose event id happens to read like a
# scoped key is told apart by its length.


def _scoped_row(row: list[Any] | None) -> list[Any] | None:
    return row if row is not None and len(row) >= 4 else None


def _legacy_row(row: list[Any] | None) -> list[Any] | None:
    return row if row is not None and len(row) == 3 else None


def legacy_duplicate(event: Event) -> bool:
    """Is ``event`` a re-send of the one a legacy ``seen`` row (its bare event id) records?

    Only if that was the same user's event; the legacy row does not say whose it was, so
    this looks for evidence under the legacy notification id: the status document
    (``user_id``), when this worker holds its partition, else the user's own inbox or
    throttle history holding that id (both in the user's partition, i.e. here).  With no
    evidence the event counts as new and gets a scoped id: a re-send straddling the
    upgrade may then be delivered twice, which at-least-once allows, where treating it as
    a duplicate could drop another user's event, the loss scoping the ids prevents.
    """
    legacy_nid = legacy_notification_id_for(event.event_id)
    with any_partition():
        doc = status.get(legacy_nid)
    if doc is not None and doc.get("user_id") is not None:
        return bool(doc["user_id"] == event.user_id)
    box = inbox.get(event.user_id) or {}
    if any(it.get("id") == legacy_nid for it in box.get("items", ())):
        return True
    history = throttle.get(event.user_id) or {}
    return any(len(h) > 1 and h[1] == legacy_nid for sends in history.values() for h in sends)


def _content(
    event: Event, locale: str | None
) -> tuple[str, str, dict[str, tuple[str, str]], str | None]:
    """(title, body, per-channel overrides, HTML part of the e-mail or None)."""
    if event.template:
        r = templates().render(event.template, event.data, locale)
        return r.title, r.body, r.per_channel, r.html
    return event.title or "", event.body or "", {}, None


async def process_event(
    event: Event,
    partition: int,
    now: float,
    produced_at: float | None = None,
    collect: bool = True,
    digest_key: str | None = None,
) -> str | None:
    """Rules, fan-out and status of one event at ``now``.  Returns the row key of the
    digest it went into instead (``notifyd.stream.timing``), else None.  ``digest_key``: the
    digest a replayed record already went into (its ``seen`` row)."""
    prefs = preferences.get(event.user_id)
    plan = fallback.prepare(event, prefs)  # callback_url, topic, fallback chain
    locale = (prefs or {}).get("locale") or settings.default_locale
    title, body, per_channel, html = _content(event, locale)
    if collect:
        from notifyd.stream import timing

        spec = timing.digest_spec(event, prefs)
        if spec is not None:
            return await timing.collect(event, spec, prefs, title, partition, now, digest_key)
    policy = throttle_policy()
    if policy.limit > 0:
        stored = throttle.get(event.user_id) or {}
        history: dict[str, list[list[Any]]] = {
            ch: prune_history(h, now, settings.throttle_window_s) for ch, h in stored.items()
        }
        decisions = decide(event, prefs, now, history, policy)
        kept = {ch: h for ch, h in history.items() if h}
        if kept != stored:  # a table write is a changelog record: only when it changed
            throttle[event.user_id] = kept
    else:  # throttle off: no per-event bookkeeping
        decisions = decide(event, prefs, now, {}, policy)
    nid = event.notification_id
    updates: list[dict[str, Any]] = []
    for d in decisions:
        t, b = per_channel.get(d.channel, (title, body))
        if d.action == SEND or d.action == DEFER:
            delivery = Delivery(
                notification_id=nid,
                event_id=event.event_id,
                user_id=event.user_id,
                channel=d.channel,
                title=t,
                body=b,
                category=event.category,
                priority=event.priority,
                address=d.address,
                tokens=d.tokens or [],
                data=event.data,
                locale=locale,
                accepted_at=now,
                produced_at=produced_at,
                html=html if d.channel == "email" else None,
            )
            if d.action == SEND and d.channel == "inapp":
                updates.append(deliver_inapp_inline(delivery, now))
            elif d.action == SEND:
                await deliver_topics[d.channel].send(
                    key=event.user_id.encode(), value=delivery.dumps()
                )
                updates.append(
                    {
                        "channel": d.channel,
                        "status": "queued",
                        "ts": now,
                        "delivery": delivery.to_dict(),
                    }
                )
            else:
                assert d.deliver_at is not None
                schedule(delivery, d.deliver_at, partition, d.reason or "deferred")
                updates.append(
                    {
                        "channel": d.channel,
                        "status": "deferred",
                        "reason": d.reason,
                        "deliver_at": d.deliver_at,
                        "ts": now,
                        "delivery": delivery.to_dict(),
                    }
                )
        else:
            updates.append(
                {"channel": d.channel, "status": "suppressed", "reason": d.reason, "ts": now}
            )
    await fallback.after_decisions(plan, event, decisions, partition, now, updates)
    await publish_status(
        nid,
        updates,
        content={
            "event_id": event.event_id,
            "user_id": event.user_id,
            "category": event.category,
            "priority": event.priority,
            "title": title,
            "body": body,
            "template": event.template,
            "created_at": event.created_at,
            "accepted_at": now,
            **plan.content,
        },
    )
    metrics.event_accepted()
    # Per-record lines are debug: at thousands of events/s they cost ~5% of the worker's
    # time; counts are in /metrics, and failures/dead letters still log at warning.
    log.debug(
        "event.accepted",
        decisions={d.channel: d.action for d in decisions},
    )
    return None


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


def sent_update(
    delivery: Delivery, provider_id: str | None, now: float, provider: str | None = None
) -> dict[str, Any]:
    """The status update of a delivery the provider accepted (``provider``: its
    configured name, the one that delivered in a failover chain)."""
    update = {
        "channel": delivery.channel,
        "status": "sent",
        "attempt": delivery.attempt,
        "ts": now,
        "provider_id": provider_id,
        "latency_ms": round((now - delivery.accepted_at) * 1000, 3),
    }
    if provider:
        update["provider"] = provider
    return update


async def publish_status(
    nid: str,
    updates: list[dict[str, Any]],
    content: dict[str, Any] | None = None,
    callbacks: list[dict[str, Any]] | None = None,
    cancel: dict[str, Any] | None = None,
) -> None:
    value: dict[str, Any] = {"notification_id": nid, "updates": updates}
    if content is not None:
        value["content"] = content
    if callbacks:
        value["callbacks"] = callbacks  # outcomes of delivery callbacks (notifyd.stream.callbacks)
    if cancel is not None:
        value["cancel"] = cancel
    await status_topic.send(key=nid.encode(), value=dumps(value))
    metrics.status_updates(updates)


# --------------------------------------------------------------------------------------
# Scheduling (quiet hours, throttle deferral, retry backoff) without blocking partitions
# --------------------------------------------------------------------------------------


def schedule(delivery: Delivery, due: float, partition: int, reason: str) -> None:
    from notifyd.stream.scheduler import scheduler  # local import: scheduler imports this module

    key = delivery.idempotency_key
    scheduled[key] = {"due": due, "p": partition, "delivery": delivery.to_dict(), "reason": reason}
    scheduler.push(due, key, partition)


async def release(key: str, entry: dict[str, Any]) -> None:
    """Hand a due delivery to its channel topic, then ask the owner to drop the entry.

    A fallback step (``notifyd.stream.fallback``) has its condition checked on its partition
    first.  A scheduled event or a digest window (``notifyd.stream.timing``) becomes a timer
    record to the ingest agent of the user's partition instead, which handles it and
    drops the row.
    """
    if "fallback" in entry:  # a fallback step: its condition is checked on its partition
        await fallback.release_step(key, entry)
        return
    kind = entry.get("kind")
    if kind is not None:
        from notifyd.stream.timing import TIMER_HEADER

        await rekeyed_topic.send(
            key=str(entry["user_id"]).encode(),
            value=dumps({"key": key, "due": entry["due"]}),
            headers=[(TIMER_HEADER, str(kind).encode())],
        )
        return
    d = entry["delivery"]
    await deliver_topics[d["channel"]].send(key=d["user_id"].encode(), value=dumps(d))
    await publish_status(
        d["notification_id"],
        [
            {
                "channel": d["channel"],
                "status": "queued",
                "attempt": d.get("attempt", 1),
                "ts": clock.now(),
                "delivery": d,
            }
        ],
    )
    await control_topic.send(
        key=d["user_id"].encode(),
        value=dumps({"op": "unschedule", "id": key, "due": entry["due"]}),
    )


# --------------------------------------------------------------------------------------
# Channel agents
# --------------------------------------------------------------------------------------


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, at least the provider's Retry-After."""
    cap = min(settings.retry_max_s, settings.retry_base_s * (2 ** min(attempt - 1, 60)))
    delay = random.uniform(cap / 2, cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max_s))
    return delay


def _mark(key: str, state: str, partition: int) -> None:
    ledger[key] = {"s": state, "ts": clock.now(), "p": partition}


async def handle_delivery(ev: EventT[Any], provider: Provider) -> None:
    raw: bytes = ev.value
    partition = ev.message.partition
    try:
        delivery = Delivery.from_dict(loads(raw))
    except Exception as exc:  # only notifyd writes these topics; a bad one is a bug
        log.error("delivery.undecodable", error=str(exc))
        await dead_letter(ev, raw, f"undecodable: {failure_detail(exc)}", deliveries_dlq_topic)
        return
    structlog.contextvars.bind_contextvars(
        user_id=delivery.user_id,
        notification_id=delivery.notification_id,
        channel=delivery.channel,
        attempt=delivery.attempt,
    )
    key = delivery.idempotency_key
    done = ledger.get(key)
    if done is None and cancels.get(idempotency_scope(delivery.user_id, delivery.event_id)):
        # Cancelled while queued, deferred or retrying: not sent (notifyd.stream.timing).
        _mark(key, "cancelled", partition)
        await publish_status(
            delivery.notification_id,
            [{"channel": delivery.channel, "status": "cancelled", "ts": clock.now(),
              "reason": "cancelled: before it was sent", "force": True}],
        )
        log.info("delivery.cancelled")
        return
    if done is not None and done["s"] in TERMINAL:
        if not (delivery.redrive and done["s"] in ("dead", "failed")):
            log.info("delivery.already_done", state=done["s"])
            # Re-state the outcome: a status update lost in a crash converges here, and
            # the reconciler stops re-queueing this delivery.
            await publish_status(
                delivery.notification_id,
                [
                    {
                        "channel": delivery.channel,
                        "status": done["s"],
                        "ts": done["ts"],
                        "attempt": delivery.attempt,
                    }
                ],
            )
            return
        log.info("delivery.redriven", previous=done["s"])
    started = time.monotonic()
    metrics.delivery_attempted(delivery)
    try:
        provider.check(delivery)
        receipt = await provider.send(delivery)
    except DeliveryError as err:
        await _failed(delivery, err, partition)
        return
    except Exception as exc:  # a provider bug must not kill the channel agent
        log.exception("delivery.provider_crashed")
        await _failed(
            delivery,
            DeliveryError(f"provider_error: {type(exc).__name__}: {exc}", retriable=True),
            partition,
        )
        return
    now = clock.now()
    metrics.delivery_sent(delivery)
    _mark(key, "sent", partition)
    await publish_status(
        delivery.notification_id,
        [sent_update(delivery, receipt.provider_id, now, receipt.provider or provider.name)],
    )
    log.debug("delivery.sent", send_ms=round((time.monotonic() - started) * 1000, 2))


async def _failed(delivery: Delivery, err: DeliveryError, partition: int) -> None:
    key = delivery.idempotency_key
    now = clock.now()
    base = {
        "channel": delivery.channel,
        "attempt": delivery.attempt,
        "ts": now,
        "reason": err.reason,
    }
    if not err.retriable:
        _mark(key, "failed", partition)
        await publish_status(delivery.notification_id, [{**base, "status": "failed"}])
        log.warning("delivery.failed", reason=err.reason)
        await fallback.on_delivery_failed(delivery, partition, "failed")
        return
    if delivery.attempt >= settings.retry_max_attempts:
        _mark(key, "dead", partition)
        await publish_status(delivery.notification_id, [{**base, "status": "dead"}])
        await deliveries_dlq_topic.send(
            key=delivery.user_id.encode(),
            value=delivery.dumps(),
            headers=[
                ("notifyd-reason", err.reason.encode()),
                ("notifyd-attempts", str(delivery.attempt).encode()),
            ],
        )
        metrics.delivery_dead(deliveries_dlq_topic.get_topic_name())
        log.warning("delivery.dead", reason=err.reason)
        await fallback.on_delivery_failed(delivery, partition, "dead")
        return
    delay = backoff(delivery.attempt, err.retry_after)
    retry = Delivery.from_dict({**delivery.to_dict(), "attempt": delivery.attempt + 1})
    schedule(retry, now + delay, partition, f"retry: {err.reason}")
    await publish_status(
        delivery.notification_id,
        [{**base, "status": "retrying", "deliver_at": now + delay, "delivery": retry.to_dict()}],
    )
    log.info("delivery.retrying", reason=err.reason, delay_s=round(delay, 3))


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
    from notifyd.web.realtime import hub  # live inbox streams (GET /api/v1/notifications/stream)

    hub.publish(delivery.user_id, items[0], box["unread"])
    return delivery.notification_id


# --------------------------------------------------------------------------------------
# Status fold: notifyd.status -> status table
# --------------------------------------------------------------------------------------


def fold_status(
    current: dict[str, Any] | None, msg: dict[str, Any], partition: int
) -> dict[str, Any]:
    doc = current or {"notification_id": msg["notification_id"], "channels": {}}
    doc["p"] = partition
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
                {"channel": ch, "status": "cancelled", "ts": cancel.get("at"),
                 "reason": "cancelled: before it was sent"}
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
                doc = prev[1] if prev is not None else status.get(nid)
                before = channel_states(doc)
                folded[nid] = (ev, fold_status(doc, msg, ev.message.partition))
                callback_jobs += callback_jobs_for(before, folded[nid][1], settings.callback_url)
            except Exception as exc:  # one bad record must not lose the rest of the batch
                m = ev.message
                log.exception(
                    "status.record_failed", topic=m.topic, partition=m.partition, offset=m.offset
                )
                failed.append((ev, exc))
    for nid, (ev, doc) in folded.items():
        with current_event(ev):
            status[nid] = doc
    await enqueue_callbacks(callback_jobs)  # before the batch is acked: at least once
    for bad, error in failed:
        await dead_letter_failure(bad, error)
    return len(folded)


# --------------------------------------------------------------------------------------
# Preferences and control messages
# --------------------------------------------------------------------------------------


async def handle_control(ev: EventT[Any]) -> None:
    msg = loads(ev.value)
    op = msg.get("op")
    if op == "unschedule":
        entry = scheduled.get(msg["id"])
        if entry is not None and entry["due"] == msg["due"]:
            del scheduled[msg["id"]]
    elif op == "expire":
        table = {"seen": seen, "ledger": ledger, "status": status, "cancels": cancels}[
            msg["table"]
        ]
        for key in msg["keys"]:
            if table.get(key) is not None:
                del table[key]
    elif op == "fallback_step":
        await fallback.run_step(msg, ev.message.partition)
    elif op == "inbox":
        from notifyd.stream.waiters import waiters

        box = apply_inbox_op(msg)
        if box is not None and msg.get("action") == "read":  # cancels fallback steps
            ids = [it["id"] for it in box["items"]] if msg.get("all") else msg.get("ids") or []
            await fallback.on_read(msg["user_id"], list(ids))
        if msg.get("request_id"):
            waiters.resolve(str(msg["request_id"]), box)
    else:
        log.warning("control.unknown_op", op=str(op)[:50])


def apply_inbox_op(msg: dict[str, Any]) -> dict[str, Any] | None:
    """Mark read/unread, archive/unarchive or delete inbox items of one user."""
    user_id: str = msg["user_id"]
    box = inbox.get(user_id)
    if box is None:
        return None
    ids = set(msg.get("ids") or ())
    action = msg.get("action")
    items: list[dict[str, Any]] = box["items"]
    if action == "delete":
        items[:] = [it for it in items if it["id"] not in ids]
    else:
        field, value = {
            "read": ("read", True),
            "unread": ("read", False),
            "archive": ("archived", True),
            "unarchive": ("archived", False),
        }[str(action)]
        for it in items:
            if it["id"] in ids or msg.get("all"):
                it[field] = value
    box["unread"] = sum(1 for it in items if not it["read"] and not it["archived"])
    inbox[user_id] = box
    return box


async def handle_preferences(ev: EventT[Any]) -> None:
    """``{"op": "put"|"patch"|"delete", "user_id", "fields", "request_id"?}``, or
    ``{"op": "opt_out", "user_id", "category", "channel"}`` (an unsubscribe link): adds
    that one opt-out to the current document here, on the owner, so no other write is
    lost to a read-modify-write elsewhere."""
    from notifyd.model.records import (
        InvalidPreferences,
        add_opt_out,
        merge_preferences,
        validate_preferences,
    )
    from notifyd.stream.waiters import waiters

    raw: bytes | None = ev.value
    try:
        msg = loads(raw or b"")
        if not isinstance(msg, dict) or not isinstance(msg.get("user_id"), str):
            raise InvalidPreferences("message must be an object with a string user_id")
        user_id: str = msg["user_id"]
        op = msg.get("op", "put")
        if op not in ("put", "patch", "delete", "opt_out"):
            raise InvalidPreferences(f"unknown op {str(op)[:20]!r}")
        if partition_for(user_id) != ev.message.partition:
            raise InvalidPreferences("message key must be the user_id")
        write = op
        if op == "opt_out":
            added = add_opt_out(preferences.get(user_id), msg.get("category"), msg.get("channel"))
            write = "patch" if added is not None else "none"
            fields = {} if added is None else {"opt_out": added}
        else:
            fields = (
                {}
                if op == "delete"
                else validate_preferences(user_id, msg.get("fields"), partial=(op == "patch"))
            )
    except (InvalidPreferences, ValueError) as exc:
        await dead_letter(ev, raw, f"invalid_preferences: {exc}")
        return
    if write == "none":  # already opted out: answer the current document, write nothing
        doc = preferences.get(user_id)
    elif write == "delete":
        if preferences.get(user_id) is not None:
            del preferences[user_id]
        doc = None
    else:
        base = None if write == "put" else preferences.get(user_id)
        doc = merge_preferences(base, user_id, fields, clock.now())
        preferences[user_id] = doc
    if msg.get("request_id"):
        waiters.resolve(str(msg["request_id"]), doc)
    log.info("preferences.updated", user_id=user_id, op=op)
