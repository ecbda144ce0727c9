"""SMS and push through an HTTP provider API (URL + bearer token).

The wire format is the one :mod:`notifyd.tools.sandbox` implements; a real provider is
plugged in by pointing ``sms_api_url`` / ``push_api_url`` at it (or at a small
adapter).  Both send ``Idempotency-Key`` so a retried request is not delivered twice.
"""

from __future__ import annotations

import orjson

from notifyd.config import Settings
from notifyd.domain.channel_rules import check_e164, sms_segments
from notifyd.errors import PermanentDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.base import SendReceipt
from notifyd.providers.http import HttpProvider, post_json

#: Most SMS providers refuse messages of more than 10 concatenated parts.
DEFAULT_MAX_SEGMENTS = 10


def _auth_headers(token: str, idempotency_key: str) -> dict[str, str]:
    headers = {"Idempotency-Key": idempotency_key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _receipt(answer: dict[str, object], **detail: object) -> SendReceipt:
    provider_id = answer.get("id")
    return SendReceipt(
        provider_id=str(provider_id) if provider_id is not None else None,
        detail={**detail, **{k: v for k, v in answer.items() if k != "id"}},
    )


class SmsProvider(HttpProvider):
    channel = "sms"

    def __init__(self, settings: Settings, *, max_segments: int = DEFAULT_MAX_SEGMENTS) -> None:
        super().__init__(settings.http_timeout_s)
        self._url = settings.sms_api_url
        self._token = settings.sms_api_token.get_secret_value()
        self._sender = settings.sms_sender
        self._max_segments = max_segments

    def segments(self, delivery: Delivery) -> list[str]:
        """Validate the delivery and return its SMS parts (raises PermanentDeliveryError)."""
        check_e164(delivery.address)
        # SMS has no subject line: the body is the message, the title a fallback.
        text = delivery.body or delivery.title
        if not text.strip():
            raise PermanentDeliveryError("empty_body: nothing to send by SMS")
        parts = sms_segments(text)
        if len(parts) > self._max_segments:
            raise PermanentDeliveryError(
                f"too_long: {len(parts)} SMS segments exceed the limit of {self._max_segments}"
            )
        return parts

    def check(self, delivery: Delivery) -> None:
        self.segments(delivery)

    async def send(self, delivery: Delivery) -> SendReceipt:
        parts = self.segments(delivery)
        payload = {
            "to": delivery.address,
            "from": self._sender,
            "body": "".join(parts),
            "segments": parts,
            "idempotency_key": delivery.idempotency_key,
        }
        answer = await post_json(
            self.session,
            self._url,
            orjson.dumps(payload),
            _auth_headers(self._token, delivery.idempotency_key),
            what="sms api",
        )
        return _receipt(answer, segments=len(parts))


class PushProvider(HttpProvider):
    channel = "push"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.http_timeout_s)
        self._url = settings.push_api_url
        self._token = settings.push_api_token.get_secret_value()

    def check(self, delivery: Delivery) -> None:
        if not [t for t in delivery.tokens if t]:
            raise PermanentDeliveryError("invalid_address: no push device token")
        if not (delivery.title or delivery.body):
            raise PermanentDeliveryError("empty_body: push needs a title or a body")

    async def send(self, delivery: Delivery) -> SendReceipt:
        self.check(delivery)
        tokens = [t for t in delivery.tokens if t]
        payload = {
            "tokens": tokens,
            "title": delivery.title,
            "body": delivery.body,
            "data": delivery.data,
            "idempotency_key": delivery.idempotency_key,
        }
        answer = await post_json(
            self.session,
            self._url,
            orjson.dumps(payload),
            _auth_headers(self._token, delivery.idempotency_key),
            what="push api",
        )
        return _receipt(answer, tokens=len(tokens))
