"""Providers against the real sandbox HTTP API and SMTP sink, on free ports in the test loop."""

from __future__ import annotations

import asyncio
import mailbox
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import orjson
import pytest

from notifyd.config import Settings
from notifyd.errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.http import error_for_status, parse_retry_after
from notifyd.providers.httpapi import PushProvider, SmsProvider
from notifyd.providers.smtp import SmtpProvider, message_id_for
from notifyd.providers.webhook import WebhookProvider, sign, verify
from notifyd.tools.sandbox.provider import SandboxServer
from notifyd.tools.sandbox.smtp import SmtpSink
from tests.support.memory_provider import MemoryProvider

SECRET = b"whsec-test-secret"
TOKEN = "sandbox-token"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sms(**kw: object) -> Delivery:
    base: dict[str, object] = dict(
        notification_id="n1",
        event_id="e1",
        user_id="u1",
        channel="sms",
        title="Hi",
        body="Hello",
        address="+15551234567",
    )
    base.update(kw)
    return Delivery(**base)  # type: ignore[arg-type]


def webhook(url: str, **kw: object) -> Delivery:
    return sms(**{"channel": "webhook", "address": url, "data": {"k": [1, 2]}, **kw})


def push(**kw: object) -> Delivery:
    return sms(**{"channel": "push", "address": None, "tokens": ["tok-a", "tok-b"], **kw})


def email(**kw: object) -> Delivery:
    return sms(**{"channel": "email", "address": "user@example.com", "title": "Subject", **kw})


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    server = SandboxServer(seed=7, webhook_secret=SECRET, api_token=TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    s = SmtpSink(
        refuse={
            "nobody@example.com": "550 5.1.1 no such user",
            "busy@example.com": "451 4.2.0 mailbox busy, try later",
        }
    )
    await s.start()
    yield s
    await s.stop()


def make_settings(sandbox: SandboxServer, **kw: object) -> Settings:
    values: dict[str, object] = dict(
        sms_api_url=f"{sandbox.url}/v1/sms",
        sms_api_token=TOKEN,
        sms_sender="notifyd-test",
        push_api_url=f"{sandbox.url}/v1/push",
        push_api_token=TOKEN,
        webhook_secret=SECRET.decode(),
        http_timeout_s=5.0,
        smtp_timeout_s=5.0,
        # The webhook goes to the sandbox on loopback, which the egress policy denies.
        egress_allow="127.0.0.1/32",
        # The key of e-mail unsubscribe links (else derived from a JWT secret in the store).
        unsubscribe_secret="unsubscribe-links-key-for-unit-tests",
    )
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(sandbox: SandboxServer) -> Settings:
    return make_settings(sandbox)


@pytest.fixture
async def sms_provider(settings: Settings) -> AsyncIterator[SmsProvider]:
    async with SmsProvider(settings) as p:
        yield p


@pytest.fixture
async def push_provider(settings: Settings) -> AsyncIterator[PushProvider]:
    async with PushProvider(settings) as p:
        yield p


@pytest.fixture
async def webhook_provider(settings: Settings) -> AsyncIterator[WebhookProvider]:
    async with WebhookProvider(settings) as p:
        yield p


async def get_json(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        data = await r.json()
        assert isinstance(data, dict)
        return data


async def post_raw(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.json()


# --- SMS -----------------------------------------------------------------------------


async def test_sms_delivered_and_recorded(
    sandbox: SandboxServer, sms_provider: SmsProvider
) -> None:
    d = sms()
    sms_provider.check(d)
    receipt = await sms_provider.send(d)
    assert receipt.provider_id and receipt.provider_id.startswith("sms_")
    assert receipt.detail["segments"] == 1
    ledger = await get_json(f"{sandbox.url}/v1/ledger?kind=sms")
    assert ledger["receipts"] == 1
    deliveries = ledger["deliveries"]
    assert isinstance(deliveries, list) and len(deliveries) == 1
    entry = deliveries[0]
    assert entry["id"] == receipt.provider_id
    assert entry["idempotency_key"] == "n1:sms"
    assert entry["payload"] == {
        "to": "+15551234567",
        "from": "notifyd-test",
        "body": "Hello",
        "segments": ["Hello"],
        "idempotency_key": "n1:sms",
    }


async def test_sms_long_message_is_segmented(
    sandbox: SandboxServer, sms_provider: SmsProvider
) -> None:
    body = "Ваш код подтверждения: 123456. Никому его не сообщайте! " * 3  # noqa: RUF001
    receipt = await sms_provider.send(sms(body=body))
    [entry] = sandbox.deliveries("sms")
    parts = entry["payload"]["segments"]
    assert receipt.detail["segments"] == len(parts) == 3
    assert "".join(parts) == body
    assert all(len(p) <= 67 for p in parts)


async def test_sms_idempotent_replay(sandbox: SandboxServer, sms_provider: SmsProvider) -> None:
    first = await sms_provider.send(sms())
    second = await sms_provider.send(sms(attempt=2))
    assert first.provider_id == second.provider_id
    ledger = await get_json(f"{sandbox.url}/v1/ledger?kind=sms")
    assert len(ledger["deliveries"]) == 1  # type: ignore[arg-type]
    assert ledger["receipts"] == 2
    # Another notification is a new delivery.
    third = await sms_provider.send(sms(notification_id="n2"))
    assert third.provider_id != first.provider_id
    assert len(sandbox.deliveries("sms")) == 2


async def test_sms_check_rejects_bad_input(sms_provider: SmsProvider) -> None:
    for d, reason in [
        (sms(address="555-1234"), "invalid_address"),
        (sms(address=None), "invalid_address"),
        (sms(body="", title=" "), "empty_body"),
        (sms(body="x" * 153 * 11), "too_long"),
    ]:
        with pytest.raises(PermanentDeliveryError) as exc_info:
            sms_provider.check(d)
        assert exc_info.value.reason.startswith(reason + ":")


async def test_sms_wrong_token_is_permanent(sandbox: SandboxServer) -> None:
    async with SmsProvider(make_settings(sandbox, sms_api_token="wrong")) as p:
        with pytest.raises(PermanentDeliveryError, match=r"^http_401"):
            await p.send(sms())
    assert sandbox.deliveries("sms") == []
    assert sandbox.receipts("sms") == 1


async def test_sandbox_validates_sms_rules(sandbox: SandboxServer) -> None:
    url = f"{sandbox.url}/v1/sms"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    cases: list[tuple[bytes, int, str]] = [
        (b"not json", 400, "invalid_json"),
        (b"[1]", 400, "invalid_json"),
        (orjson.dumps({"to": "12345", "body": "x"}), 422, "invalid_to"),
        (orjson.dumps({"to": "+15551234567", "body": ""}), 422, "missing_body"),
        (
            orjson.dumps({"to": "+15551234567", "body": "a" * 161, "segments": ["a" * 161]}),
            422,
            "segment_too_long",
        ),
        (
            orjson.dumps({"to": "+15551234567", "body": "ж" * 71, "segments": ["ж" * 71]}),
            422,
            "segment_too_long",
        ),
        (
            orjson.dumps({"to": "+15551234567", "body": "abc", "segments": ["ab"]}),
            422,
            "segments_mismatch",
        ),
    ]
    for body, status, code in cases:
        got_status, answer = await post_raw(url, body, auth)
        assert (got_status, answer["code"]) == (status, code), body
    # Without a segments list the sandbox splits itself.
    status, answer = await post_raw(
        url, orjson.dumps({"to": "+15551234567", "body": "a" * 200}), auth
    )
    assert (status, answer["segments"]) == (201, 2)


# Numbers of the form notifyd's former E.164 pattern accepted (a +, a non-zero digit and 7
# to 15 digits) that no numbering plan has: a real provider refuses them.  Since notifyd
# checks numbers with libphonenumber too (notifyd.model.contact), it refuses them first.
IMPOSSIBLE_BUT_E164_SHAPED = [
    "+1234567",  # +1 (NANP) needs 10 national digits
    "+15550001",  # 7 national digits: a local-only number, not dialable from abroad
    "+123456789012345",  # too long for +1
    "+33123456",  # too short for France
    "+99912345678",  # +999 is no country calling code
]


@pytest.mark.parametrize("to", IMPOSSIBLE_BUT_E164_SHAPED)
async def test_impossible_numbers_refused_by_notifyd_and_by_the_sandbox(
    sandbox: SandboxServer, sms_provider: SmsProvider, to: str
) -> None:
    """notifyd refuses these before sending (it once let them through to the provider);
    posted anyway, the sandbox refuses them too, as a real provider does."""
    d = sms(address=to)
    with pytest.raises(PermanentDeliveryError, match=r"^invalid_address"):
        sms_provider.check(d)
    with pytest.raises(PermanentDeliveryError, match=r"^invalid_address"):
        await sms_provider.send(d)
    assert sandbox.receipts("sms") == 0  # never sent
    status, answer = await post_raw(
        f"{sandbox.url}/v1/sms", orjson.dumps({"to": to, "body": "Hello"}),
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert (status, answer["code"]) == (422, "invalid_to"), answer
    assert sandbox.deliveries("sms") == []
    assert sandbox.receipts("sms") == 1


@pytest.mark.parametrize(
    "to", ["555-1234", "15551234567", "+05551234567", "+1 555 123 4567", "+1-555-123-4567",
           "", "+",
           # Once holes in notifyd's pattern (``\d`` matched any Unicode digit, ``$`` a
           # final newline), found by the sandbox's independent check; now closed.
           "+1555123456\uff17", "+15551234567\n"],
)
async def test_sandbox_refuses_what_notifyd_must_never_send(
    sandbox: SandboxServer, sms_provider: SmsProvider, to: str
) -> None:
    """notifyd refuses these before sending; were that check gone, the sandbox would
    still refuse them (posted here as notifyd would post them), on its own judgement."""
    with pytest.raises(PermanentDeliveryError, match=r"^invalid_address"):
        sms_provider.check(sms(address=to))
    status, answer = await post_raw(
        f"{sandbox.url}/v1/sms", orjson.dumps({"to": to, "body": "Hello"}),
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert (status, answer["code"]) == (422, "invalid_to"), answer
    assert sandbox.deliveries("sms") == []


@pytest.mark.parametrize(
    "to", ["+15551234567", "+14155550123", "+442071838750", "+33612345678", "+4915112345678",
           "+61412345678", "+818012345678"],
)
async def test_sandbox_accepts_possible_numbers(
    sandbox: SandboxServer, sms_provider: SmsProvider, to: str
) -> None:
    receipt = await sms_provider.send(sms(address=to))
    [entry] = sandbox.deliveries("sms")
    assert entry["id"] == receipt.provider_id
    assert entry["payload"]["to"] == to


# --- push ----------------------------------------------------------------------------


async def test_push_delivered(sandbox: SandboxServer, push_provider: PushProvider) -> None:
    d = push(data={"deep_link": "/x"})
    push_provider.check(d)
    receipt = await push_provider.send(d)
    assert receipt.provider_id and receipt.provider_id.startswith("push_")
    [entry] = sandbox.deliveries("push")
    assert entry["payload"] == {
        "tokens": ["tok-a", "tok-b"],
        "title": "Hi",
        "body": "Hello",
        "data": {"deep_link": "/x"},
        "idempotency_key": "n1:push",
    }
    await push_provider.send(d)
    assert len(sandbox.deliveries("push")) == 1
    assert sandbox.receipts("push") == 2


async def test_push_needs_tokens(push_provider: PushProvider, sandbox: SandboxServer) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"^invalid_address"):
        push_provider.check(push(tokens=[]))
    with pytest.raises(PermanentDeliveryError):
        await push_provider.send(push(tokens=[""]))
    assert sandbox.receipts("push") == 0
    status, answer = await post_raw(
        f"{sandbox.url}/v1/push",
        orjson.dumps({"tokens": ["t"], "title": "", "body": ""}),
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert (status, answer["code"]) == (422, "missing_content")


# --- webhook -------------------------------------------------------------------------


async def test_webhook_signed_and_recorded(
    sandbox: SandboxServer, webhook_provider: WebhookProvider
) -> None:
    d = webhook(f"{sandbox.url}/v1/webhook/orders", attempt=3)
    webhook_provider.check(d)
    receipt = await webhook_provider.send(d)  # the sandbox verified the signature (201)
    assert receipt.provider_id
    [entry] = sandbox.deliveries("webhook")
    assert entry["name"] == "orders"
    assert entry["idempotency_key"] == "n1:webhook"
    assert entry["payload"] == {
        "notification_id": "n1",
        "event_id": "e1",
        "user_id": "u1",
        "category": "general",
        "priority": "normal",
        "title": "Hi",
        "body": "Hello",
        "data": {"k": [1, 2]},
        "channel": "webhook",
        "attempt": 3,
    }
    # A retry (new attempt number, new timestamp) is answered from the idempotency cache.
    again = await webhook_provider.send(webhook(f"{sandbox.url}/v1/webhook/orders", attempt=4))
    assert again.provider_id == receipt.provider_id
    assert len(sandbox.deliveries("webhook")) == 1
    assert sandbox.receipts("webhook") == 2


async def test_webhook_tampered_signature_rejected(sandbox: SandboxServer) -> None:
    url = f"{sandbox.url}/v1/webhook/x"
    body = orjson.dumps({"amount": 10})
    ts = str(int(time.time()))
    good = {"X-Notifyd-Timestamp": ts, "X-Notifyd-Signature": sign(SECRET, ts, body)}
    status, _ = await post_raw(url, body, good)
    assert status == 201
    tampered = orjson.dumps({"amount": 1000})
    status, answer = await post_raw(url, tampered, good)
    assert (status, answer["code"]) == (401, "bad_signature")
    status, _ = await post_raw(url, body, {"X-Notifyd-Timestamp": ts})
    assert status == 401
    assert len(sandbox.deliveries("webhook")) == 1
    assert sandbox.receipts("webhook") == 3


async def test_webhook_wrong_secret_is_permanent(sandbox: SandboxServer) -> None:
    async with WebhookProvider(make_settings(sandbox, webhook_secret="other")) as p:
        with pytest.raises(PermanentDeliveryError, match=r"^http_401"):
            await p.send(webhook(f"{sandbox.url}/v1/webhook/x"))


def test_sign_and_verify() -> None:
    body = b'{"a":1}'
    now = 1_700_000_000
    ts = str(now)
    header = sign(SECRET, ts, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify(SECRET, ts, body, header, now=now)
    assert verify(SECRET, ts, body, header, now=now + 299)
    assert not verify(SECRET, ts, body, header, now=now + 301)  # stale: replay window closed
    assert not verify(SECRET, ts, body + b" ", header, now=now)  # tampered body
    assert not verify(SECRET, str(now + 1), body, header, now=now)  # tampered timestamp
    assert not verify(b"other", ts, body, header, now=now)
    for bad in [None, "", "sha256=", "md5=abc", "sha256=ü"]:
        assert not verify(SECRET, ts, body, bad, now=now)
    assert not verify(SECRET, "not-a-number", body, header, now=now)
    assert not verify(SECRET, None, body, header, now=now)


async def test_webhook_check_needs_http_url(webhook_provider: WebhookProvider) -> None:
    for address in [None, "ftp://example.com/", "mailto:a@b.c", "not a url"]:
        with pytest.raises(PermanentDeliveryError, match=r"^invalid_address"):
            webhook_provider.check(webhook(address))  # type: ignore[arg-type]


# --- status mapping, faults, transport errors -----------------------------------------


@pytest.mark.parametrize(
    ("path", "retriable", "retry_after"),
    [
        ("/v1/_status/200", None, None),
        ("/v1/_status/204", None, None),
        ("/v1/_status/400", False, None),
        ("/v1/_status/404", False, None),
        ("/v1/_status/410", False, None),
        ("/v1/_status/301", False, None),  # redirects are not followed
        ("/v1/_status/408", True, None),
        ("/v1/_status/425", True, None),
        ("/v1/_status/429?retry_after=7", True, 7.0),
        ("/v1/_status/429", True, None),
        ("/v1/_status/500", True, None),
        ("/v1/_status/502?retry_after=9", True, None),  # only 429/503 carry the hint
        ("/v1/_status/503?retry_after=2", True, 2.0),
    ],
)
async def test_webhook_status_mapping(
    sandbox: SandboxServer,
    webhook_provider: WebhookProvider,
    path: str,
    retriable: bool | None,
    retry_after: float | None,
) -> None:
    d = webhook(f"{sandbox.url}{path}")
    if retriable is None:
        await webhook_provider.send(d)
        return
    with pytest.raises(DeliveryError) as exc_info:
        await webhook_provider.send(d)
    err = exc_info.value
    assert err.retriable is retriable
    assert err.retry_after == retry_after
    assert err.reason.startswith("http_")


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-5", now) == 0.0
    when = datetime.fromtimestamp(now, UTC) + timedelta(seconds=30)
    assert parse_retry_after(format_datetime(when, usegmt=True), now) == pytest.approx(30.0)
    past = datetime.fromtimestamp(now, UTC) - timedelta(days=1)
    assert parse_retry_after(format_datetime(past, usegmt=True), now) == 0.0
    for bad in [None, "", "soon", "nan"]:
        assert parse_retry_after(bad, now) is None
    err = error_for_status(503, {"Retry-After": "3"}, "down", "x")
    assert isinstance(err, RetriableDeliveryError) and err.retry_after == 3.0
    assert error_for_status(201, {}, "", "x") is None


async def test_fault_injection_and_control(
    sandbox: SandboxServer, sms_provider: SmsProvider
) -> None:
    status, config = await post_raw(f"{sandbox.url}/v1/_control", b'{"fail_rate": 1.0}')
    assert status == 200 and config["fail_rate"] == 1.0
    with pytest.raises(RetriableDeliveryError) as exc_info:
        await sms_provider.send(sms())
    assert exc_info.value.retry_after == 1.0
    assert exc_info.value.reason.startswith("http_503")
    assert sandbox.deliveries("sms") == [] and sandbox.receipts("sms") == 1
    status, _ = await post_raw(f"{sandbox.url}/v1/_control", b'{"fail_rate": 2}')
    assert status == 422
    await post_raw(f"{sandbox.url}/v1/_control", b'{"fail_rate": 0}')
    await sms_provider.send(sms())
    assert len(sandbox.deliveries("sms")) == 1 and sandbox.receipts("sms") == 2


async def test_lost_ack_is_saved_by_idempotency(
    sandbox: SandboxServer, sms_provider: SmsProvider
) -> None:
    sandbox.state.configure({"lost_ack_rate": 1.0})
    with pytest.raises(RetriableDeliveryError):
        await sms_provider.send(sms())
    sandbox.state.configure({"lost_ack_rate": 0.0})
    receipt = await sms_provider.send(sms(attempt=2))  # the retry
    [entry] = sandbox.deliveries("sms")
    assert entry["id"] == receipt.provider_id
    assert sandbox.receipts("sms") == 2


async def test_timeout_is_retriable(sandbox: SandboxServer) -> None:
    sandbox.state.configure({"latency_ms": 400})
    async with SmsProvider(make_settings(sandbox, http_timeout_s=0.05)) as p:
        with pytest.raises(RetriableDeliveryError, match=r"^timeout"):
            await p.send(sms())


async def test_connection_refused_is_retriable(sandbox: SandboxServer) -> None:
    port = free_port()
    settings = make_settings(sandbox, sms_api_url=f"http://127.0.0.1:{port}/v1/sms")
    async with SmsProvider(settings) as p:
        with pytest.raises(RetriableDeliveryError, match=r"^connection_error"):
            await p.send(sms())
    async with WebhookProvider(settings) as w:
        with pytest.raises(RetriableDeliveryError, match=r"^connection_error"):
            await w.send(webhook(f"http://127.0.0.1:{port}/hook"))


async def test_send_before_start_is_a_programming_error(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await SmsProvider(settings).send(sms())


async def test_ledger_file_and_http_views(tmp_path: Path) -> None:
    path = tmp_path / "ledger" / "receipts.jsonl"
    async with SandboxServer(ledger_path=path, seed=1) as server:
        async with PushProvider(make_settings(server, push_api_token="")) as p:
            await p.send(push())
            await p.send(push())
            await p.send(push(notification_id="n2"))
        assert (await get_json(f"{server.url}/healthz"))["status"] == "ok"
        everything = await get_json(f"{server.url}/v1/ledger")
        assert everything["receipts"] == 3
        assert len(everything["deliveries"]) == 2  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{server.url}/v1/ledger?kind=fax") as r:
                assert r.status == 400
            async with s.post(f"{server.url}/v1/_reset") as r:
                assert r.status == 200
        assert server.deliveries("push") == [] and server.receipts("push") == 0
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(x["idempotency_key"], x["duplicate"], x["status"]) for x in lines] == [
        ("n1:push", False, 201),
        ("n1:push", True, 200),
        ("n2:push", False, 201),
    ]
    assert lines[0]["id"] == lines[1]["id"] != lines[2]["id"]


async def test_sandbox_main_runs_standalone() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifyd.tools.sandbox",
        "--port",
        "0",
        "--smtp-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("sandbox http  http://127.0.0.1:")
        url = line.split()[2]
        assert (await get_json(f"{url}/healthz"))["status"] == "ok"
        smtp_line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
        assert smtp_line.startswith("sandbox smtp  127.0.0.1:")
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.communicate()
    assert proc.returncode == 0


# --- email ---------------------------------------------------------------------------


async def test_email_delivered_to_sink(sandbox: SandboxServer, sink: SmtpSink) -> None:
    p = SmtpProvider(make_settings(sandbox, smtp_port=sink.port, smtp_from="noreply@notifyd.test"))
    await p.start()
    d = email(title="Grüße\r\nBcc: evil@example.com", body="Zeile 1\nZeile 2 ✓", locale="de")
    p.check(d)
    receipt = await p.send(d)
    await p.stop()
    assert receipt.provider_id == message_id_for("n1:email")
    [msg] = sink.messages
    assert msg["Subject"] == "Grüße Bcc: evil@example.com"  # folded, no header injection
    assert msg["Bcc"] is None
    assert msg["To"] == "user@example.com"
    assert msg["From"] == "noreply@notifyd.test"
    assert msg["Message-ID"] == message_id_for("n1:email")
    assert msg["X-Notifyd-Idempotency-Key"] == "n1:email"
    assert msg["X-Notifyd-Notification-Id"] == "n1"
    assert msg["Content-Language"] == "de"
    assert msg.get_content().rstrip("\n") == "Zeile 1\nZeile 2 ✓"
    assert sink.envelopes[0].rcpt_tos == ["user@example.com"]


async def test_email_retry_has_same_message_id(sandbox: SandboxServer, sink: SmtpSink) -> None:
    p = SmtpProvider(make_settings(sandbox, smtp_port=sink.port))
    await p.send(email())
    await p.send(email(attempt=2))
    await p.send(email(notification_id="n2"))
    assert sink.receipts == 3
    assert len(sink.unique) == 2
    assert message_id_for("n1:email") != message_id_for("n2:email")


async def test_email_refusals(sandbox: SandboxServer, sink: SmtpSink) -> None:
    p = SmtpProvider(make_settings(sandbox, smtp_port=sink.port))
    with pytest.raises(PermanentDeliveryError, match=r"^smtp_550"):
        await p.send(email(address="nobody@example.com"))
    with pytest.raises(RetriableDeliveryError, match=r"^smtp_451"):
        await p.send(email(address="busy@example.com"))
    assert sink.receipts == 0


async def test_email_closed_port_is_retriable(sandbox: SandboxServer) -> None:
    p = SmtpProvider(make_settings(sandbox, smtp_port=free_port(), smtp_timeout_s=2.0))
    with pytest.raises(RetriableDeliveryError, match=r"^connection_error"):
        await p.send(email())


async def test_email_check_rejects_bad_address(sandbox: SandboxServer) -> None:
    p = SmtpProvider(make_settings(sandbox))
    for address in [None, "", "not-an-address", "a@b"]:
        with pytest.raises(PermanentDeliveryError, match=r"^invalid_address"):
            p.check(email(address=address))
    with pytest.raises(ValueError, match="exclusive"):
        SmtpProvider(make_settings(sandbox, smtp_tls=True, smtp_starttls=True))


async def test_sink_writes_maildir_and_mbox(sandbox: SandboxServer, tmp_path: Path) -> None:
    async with SmtpSink(maildir=tmp_path / "Maildir", mbox=tmp_path / "mbox") as s:
        p = SmtpProvider(make_settings(sandbox, smtp_port=s.port))
        await p.send(email())
    md = mailbox.Maildir(tmp_path / "Maildir", create=False)
    assert [m["Subject"] for m in md] == ["Subject"]
    mb = mailbox.mbox(tmp_path / "mbox", create=False)
    assert [m["Message-ID"] for m in mb] == [message_id_for("n1:email")]
    mb.close()


async def test_sink_stop_closes_idle_sessions() -> None:
    sink = SmtpSink()
    await sink.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
    assert (await reader.readline()).startswith(b"220 ")
    await sink.stop()  # must not leave the session's handler task pending
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


# --- memory double ---------------------------------------------------------------------


async def test_memory_provider() -> None:
    p = MemoryProvider("sms")
    assert p.channel == "sms"
    await p.start()
    assert p.started
    first = await p.send(sms())
    assert await p.send(sms(attempt=2)) == first  # same key: not recorded twice
    await p.send(sms(notification_id="n2"))
    assert p.keys == ["n1:sms", "n2:sms"] and p.calls == 3

    p.fail_next(RetriableDeliveryError("http_503: down", retry_after=1.0), times=2)
    for _ in range(2):
        with pytest.raises(RetriableDeliveryError):
            await p.send(sms(notification_id="n3"))
    await p.send(sms(notification_id="n3"))
    assert p.keys[-1] == "n3:sms" and p.calls == 6

    with pytest.raises(PermanentDeliveryError):
        p.check(sms(address="bad"))
    assert MemoryProvider("email").channel == "email"
    with pytest.raises(PermanentDeliveryError):
        MemoryProvider("email").check(email(address="bad"))
    p.clear()
    assert p.deliveries == [] and p.calls == 0
    await p.stop()
    assert not p.started
