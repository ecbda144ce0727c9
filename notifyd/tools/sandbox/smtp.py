"""The sandbox's SMTP sink: receives notifyd's e-mail locally (aiosmtpd), maybe into a maildir."""

from __future__ import annotations

import asyncio
import email.policy
import mailbox
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sink.refuse.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        self._sink.receive(content, envelope.mail_from or "", list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class _SinkSMTP(SMTP):
    """aiosmtpd's protocol, tracked by the sink so stop() can close live sessions."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(_SinkHandler(sink), **kwargs)
        self._sink = sink

    def connection_made(self, transport: Any) -> None:
        self._sink._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._sink._sessions.discard(self)


@dataclass(slots=True)
class SinkEnvelope:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    received_at: float


class SmtpSink:
    """An SMTP server in the current event loop that keeps what it receives.

    ``messages`` holds every accepted message (retries included), ``receipts``
    counts them, ``unique`` dedupes by Message-ID.  ``refuse`` maps a lower-cased
    recipient to the SMTP reply that refuses it, e.g. ``{"x@y.z": "550 5.1.1 no such
    user"}`` or a ``451`` for a temporary failure.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        maildir: Path | None = None,
        *,
        mbox: Path | None = None,
        refuse: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.maildir = maildir
        self.mbox = mbox
        self.refuse: dict[str, str] = {k.lower(): v for k, v in (refuse or {}).items()}
        self.envelopes: list[SinkEnvelope] = []
        self._server: asyncio.Server | None = None
        self._sessions: set[_SinkSMTP] = set()

    @property
    def messages(self) -> list[EmailMessage]:
        return [e.message for e in self.envelopes]

    @property
    def receipts(self) -> int:
        return len(self.envelopes)

    @property
    def unique(self) -> list[EmailMessage]:
        """Messages deduplicated by Message-ID (first copy kept; no Message-ID: all kept)."""
        seen: set[str] = set()
        out: list[EmailMessage] = []
        for msg in self.messages:
            mid = msg.get("Message-ID")
            if mid is not None:
                if str(mid) in seen:
                    continue
                seen.add(str(mid))
            out.append(msg)
        return out

    def receive(self, content: bytes, mail_from: str, rcpt_tos: list[str]) -> None:
        parser = BytesParser(policy=email.policy.default)
        # SMTP carries CRLF; store with local line ends, as a delivery agent would.
        msg = cast(EmailMessage, parser.parsebytes(content.replace(b"\r\n", b"\n")))
        self.envelopes.append(SinkEnvelope(mail_from, rcpt_tos, msg, time.time()))
        # Local files, a few KB per message: cheap enough to write inline.
        if self.maildir is not None:
            mailbox.Maildir(self.maildir, create=True).add(msg)
        if self.mbox is not None:
            box = mailbox.mbox(self.mbox, create=True)
            try:
                box.lock()
                box.add(msg)
                box.flush()
            finally:
                box.unlock()
                box.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> _SinkSMTP:
            # A fixed hostname: aiosmtpd would otherwise call getfqdn() (DNS) per connection.
            return _SinkSMTP(self, hostname="notifyd-sandbox", enable_SMTPUTF8=True, loop=loop)

        self._server = await loop.create_server(factory, self.host, self._requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Close live sessions and wait for their handler tasks, so none is left pending.
        tasks = []
        for proto in list(self._sessions):
            if proto.transport is not None:
                proto.transport.close()
            if proto._handler_coroutine is not None:
                tasks.append(proto._handler_coroutine)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
