"""The e-mail the SMTP provider writes: text or multipart/alternative with HTML, a stable
Message-ID and the unsubscribe headers (RFC 2369, RFC 8058), read back with the standard
library's parser from the real SMTP sink and from the exact bytes sent."""

from __future__ import annotations

import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.parser import BytesParser
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from notifyd.config import Settings
from notifyd.domain.templating import TemplateStore
from notifyd.domain.unsubscribe import PATH, Unsubscribe, UnsubscribeSigner
from notifyd.model.records import Delivery
from notifyd.providers.smtp import SmtpProvider, message_id_for
from notifyd.tools.sandbox.smtp import SmtpSink

KEY = "unsubscribe-key-of-the-email-tests-0123456789"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


def settings(sink: SmtpSink | None = None, **kw: object) -> Settings:
    values: dict[str, object] = dict(
        smtp_host="127.0.0.1",
        smtp_port=sink.port if sink is not None else 25,
        smtp_from="Shop <shop@example.com>",
        smtp_timeout_s=5.0,
        public_url="https://notify.example.com",
        unsubscribe_secret=KEY,
    )
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


def delivery(**kw: object) -> Delivery:
    rendered = TemplateStore().render(
        "order_shipped", {"order_id": "<script>alert(1)</script>", "eta": "Mo & Di"}, "en"
    )
    base: dict[str, object] = dict(
        notification_id="n1", event_id="e1", user_id="u-42", channel="email",
        title=rendered.title, body=rendered.body, html=rendered.html, category="orders",
        address="buyer@example.com", locale="en",
    )
    base.update(kw)
    return Delivery(**base)  # type: ignore[arg-type]


def raw_header(msg: EmailMessage, name: str) -> str:
    """The header as it was on the wire (folding kept, encoded words not decoded)."""
    return next(v for k, v in msg.raw_items() if k.lower() == name.lower())


def list_unsubscribe(msg: EmailMessage) -> tuple[str, str]:
    """(https URL, mailto: URI) of the List-Unsubscribe header, checked on the raw text."""
    raw = raw_header(msg, "List-Unsubscribe")
    # Mailbox providers do not decode RFC 2047 in this header: it must be plain <URI>s.
    assert "=?" not in raw
    uris = [u.strip() for u in " ".join(raw.split()).split(",")]
    assert all(u.startswith("<") and u.endswith(">") for u in uris), raw
    https, mailto = (u[1:-1] for u in uris)
    return https, mailto


async def test_html_email_is_multipart_alternative_with_unsubscribe_headers(
    sink: SmtpSink,
) -> None:
    provider = SmtpProvider(settings(sink))
    receipt = await provider.send(delivery())
    [msg] = sink.messages
    assert receipt.provider_id == msg["Message-ID"] == message_id_for("n1:email")
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text = cast(EmailMessage, msg.get_body(("plain",))).get_content()
    html = cast(EmailMessage, msg.get_body(("html",))).get_content()
    assert "Your order <script>alert(1)</script> is on its way" in text
    assert "<strong>&lt;script&gt;alert(1)&lt;/script&gt;</strong>" in html
    assert "<em>Mo &amp; Di</em>" in html and "<script>" not in html
    assert msg["Content-Language"] == "en"

    https, mailto = list_unsubscribe(msg)
    url = urlsplit(https)
    assert (url.scheme, url.netloc, url.path) == ("https", "notify.example.com", PATH)
    [token] = parse_qs(url.query)["t"]
    signer = UnsubscribeSigner(KEY.encode())
    assert signer.verify(token) == Unsubscribe("u-42", "orders", "email")
    assert mailto.startswith("mailto:shop@example.com?subject=")
    assert unquote(mailto.partition("subject=")[2]) == f"unsubscribe {token}"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_text_only_email_stays_text_plain(sink: SmtpSink) -> None:
    provider = SmtpProvider(settings(sink))
    await provider.send(delivery(html=None, body="Zeile 1\nZeile 2 ✓", category="news"))
    [msg] = sink.messages
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().rstrip("\n") == "Zeile 1\nZeile 2 ✓"
    https, _ = list_unsubscribe(msg)
    [token] = parse_qs(urlsplit(https).query)["t"]
    assert UnsubscribeSigner(KEY.encode()).verify(token).category == "news"


async def test_unsubscribe_headers_can_be_switched_off(sink: SmtpSink) -> None:
    provider = SmtpProvider(settings(sink, email_unsubscribe=False))
    await provider.send(delivery())
    [msg] = sink.messages
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
    assert msg.get_content_type() == "multipart/alternative"


async def test_wire_bytes_keep_long_links_unfolded_and_lines_short() -> None:
    provider = SmtpProvider(settings())
    d = delivery(user_id="user-" + "ü" * 60, title="Grüße " * 30)
    msg = provider.build_message(d, await provider.unsubscribe_links(d))
    wire = msg.as_bytes()
    lines = wire.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    [first] = [line for line in lines if line.startswith(b"List-Unsubscribe:")]
    assert first.startswith(b"List-Unsubscribe: <https://notify.example.com/api/v1/unsubscribe?t=")
    parsed = cast(EmailMessage, BytesParser(policy=email.policy.default).parsebytes(wire))
    https, _ = list_unsubscribe(parsed)
    [token] = parse_qs(urlsplit(https).query)["t"]
    assert UnsubscribeSigner(KEY.encode()).verify(token).user_id == d.user_id
    # Other headers are still folded and encoded as usual (non-ASCII subject).
    assert str(parsed["Subject"]) == " ".join(d.title.split())
    assert b"=?utf-8?" in wire
    # A retry is the same message: same Message-ID and same links.
    again = provider.build_message(d, await provider.unsubscribe_links(d))
    assert again["Message-ID"] == msg["Message-ID"]
    assert raw_header(again, "List-Unsubscribe") == raw_header(msg, "List-Unsubscribe")
