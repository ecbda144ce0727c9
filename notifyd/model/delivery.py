"""A delivery: one notification for one channel, as it travels on
``notifyd.deliver.<channel>`` (written and read by notifyd only)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson
from msgspec import Meta

from notifyd.model.event import Version
from notifyd.model.limits import SCHEMA_VERSION

_decoder: msgspec.json.Decoder[Delivery]
_encoder = msgspec.json.Encoder()


class Delivery(msgspec.Struct):
    """One notification for one channel.  Records written before ``schema_version``
    existed (version 1: the same fields) read with the current version's defaults."""

    notification_id: str
    event_id: str
    user_id: str
    channel: str
    title: str
    body: str
    category: str = "general"
    priority: str = "normal"
    #: email address, E.164 phone number or webhook URL, depending on the channel.
    address: str | None = None
    #: push device tokens (push channel) or Apprise URLs.
    tokens: list[str] = []
    data: dict[str, Any] = {}
    locale: str | None = None
    attempt: int = 1
    #: epoch seconds when notifyd accepted the event (end-to-end latency origin).
    accepted_at: Annotated[float, Meta(description="epoch seconds")] = 0.0
    #: epoch seconds when the producer wrote the event (Kafka timestamp), if known.
    produced_at: float | None = None
    #: set by an operator's re-drive of a dead letter: a "dead" ledger entry may be retried.
    redrive: bool = False
    #: e-mail only: the HTML part rendered from the template (autoescaped), if it has one.
    #: Absent from records written before HTML e-mail existed (they decode with None).
    html: str | None = None
    schema_version: Version = SCHEMA_VERSION

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and re-processing: what providers deduplicate on."""
        return f"{self.notification_id}:{self.channel}"

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Delivery:
        """Raises ``msgspec.ValidationError`` (a ``ValueError``) for a malformed record."""
        return msgspec.convert(d, cls)

    @classmethod
    def decode(cls, raw: bytes) -> Delivery:
        """A delivery from its Kafka value (one pass: no intermediate dict).  Not JSON
        raises ``orjson.JSONDecodeError``, as before the model (dead letters' reasons
        name it); a JSON value of the wrong shape ``msgspec.ValidationError``."""
        try:
            return _decoder.decode(raw)
        except msgspec.ValidationError:
            raise
        except msgspec.DecodeError:
            orjson.loads(raw)
            raise

    def dumps(self) -> bytes:
        return _encoder.encode(self)

    def replace(self, **changes: Any) -> Delivery:
        return msgspec.structs.replace(self, **changes)


_decoder = msgspec.json.Decoder(Delivery)
