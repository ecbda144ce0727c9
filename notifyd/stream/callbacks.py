"""Delivery callbacks to producers: POST each terminal state of each channel.

Where they start: the status fold (``stream.handlers.status.fold_status_events``) sees every
transition of a channel.  A channel that *reaches* a callback state (``sent``,
``failed``, ``dead``, ``suppressed``, ``cancelled``) it was not in yet yields one
callback job (a channel the event did not request, ``suppressed: not_requested``,
is not reported); the fold never moves a finished channel back, and a re-stated outcome is
no transition, so each terminal state is called back once logically.  A status record
folded twice after a crash yields the job again: on the wire callbacks are
at-least-once, with the same ``Idempotency-Key: <notification_id>:<channel>:<state>``.

Which transitions, with what payload, is decided by :mod:`notifyd.domain.callbacks`.
Where they run: jobs go to ``notifyd.callbacks`` (keyed by notification id) and the
callbacks agent POSTs them with up to ``NOTIFYD_DELIVERY_CONCURRENCY`` in flight, on a
stream of its own, so a slow or dead receiver never holds up a delivery.  Retriable
failures (timeouts, 5xx, 429) back off like deliveries for
``NOTIFYD_CALLBACK_MAX_ATTEMPTS`` attempts; a record is acked only once its job is
finished, so a crash re-sends what was in flight.  The URL is the producer's choice,
so it goes through the egress policy of users' webhooks (``notifyd.egress``); a
refused one is recorded (``egress_denied``), never retried.  Every outcome is written
to the status document under ``callbacks``.

Signed like webhooks: ``X-Notifyd-Signature: sha256=HMAC(secret, "<ts>." + body)``
with ``NOTIFYD_CALLBACK_SECRET`` (or the webhook secret), ``X-Notifyd-Timestamp``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import structlog
from faust.types import EventT

from notifyd import clock
from notifyd.config import Settings
from notifyd.egress import EgressPolicy
from notifyd.errors import DeliveryError
from notifyd.model.records import loads

log = structlog.stdlib.get_logger("notifyd.stream.callbacks")


class CallbackSender:
    """One long-lived session (egress-checked, explicit timeout) for all callbacks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.egress = EgressPolicy.from_settings(settings)
        secret = settings.callback_secret.get_secret_value() or (
            settings.webhook_secret.get_secret_value()
        )
        self._secret = secret.encode()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        from notifyd.providers.http import make_session

        if self._session is None:
            self._session = make_session(self.settings.http_timeout_s, self.egress, "callback")

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(self, url: str, payload: dict[str, Any]) -> None:
        """One attempt; raises :class:`DeliveryError` (retriable or not)."""
        from notifyd.providers.http import post_json
        from notifyd.providers.webhook import sign

        assert self._session is not None, "start() first"
        self.egress.check_url(url, "callback")  # early refusal of a literal denied host
        body = orjson.dumps(payload)
        timestamp = str(int(time.time()))
        headers = {
            "Idempotency-Key": payload["idempotency_key"],
            "X-Notifyd-Timestamp": timestamp,
            "X-Notifyd-Event": f"notification.{payload['status']}",
        }
        if self._secret:
            headers["X-Notifyd-Signature"] = sign(self._secret, timestamp, body)
        await post_json(self._session, url, body, headers, what="callback", echo_body=False)

    async def deliver(self, job: dict[str, Any]) -> dict[str, Any]:
        """Attempts with backoff until done; the outcome recorded in the status document."""
        from notifyd.stream.handlers.deliver import backoff

        payload = job["payload"]
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.post(job["url"], payload)
                return {"result": "delivered", "attempts": attempt}
            except DeliveryError as err:
                if not err.retriable:
                    return {"result": "failed", "attempts": attempt, "reason": err.reason}
                if attempt >= self.settings.callback_max_attempts:
                    return {"result": "dead", "attempts": attempt, "reason": err.reason}
                delay = backoff(attempt, err.retry_after)
                log.info("callback.retrying", key=payload["idempotency_key"],
                         reason=err.reason, delay_s=round(delay, 3))
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation


async def handle_callback(ev: EventT[Any], sender: CallbackSender) -> None:
    from notifyd.stream.handlers.status import publish_status

    job = loads(ev.value)
    payload = job["payload"]
    structlog.contextvars.bind_contextvars(
        notification_id=payload["notification_id"], channel=payload["channel"]
    )
    outcome = await sender.deliver(job)
    record = {
        "key": payload["idempotency_key"],
        "channel": payload["channel"],
        "state": payload["status"],
        "ts": clock.now(),
        **outcome,
    }
    if outcome["result"] == "delivered":
        log.info("callback.delivered", key=record["key"], attempts=outcome["attempts"])
    else:
        log.warning("callback.not_delivered", key=record["key"], result=outcome["result"],
                    reason=outcome.get("reason"))
    await publish_status(
        payload["notification_id"], [], callbacks=[record], user_id=payload.get("user_id")
    )
