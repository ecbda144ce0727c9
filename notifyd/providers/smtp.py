"""Email channel over SMTP (aiosmtplib), one connection per message.

A connection per send keeps the provider stateless (no broken pooled connection
to detect and recover from); notification volumes per worker make the extra
handshake cheap.  The Message-ID is derived from the idempotency key, so a retried
send carries the same Message-ID and mail systems (and the sandbox sink) can
recognise the duplicate.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from ..config import Settings
from ..errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError
from ..records import Delivery
from .base import Provider, SendReceipt
from .rules import check_email


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
        self._timeout = settings.smtp_timeout_s

    def check(self, delivery: Delivery) -> None:
        check_email(delivery.address)

    def build_message(self, delivery: Delivery) -> EmailMessage:
        to = check_email(delivery.address)
        msg = EmailMessage()
        msg["From"] = self._from
        msg["To"] = to
        msg["Subject"] = _one_line(delivery.title)
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id_for(delivery.idempotency_key)
        msg["X-Notifyd-Idempotency-Key"] = _one_line(delivery.idempotency_key)
        msg["X-Notifyd-Notification-Id"] = _one_line(delivery.notification_id)
        msg.set_content(delivery.body or delivery.title)
        # After set_content, which clears every Content-* header.
        if delivery.locale:
            msg["Content-Language"] = _one_line(delivery.locale)
        return msg

    async def send(self, delivery: Delivery) -> SendReceipt:
        msg = self.build_message(delivery)
        what = f"smtp {self._host}:{self._port}"
        try:
            responses, _ = await aiosmtplib.send(
                msg,
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
        return SendReceipt(provider_id=msg["Message-ID"], detail={"smtp_host": self._host})
