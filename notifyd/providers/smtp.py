"""Email channel over SMTP (aiosmtplib), one connection per message.

A connection per send keeps the provider stateless (no broken pooled connection
to detect and recover from); notification volumes per worker make the extra
handshake cheap.  The Message-ID is derived from the idempotency key, so a retried
send carries the same Message-ID and mail systems (and the sandbox sink) can
recognise the duplicate.

A delivery with an HTML part (``Delivery.html``) becomes ``multipart/alternative``
(text first, HTML last: the part clients prefer).  Every message carries
``List-Unsubscribe`` (a signed https link and a mailto:, RFC 2369) and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058) for the delivery's
user and category (``notifyd.domain.unsubscribe``), unless ``NOTIFYD_EMAIL_UNSUBSCRIBE`` is
false.  The message is written with :data:`WIRE_POLICY`, never refolding those headers.
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib
import structlog

from notifyd.config import Settings
from notifyd.domain.channel_rules import check_email
from notifyd.domain.unsubscribe import (
    ONE_CLICK,
    UnsubscribeLinks,
    UnsubscribeSigner,
    links_for,
    resolve_key,
)
from notifyd.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetriableDeliveryError,
    ServiceUnavailable,
)
from notifyd.model.records import Delivery
from notifyd.providers.base import Provider, SendReceipt

log = structlog.stdlib.get_logger("notifyd.providers.smtp")

#: SMTP line ends; 7bit transfer encodings (quoted-printable/base64 where needed), so any
#: relay takes it without 8BITMIME; headers set pre-folded (``List-Unsubscribe``) are
#: written as they are: Python would turn a long URI into RFC 2047 encoded words, which
#: mailbox providers do not decode there.
WIRE_POLICY = email.policy.SMTP.clone(cte_type="7bit", refold_source="none")


def message_id_for(idempotency_key: str) -> str:
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@notifyd>"


def _one_line(value: str) -> str:
    # Header values may not contain CR/LF (header injection); fold to spaces.
    return " ".join(value.split())


def _code_error(code: int, message: str, what: str) -> DeliveryError:
    reason = f"smtp_{code}: {what}: {' '.join(message.split())[:200]}"
    if 500 <= code < 600:
        return PermanentDeliveryError(reason)
    return RetriableDeliveryError(reason)


class SmtpProvider(Provider):
    channel = "email"

    def __init__(self, settings: Settings) -> None:
        if settings.smtp_tls and settings.smtp_starttls:
            raise ValueError("smtp_tls (implicit TLS) and smtp_starttls are exclusive")
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._username = settings.smtp_username or None
        self._password = settings.smtp_password.get_secret_value() or None
        self._starttls = settings.smtp_starttls
        self._tls = settings.smtp_tls
        self._from = settings.smtp_from
        self._envelope_from = parseaddr(settings.smtp_from)[1] or settings.smtp_from
        self._timeout = settings.smtp_timeout_s
        self._settings = settings
        self._unsubscribe = settings.email_unsubscribe
        self._signer: UnsubscribeSigner | None = None
        self._signer_lock = asyncio.Lock()

    def check(self, delivery: Delivery) -> None:
        check_email(delivery.address)

    async def unsubscribe_links(self, delivery: Delivery) -> UnsubscribeLinks | None:
        """The delivery's unsubscribe links (None when switched off).  The key is resolved
        on first use: it may live in the credential store (then a retriable failure
        while the store is down, never a mail without its headers)."""
        if not self._unsubscribe:
            return None
        if self._signer is None:
            async with self._signer_lock:
                if self._signer is None:
                    try:
                        key = await resolve_key(self._settings)
                    except ServiceUnavailable as exc:
                        raise RetriableDeliveryError(f"unsubscribe_key: {exc.detail}") from None
                    self._signer = UnsubscribeSigner(key)
                    if not self._settings.resolved_public_url.startswith("https://"):
                        log.warning(
                            "email.unsubscribe_url_not_https",
                            public_url=self._settings.resolved_public_url,
                            hint="set NOTIFYD_PUBLIC_URL: one-click unsubscribe needs https",
                        )
        return links_for(self._settings, self._signer, delivery.user_id, delivery.category)

    def build_message(
        self, delivery: Delivery, unsubscribe: UnsubscribeLinks | None = None
    ) -> EmailMessage:
        to = check_email(delivery.address)
        msg = EmailMessage(policy=WIRE_POLICY)
        msg["From"] = self._from
        msg["To"] = to
        msg["Subject"] = _one_line(delivery.title)
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id_for(delivery.idempotency_key)
        msg["X-Notifyd-Idempotency-Key"] = _one_line(delivery.idempotency_key)
        msg["X-Notifyd-Notification-Id"] = _one_line(delivery.notification_id)
        header = unsubscribe.header_value() if unsubscribe is not None else None
        if header is not None:
            # Pre-folded, written as is (see WIRE_POLICY); made of a URL-safe token and
            # validated settings, so it holds no CR/LF of anyone else's.
            msg.set_raw("List-Unsubscribe", header)
            msg["List-Unsubscribe-Post"] = ONE_CLICK
        elif unsubscribe is not None:
            log.warning("email.unsubscribe_link_too_long", notification_id=delivery.notification_id)
        msg.set_content(delivery.body or delivery.title)
        if delivery.html:
            msg.add_alternative(delivery.html, subtype="html")
        # After set_content, which clears every Content-* header.
        if delivery.locale:
            msg["Content-Language"] = _one_line(delivery.locale)
        return msg

    async def send(self, delivery: Delivery) -> SendReceipt:
        msg = self.build_message(delivery, await self.unsubscribe_links(delivery))
        what = f"smtp {self._host}:{self._port}"
        try:
            responses, _ = await aiosmtplib.send(
                msg.as_bytes(),
                sender=self._envelope_from,
                recipients=[str(msg["To"])],
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                # Explicit False: no opportunistic STARTTLS unless configured.
                start_tls=self._starttls,
                use_tls=self._tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused (we send to one): 5xx = the mailbox is bad.
            first = exc.recipients[0] if exc.recipients else None
            if first is None:
                raise RetriableDeliveryError(f"smtp_refused: {what}") from None
            raise _code_error(first.code, first.message, f"{what} refused recipient") from None
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            # The server judged this message or mailbox: 5xx will not change on retry.
            raise _code_error(exc.code, exc.message, what) from None
        except aiosmtplib.SMTPResponseException as exc:
            # HELO/AUTH/MAIL FROM refusals are about our configuration, not this
            # message: retriable, so fixing the config lets queued mail go out.
            raise RetriableDeliveryError(
                f"smtp_{exc.code}: {what}: {' '.join(exc.message.split())[:200]}"
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused/reset, timeouts, disconnects, TLS failures.
            raise RetriableDeliveryError(f"connection_error: {what}: {exc!s:.200}") from None
        refused = {rcpt: r for rcpt, r in responses.items() if not 200 <= r.code < 300}
        if refused:  # aiosmtplib raises when all are refused; guard anyway
            rcpt, r = next(iter(refused.items()))
            raise _code_error(r.code, r.message, f"{what} refused {rcpt}")
        return SendReceipt(provider_id=str(msg["Message-ID"]), detail={"smtp_host": self._host})
