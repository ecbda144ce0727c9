"""Delivery: a channel agent's record reaches its provider, once (the ledger), and a
failure is retried with backoff, dead-lettered or handed to the fallback chain."""

from __future__ import annotations

import random
import time
from typing import Any

import structlog
from faust.types import EventT

from notifyd import clock
from notifyd.config import Settings
from notifyd.errors import DeliveryError, failure_detail
from notifyd.metrics import metrics
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.records import Delivery, idempotency_scope
from notifyd.providers import registry
from notifyd.providers.base import Provider
from notifyd.stream import fallback
from notifyd.stream.app import settings
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.deadletter import dead_letter
from notifyd.stream.handlers.inapp import InboxProvider
from notifyd.stream.handlers.schedule import schedule
from notifyd.stream.handlers.status import TERMINAL, sent_update, status_update
from notifyd.stream.tables import cancels, ledger
from notifyd.stream.topics import deliveries_dlq_topic

log = structlog.stdlib.get_logger("notifyd.stream.handlers.deliver")


def build_provider(channel: str, settings: Settings) -> Provider:
    """The provider a channel agent calls: the inbox for in-app (a table of this core),
    else the channel's configured one (:func:`notifyd.providers.registry.build_provider`)."""
    if channel == "inapp":
        provider: Provider = InboxProvider()
        provider.name = "inapp"
        return provider
    return registry.build_provider(channel, settings)


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, at least the provider's Retry-After."""
    cap = min(settings.retry_max_s, settings.retry_base_s * (2 ** min(attempt - 1, 60)))
    delay = random.uniform(cap / 2, cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max_s))
    return delay


def _mark(key: str, state: str, partition: int) -> None:
    ledger[key] = {"s": state, "ts": clock.now(), "p": partition, "schema_version": SCHEMA_VERSION}


async def handle_delivery(ev: EventT[Any], provider: Provider) -> None:
    raw: bytes = ev.value
    partition = ev.message.partition
    try:
        delivery = Delivery.decode(raw)
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
        await statuses.publish_status(
            delivery.notification_id,
            [status_update(delivery.channel, "cancelled", clock.now(),
                           reason="cancelled: before it was sent", force=True)],
            user_id=delivery.user_id,
        )
        log.info("delivery.cancelled")
        return
    if done is not None and done["s"] in TERMINAL:
        if not (delivery.redrive and done["s"] in ("dead", "failed")):
            log.info("delivery.already_done", state=done["s"])
            # Re-state the outcome: a status update lost in a crash converges here, and
            # the reconciler stops re-queueing this delivery.
            await statuses.publish_status(
                delivery.notification_id,
                [status_update(delivery.channel, done["s"], done["ts"], attempt=delivery.attempt)],
                user_id=delivery.user_id,
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
    await statuses.publish_status(
        delivery.notification_id,
        [sent_update(delivery, receipt.provider_id, now, receipt.provider or provider.name)],
        user_id=delivery.user_id,
    )
    log.debug("delivery.sent", send_ms=round((time.monotonic() - started) * 1000, 2))


async def _failed(delivery: Delivery, err: DeliveryError, partition: int) -> None:
    key = delivery.idempotency_key
    now = clock.now()
    nid, ch, attempt = delivery.notification_id, delivery.channel, delivery.attempt
    reason = err.reason
    if not err.retriable:
        _mark(key, "failed", partition)
        failed = status_update(ch, "failed", now, attempt=attempt, reason=reason)
        await statuses.publish_status(nid, [failed], user_id=delivery.user_id)
        log.warning("delivery.failed", reason=err.reason)
        await fallback.on_delivery_failed(delivery, partition, "failed")
        return
    if delivery.attempt >= settings.retry_max_attempts:
        _mark(key, "dead", partition)
        dead = status_update(ch, "dead", now, attempt=attempt, reason=reason)
        await statuses.publish_status(nid, [dead], user_id=delivery.user_id)
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
    retry = delivery.replace(attempt=delivery.attempt + 1)
    schedule(retry, now + delay, partition, f"retry: {err.reason}")
    retrying = status_update(ch, "retrying", now, attempt=attempt, reason=reason,
                             deliver_at=now + delay, delivery=retry.to_dict())
    await statuses.publish_status(nid, [retrying], user_id=delivery.user_id)
    log.info("delivery.retrying", reason=err.reason, delay_s=round(delay, 3))
