"""Dispatch an accepted event: preferences and rules decide per channel, then each
channel's delivery is produced to its topic, deferred, or suppressed, and the first
status of the notification is published."""

from __future__ import annotations

import functools
from typing import Any

import structlog

from notifyd.domain.fallback import prepare as prepare_fallback
from notifyd.domain.rules import DEFER, SEND, ThrottlePolicy, decide, prune_history
from notifyd.domain.templating import TemplateStore
from notifyd.domain.timing import digest_spec
from notifyd.metrics import metrics
from notifyd.model.records import Delivery, Event
from notifyd.stream import fallback
from notifyd.stream.app import settings
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.inapp import deliver_inapp_inline
from notifyd.stream.handlers.queueing import queue_delivery
from notifyd.stream.handlers.schedule import schedule
from notifyd.stream.handlers.status import status_update
from notifyd.stream.tables import preferences, throttle

log = structlog.stdlib.get_logger("notifyd.stream.handlers.dispatch")

_templates: TemplateStore | None = None


def templates() -> TemplateStore:
    global _templates
    if _templates is None:
        _templates = TemplateStore(settings.templates_dir, settings.default_locale)
    return _templates


def throttle_policy() -> ThrottlePolicy:
    return _policy(settings.throttle_limit, settings.throttle_window_s, settings.throttle_mode)


@functools.lru_cache(maxsize=8)
def _policy(limit: int, window_s: int, mode: str) -> ThrottlePolicy:
    # One per settings: building the frozen dataclass per event was 1 % of ingest.
    return ThrottlePolicy(limit, window_s, mode)


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
    plan = prepare_fallback(event, prefs)  # callback_url, topic, fallback chain
    locale = (prefs or {}).get("locale") or settings.default_locale
    title, body, per_channel, html = _content(event, locale)
    if collect:
        from notifyd.stream import timing

        spec = digest_spec(event, prefs)
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
                updates.append(await queue_delivery(delivery.to_dict(), now))
            else:
                assert d.deliver_at is not None
                schedule(delivery, d.deliver_at, partition, d.reason or "deferred")
                updates.append(
                    status_update(d.channel, "deferred", now, reason=d.reason,
                                  deliver_at=d.deliver_at, delivery=delivery.to_dict())
                )
        else:
            updates.append(status_update(d.channel, "suppressed", now, reason=d.reason))
    await fallback.after_decisions(plan, event, decisions, partition, now, updates)
    await statuses.publish_status(
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
        user_id=event.user_id,
    )
    metrics.event_accepted()
    # Per-record lines are debug: at thousands of events/s they cost ~5% of the worker's
    # time; counts are in /metrics, and failures/dead letters still log at warning.
    log.debug(
        "event.accepted",
        decisions={d.channel: d.action for d in decisions},
    )
    return None
