"""Webhook channel: POST a signed JSON document to the user's URL.

Signature scheme (what receivers verify, see :func:`verify`)::

    X-Notifyd-Timestamp: <unix seconds>
    X-Notifyd-Signature: sha256=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>

The timestamp is inside the MAC so a captured request cannot be replayed later
than the receiver's tolerance; ``Idempotency-Key`` lets the receiver drop retries.

The URL is the user's choice, so the egress policy (:mod:`notifyd.egress`,
``NOTIFYD_EGRESS_ALLOW``) decides where the worker may connect, checked on the
resolved address at connect time; an error answer's body is never copied into the
reason the user can read back (only ``http_<status>``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson

from notifyd.config import Settings
from notifyd.domain.channel_rules import check_http_url
from notifyd.egress import EgressPolicy
from notifyd.model.records import Delivery
from notifyd.providers.base import SendReceipt
from notifyd.providers.http import HttpProvider, post_json

SIGNATURE_PREFIX = "sha256="


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Notifyd-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(
    secret: bytes,
    timestamp: str | None,
    body: bytes,
    header: str | None,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """Check a received webhook: signature matches and timestamp is within tolerance."""
    if not timestamp or not header:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    # compare_digest on bytes: constant time, and no TypeError on non-ASCII input.
    return hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace"))


def webhook_payload(delivery: Delivery) -> dict[str, object]:
    return {
        "notification_id": delivery.notification_id,
        "event_id": delivery.event_id,
        "user_id": delivery.user_id,
        "category": delivery.category,
        "priority": delivery.priority,
        "title": delivery.title,
        "body": delivery.body,
        "data": delivery.data,
        "channel": delivery.channel,
        "attempt": delivery.attempt,
    }


#: URLs a webhook provider remembers as checked (then it starts over).
PASSED_URLS = 10_000


class WebhookProvider(HttpProvider):
    channel = "webhook"

    def __init__(self, settings: Settings) -> None:
        self.egress = EgressPolicy.from_settings(settings)
        super().__init__(settings.http_timeout_s, self.egress)
        self._secret = settings.webhook_secret.get_secret_value().encode()
        #: URLs that passed the checks below: a user's URL comes with each of their
        #: deliveries, checked twice each (``check``, ``send``), and the checks depend
        #: on nothing but the URL and this provider's policy.
        self._passed: dict[str, str] = {}

    def _url(self, delivery: Delivery) -> str:
        address = delivery.address
        if address is not None and (url := self._passed.get(address)) is not None:
            return url
        url = check_http_url(address)
        # Early refusal of a literal denied host; the connector checks resolved addresses.
        self.egress.check_url(url, self.channel)
        if len(self._passed) >= PASSED_URLS:
            self._passed.clear()
        self._passed[url] = url
        return url

    def check(self, delivery: Delivery) -> None:
        self._url(delivery)

    async def send(self, delivery: Delivery) -> SendReceipt:
        url = self._url(delivery)
        body = orjson.dumps(webhook_payload(delivery))
        timestamp = str(int(time.time()))
        headers = {
            "Idempotency-Key": delivery.idempotency_key,
            "X-Notifyd-Timestamp": timestamp,
        }
        # Without a configured secret there is nothing meaningful to sign with.
        if self._secret:
            headers["X-Notifyd-Signature"] = sign(self._secret, timestamp, body)
        answer = await post_json(
            self.session, url, body, headers, what="webhook", echo_body=False
        )
        provider_id = answer.get("id")
        return SendReceipt(
            provider_id=str(provider_id) if provider_id is not None else None,
            detail={"url": url},
        )
