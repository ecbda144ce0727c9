"""An operator-configured Apprise service as a channel's provider (Twilio, SES, FCM, ntfy...).

The operator writes one Apprise URL per service in ``NOTIFYD_<CHANNEL>_PROVIDERS``
(:mod:`.spec`) with placeholders where the recipient goes, e.g.
``twilio://SID:TOKEN@+15550001111/{phone}``; each delivery fills them in and Apprise
does the vendor's API, so hundreds of services need no notifyd code.

Substitution is the part that must not go wrong, since the values come from users'
preferences (addresses, push tokens) or producers (user ids):

* each value is percent-encoded whole (``quote(value, safe="")``), so ``/ ? # @ :``
  stay inside their path segment or query value; placeholders are only allowed in
  the path or query (checked when the settings are read), so a value can never
  reach the host or the credentials;
* Apprise then splits a target list on ``, ; [ ] \\ /`` and whitespace *after*
  decoding, and reads a leading ``#``/``@`` as "topic"/"channel"/"user" in several
  services (an FCM token ``#news`` would broadcast to a topic): a value containing
  any of these, or starting with ``# @ !``, is refused (``invalid_address``) instead
  of becoming several or other targets;
* addresses are checked by the channel's rules first (E.164, e-mail syntax).

``{token}`` on the push channel expands to one URL per device token; a user's own
Apprise URLs (user-chosen, under the egress policy) are not this provider's business:
the registry wraps each push provider in a :class:`~.apprise.PushRouter` for them.  Delivery reuses
:class:`~.apprise.AppriseProvider` (thread-pool notify, timeout, ``Idempotency-Key`` on
``json://``/``form://``/``xml://``, targets already accepted not re-sent on a retry)
without its egress policy: these URLs are the operator's, not a user's.  Reasons and
logs name the service by its scheme only (see :meth:`ServiceProvider._reason`), and
Apprise's own debug logging, which prints headers, is kept off (``notifyd.log``).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

import structlog

from notifyd.domain.channel_rules import check_e164, check_email, check_http_url
from notifyd.errors import PermanentDeliveryError, RetriableDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.apprise import AppriseProvider, raise_for, split_targets
from notifyd.providers.base import Provider, SendReceipt
from notifyd.providers.spec import PLACEHOLDER_RE, placeholders, scheme_of

log = structlog.stdlib.get_logger("notifyd.providers.service")

#: Characters Apprise treats as target-list delimiters once a URL is decoded.
_DELIMITERS = frozenset(",;[]\\/|")
#: Leading characters that make a target a topic, channel or user in some services.
_PREFIXES = ("#", "@", "!")
#: What the template is tried with at start (to warn about a URL Apprise cannot use).
_SAMPLE_ADDRESS = {"email": "someone@example.com", "sms": "+15550001234",
                   "webhook": "https://example.com/hook", "push": ""}


def encode_value(value: str, placeholder: str) -> str:
    """``value`` percent-encoded for one path segment or query value.

    Raises PermanentDeliveryError for a value that Apprise would read as more than
    one target, or as a topic/channel rather than a recipient (see the module doc).
    """
    if not value:
        raise PermanentDeliveryError(f"invalid_address: no value for {{{placeholder}}}")
    if any(c in _DELIMITERS or c.isspace() for c in value) or value.startswith(_PREFIXES):
        raise PermanentDeliveryError(
            f"invalid_address: {value[:40]!r} cannot be used as a single {{{placeholder}}} "
            "(contains a list delimiter or starts with a target prefix)"
        )
    return quote(value, safe="")


def expand(template: str, values: dict[str, str]) -> str:
    """Fill the placeholders of ``template`` (every one must be in ``values``)."""
    return PLACEHOLDER_RE.sub(lambda m: encode_value(values[m.group(1)], m.group(1)), template)


class ServiceProvider(Provider):
    """Delivers through one operator-configured Apprise URL template (module doc)."""

    def __init__(self, channel: str, template: str, *, name: str, timeout_s: float) -> None:
        # ``channel`` is a ClassVar on Provider; this provider serves any channel.
        self.channel = channel  # type: ignore[misc]
        self.name = name
        self._template = template
        self._uses = frozenset(placeholders(template))
        self._apprise = AppriseProvider(enabled=True, timeout_s=timeout_s, schemes=None)

    @property
    def masked(self) -> str:
        """How reasons and logs name the service: its scheme, nothing of the URL."""
        return f"{scheme_of(self._template)}://…"

    async def start(self) -> None:
        await self._apprise.start()
        try:
            address = _SAMPLE_ADDRESS.get(self.channel, "")
            sample = {"user_id": "u-1", "token": "sampletoken0123456789", "address": address,
                      "email": address, "phone": address}
            self._apprise.instantiate(expand(self._template, sample))
        except PermanentDeliveryError:
            # Not fatal (a sample value may not suit the service): say it once at start.
            log.warning("provider.url_not_understood", provider=self.name,
                        channel=self.channel, scheme=scheme_of(self._template))

    async def stop(self) -> None:
        await self._apprise.stop()

    # --- targets ----------------------------------------------------------------------

    def _values(self, delivery: Delivery) -> dict[str, str]:
        values = {"user_id": delivery.user_id}
        if self._uses & {"address", "email", "phone"}:
            if self.channel == "email":
                address = check_email(delivery.address)
            elif self.channel == "sms":
                address = check_e164(delivery.address)
            elif self.channel == "webhook":
                address = check_http_url(delivery.address)
            else:
                address = delivery.address or ""
            values.update(address=address, email=address, phone=address)
        return values

    def targets(self, delivery: Delivery) -> list[str]:
        """The Apprise URLs of this delivery (one per push device token with ``{token}``)."""
        values = self._values(delivery)
        if "token" not in self._uses:
            return [expand(self._template, values)]
        devices, _ = split_targets(delivery.tokens)
        if not devices:
            raise PermanentDeliveryError(
                f"invalid_address: no push device token for {self.masked}"
            )
        return [expand(self._template, {**values, "token": t}) for t in devices]

    def check(self, delivery: Delivery) -> None:
        if not (delivery.title or delivery.body):
            raise PermanentDeliveryError(f"empty_body: nothing to send through {self.masked}")
        for url in self.targets(delivery):
            self._apprise.instantiate(url)  # PermanentDeliveryError, URL masked

    # --- sending ----------------------------------------------------------------------

    def _content(self, delivery: Delivery) -> Delivery:
        if self.channel == "sms" and delivery.body:
            # SMS has no subject: the body is the message (as the built-in SMS provider).
            return dataclasses.replace(delivery, title="")
        return delivery

    def _reason(self, reasons: list[str], total: int) -> str:
        """A failure reason naming the service by scheme only.

        Apprise's privacy rendering masks passwords but not custom headers
        (``json://host/?+Authorization=...``) nor payload parameters (the recipient),
        so the reasons of :meth:`AppriseProvider.deliver` are not quoted: only their
        codes (``apprise_failed``, ``timeout``, ``apprise_error``).
        """
        codes = sorted({r.split(":", 1)[0] for r in reasons})
        return (f"{', '.join(codes)}: {self.masked} failed for {len(reasons)} of {total} "
                f"target{'s' if total != 1 else ''}")

    async def send(self, delivery: Delivery) -> SendReceipt:
        self.check(delivery)
        urls = self.targets(delivery)
        out = await self._apprise.deliver(self._content(delivery), urls)
        if out.retriable:
            raise RetriableDeliveryError(self._reason(out.retriable, len(urls)))
        raise_for(out)
        detail: dict[str, Any] = {"service": scheme_of(self._template), "targets": len(out.sent)}
        return SendReceipt(provider_id=None, detail=detail)
