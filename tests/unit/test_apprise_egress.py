"""Apprise targets under the egress policy: real Apprise plugins (``json://``,
``mailto://``) against real local servers that must see no connection when refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from notifyd.config import Settings
from notifyd.egress import EgressDenied, EgressPolicy
from notifyd.errors import PermanentDeliveryError, RetriableDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.apprise import AppriseProvider, PushRouter
from notifyd.providers.registry import build_provider
from notifyd.tools.sandbox.smtp import SmtpSink
from tests.support.http_target import HttpTarget

LOOPBACK_ALLOWED = EgressPolicy.parse("127.0.0.1/32")


def delivery(tokens: list[str], **kw: Any) -> Delivery:
    base: dict[str, Any] = {
        "notification_id": "n-1", "event_id": "e-1", "user_id": "u-1", "channel": "push",
        "title": "Your order", "body": "Order 42 shipped", "address": "push", "tokens": tokens,
    }
    return Delivery(**{**base, **kw})


@pytest.fixture
async def target() -> AsyncIterator[HttpTarget]:
    t = await HttpTarget().start()
    yield t
    await t.close()


@pytest.fixture
async def other_loopback() -> AsyncIterator[HttpTarget]:
    """A server on 127.0.0.2: loopback, but not on the allow-list."""
    t = await HttpTarget(host="127.0.0.2").start()
    yield t
    await t.close()


@pytest.fixture
async def provider() -> AsyncIterator[AppriseProvider]:
    p = AppriseProvider(timeout_s=5, egress=EgressPolicy())
    yield p
    await p.stop()


async def test_literal_and_local_hosts_are_refused_before_sending(
    provider: AppriseProvider, target: HttpTarget
) -> None:
    for url in [f"json://127.0.0.1:{target.port}/x", f"json://localhost:{target.port}/x",
                f"form://[::1]:{target.port}/x", "json://169.254.169.254/latest"]:
        with pytest.raises(EgressDenied) as exc:
            provider.check(delivery([url]))
        assert exc.value.reason.startswith("egress_denied: apprise destination refused (")
        with pytest.raises(PermanentDeliveryError, match=r"^egress_denied"):
            await provider.send(delivery([url]))
    assert target.connections == 0


async def test_connect_time_guard_sees_hosts_the_url_does_not_show(
    provider: AppriseProvider,
) -> None:
    # mailto:// names example.com but connects to the SMTP server given in ?smtp=: only
    # a check of the address actually connected to can see it.
    listener = await HttpTarget(host="127.0.0.2").start()  # counts any TCP connection
    try:
        url = (f"mailto://example.com?smtp=127.0.0.2&port={listener.port}&mode=insecure"
               "&to=a@example.com&from=n@example.com")
        provider.check(delivery([url]))  # nothing to refuse before connecting
        with pytest.raises(PermanentDeliveryError) as exc:
            await provider.send(delivery([url]))
        assert exc.value.reason == "egress_denied: apprise destination refused (loopback address)"
        assert listener.connections == 0
    finally:
        await listener.close()


async def test_connect_time_guard_lets_allowed_smtp_through() -> None:
    sink = SmtpSink()
    await sink.start()
    provider = AppriseProvider(timeout_s=5, egress=LOOPBACK_ALLOWED)
    try:
        url = (f"mailto://example.com?smtp=127.0.0.1&port={sink.port}&mode=insecure"
               "&to=a@example.com&from=n@example.com")
        receipt = await provider.send(delivery([url]))
        assert receipt.detail["apprise_sent"] == 1
        [mail] = sink.messages
        assert mail["To"] == "a@example.com"
    finally:
        await provider.stop()
        await sink.stop()


async def test_allow_listed_target_is_delivered(target: HttpTarget) -> None:
    provider = AppriseProvider(timeout_s=5, egress=LOOPBACK_ALLOWED)
    try:
        await provider.send(delivery([f"json://127.0.0.1:{target.port}/hook"]))
    finally:
        await provider.stop()
    [req] = target.requests
    assert req["path"] == "/hook" and req["headers"]["idempotency-key"] == "n-1:push"


async def test_allow_listed_host_name(target: HttpTarget) -> None:
    provider = AppriseProvider(timeout_s=5, egress=EgressPolicy.parse("localhost"))
    try:
        await provider.send(delivery([f"json://localhost:{target.port}/named"]))
    finally:
        await provider.stop()
    assert [r["path"] for r in target.requests] == ["/named"]


async def test_redirects_are_not_followed(
    target: HttpTarget, other_loopback: HttpTarget
) -> None:
    target.status = 307
    target.headers = {"Location": other_loopback.url("stolen")}
    provider = AppriseProvider(timeout_s=5, egress=LOOPBACK_ALLOWED)
    try:
        with pytest.raises(RetriableDeliveryError, match="apprise_failed"):
            await provider.send(delivery([f"json://127.0.0.1:{target.port}/hook"]))
    finally:
        await provider.stop()
    assert len(target.requests) == 1
    assert other_loopback.connections == 0


async def test_refused_target_next_to_a_delivered_one(target: HttpTarget) -> None:
    provider = AppriseProvider(timeout_s=5, egress=LOOPBACK_ALLOWED)
    try:
        receipt = await provider.send(delivery(
            [f"json://127.0.0.1:{target.port}/ok", f"json://127.0.0.2:{target.port}/no"]
        ))
    finally:
        await provider.stop()
    assert receipt.detail["apprise_sent"] == 1
    [refusal] = receipt.detail["apprise_refused"]
    assert refusal.startswith("egress_denied")
    assert [r["path"] for r in target.requests] == ["/ok"]


async def test_the_push_channel_is_built_with_the_policy(target: HttpTarget) -> None:
    router = build_provider("push", Settings())
    assert isinstance(router, PushRouter)
    assert router.apprise.egress == EgressPolicy()
    await router.start()
    try:
        with pytest.raises(PermanentDeliveryError, match=r"^egress_denied"):
            await router.send(delivery([f"json://localhost:{target.port}/x"]))
    finally:
        await router.stop()
    assert target.connections == 0
    allowed = AppriseProvider.from_settings(Settings(egress_allow="127.0.0.1/32"))
    assert allowed.egress == LOOPBACK_ALLOWED
