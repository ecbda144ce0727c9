"""The bench's events and the HTTP bodies notifyd makes of them on its webhook and push
channels, as plain dicts.

Shared by the bench and the processes that stand in for notifyd's sending side (the
sink-capacity client :mod:`.sinkload`, the Quix Streams peer :mod:`.quixpeer`), so
their requests have the shape and size of the worker's own
(:func:`notifyd.providers.webhook.webhook_payload`,
:class:`notifyd.providers.httpapi.PushProvider`; ``tests/unit/test_bench_http.py``
holds them to it).  ``data`` is the event's ``{run, seq, t0}``: what the bench's sink
counts deliveries by.  Pure and light: no notifyd runtime, no third-party imports.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

#: What the bench's workers (``NOTIFYD_WEBHOOK_SECRET``) and the Quix peer sign webhooks with.
WEBHOOK_SECRET = "whsec-bench-0123456789abcdef0123456789"
#: Sink paths of the two HTTP channels (counted separately: see :class:`.sink.Sink`).
WEBHOOK_PATH = "/hook/webhook"
PUSH_PATH = "/hook/push"
#: The channels of the phases ``http`` and ``quix``.
HTTP_CHANNELS: tuple[str, ...] = ("webhook", "push")


def event_doc(
    run: str,
    seq: int,
    user: str,
    channels: Sequence[str] = ("webhook", "inapp"),
    t0: float | None = None,
) -> dict[str, Any]:
    """A notifyd event of the bench: ``data.t0`` is the produce time (now by default)."""
    return {
        "event_id": f"{run}-{seq}",
        "user_id": user,
        "category": "bench",
        "title": "Benchmark",
        "body": f"Event {seq} of run {run}",
        "channels": list(channels),
        "data": {"run": run, "seq": seq, "t0": time.time() if t0 is None else t0},
    }


def bench_prefs(user: str, sink_url: str) -> dict[str, Any]:
    """The preferences of a user of the phases ``http`` and ``quix``: a webhook URL and
    one push device token, both reaching the sink (push through ``NOTIFYD_PUSH_API_URL``)."""
    return {
        "webhook_url": sink_url + WEBHOOK_PATH,
        "push_tokens": [f"device-{user}"],
        "email": f"{user}@example.com",
        "locale": "en",
    }


def _notification_id(event: Mapping[str, Any]) -> str:
    return f"n-{event['event_id']}"


def webhook_body(event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of the webhook notifyd POSTs for ``event`` (first attempt)."""
    return {
        "notification_id": _notification_id(event),
        "event_id": event["event_id"],
        "user_id": event["user_id"],
        "category": event.get("category", "general"),
        "priority": event.get("priority", "normal"),
        "title": event.get("title", ""),
        "body": event.get("body", ""),
        "data": event.get("data") or {},
        "channel": "webhook",
        "attempt": 1,
    }


def push_body(event: Mapping[str, Any], tokens: Sequence[str]) -> dict[str, Any]:
    """The JSON body notifyd POSTs to the push API for ``event`` and device ``tokens``."""
    return {
        "tokens": [t for t in tokens if t],
        "title": event.get("title", ""),
        "body": event.get("body", ""),
        "data": event.get("data") or {},
        "idempotency_key": idempotency_key(event, "push"),
    }


def idempotency_key(event: Mapping[str, Any], channel: str) -> str:
    """The ``Idempotency-Key`` of a delivery (notifyd's ``<notification id>:<channel>``)."""
    return f"{_notification_id(event)}:{channel}"


def capacity_request(run: str, i: int) -> tuple[str, dict[str, Any]]:
    """Request ``i`` of the sink-capacity load: (path, body).  Two per event, as notifyd
    sends them: even ``i`` the webhook of event ``i // 2``, odd ``i`` its push."""
    seq = i // 2
    user = f"u{seq % 1000}"
    event = event_doc(run, seq, user, HTTP_CHANNELS)
    if i % 2 == 0:
        return WEBHOOK_PATH, webhook_body(event)
    return PUSH_PATH, push_body(event, [f"device-{user}"])


def capacity_split(n: int) -> dict[str, int]:
    """How many of ``n`` capacity requests go to each channel path."""
    return {"webhook": (n + 1) // 2, "push": n // 2}
