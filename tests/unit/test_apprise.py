"""Apprise as a push back end, against real Apprise targets on localhost: ``json://`` and
``form://`` URLs pointing at an aiohttp receiver run by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from notifyd.config import Settings
from notifyd.domain.rules import SEND, SUPPRESS, ThrottlePolicy, decide
from notifyd.errors import PermanentDeliveryError, RetriableDeliveryError
from notifyd.model.records import Delivery, Event
from notifyd.providers.apprise import (
    AppriseProvider,
    PushRouter,
    is_apprise_url,
    split_targets,
)
from notifyd.providers.registry import build_provider
from tests.support.http_receiver import Receiver, receiving
from tests.support.memory_provider import MemoryProvider


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as rec:
        yield rec


def delivery(tokens: list[str], **kw: Any) -> Delivery:
    base: dict[str, Any] = {
        "notification_id": "n-1", "event_id": "e-1", "user_id": "u-1", "channel": "push",
        "title": "Your order", "body": "Order 42 shipped", "address": "push", "tokens": tokens,
    }
    return Delivery(**{**base, **kw})


# --- sending ------------------------------------------------------------------------------


async def test_json_target_receives_the_notification(receiver: Receiver) -> None:
    provider = AppriseProvider(timeout_s=5)
    receipt = await provider.send(delivery([receiver.url("json", "hook")], priority="high"))
    [got] = receiver.at("/hook")
    assert got["body"]["title"] == "Your order"
    assert got["body"]["message"] == "Order 42 shipped"
    assert got["body"]["type"] == "warning"  # high priority
    assert got["headers"]["Idempotency-Key"] == "n-1:push"
    assert receipt.detail["apprise_sent"] == 1


async def test_form_target_and_several_urls(receiver: Receiver) -> None:
    provider = AppriseProvider(timeout_s=5)
    urls = [receiver.url("form", "a"), receiver.url("json", "b")]
    await provider.send(delivery(urls, title="", body="only a body"))
    [a] = receiver.at("/a")
    [b] = receiver.at("/b")
    assert a["body"]["message"] == "only a body"
    assert a["body"]["type"] == "info"
    assert b["body"]["message"] == "only a body"


async def test_failing_target_is_retriable_and_retry_skips_delivered_ones(
    receiver: Receiver,
) -> None:
    provider = AppriseProvider(timeout_s=5)
    receiver.status["/bad"] = 503
    urls = [receiver.url("json", "good"), receiver.url("json", "bad")]
    with pytest.raises(RetriableDeliveryError) as exc:
        await provider.send(delivery(urls))
    assert "apprise_failed" in exc.value.reason
    assert len(receiver.at("/good")) == 1 and len(receiver.at("/bad")) == 1
    receiver.status.clear()
    await provider.send(delivery(urls, attempt=2))
    assert len(receiver.at("/good")) == 1  # not sent twice
    assert len(receiver.at("/bad")) == 2


async def test_unreachable_target_is_retriable() -> None:
    from notifyd.tools.broker.base import free_port

    provider = AppriseProvider(timeout_s=5)
    with pytest.raises(RetriableDeliveryError):
        await provider.send(delivery([f"json://127.0.0.1:{free_port()}/x"]))


async def test_slow_target_times_out_as_retriable(receiver: Receiver) -> None:
    provider = AppriseProvider(timeout_s=0.2)
    receiver.delay_s = 0.8
    with pytest.raises(RetriableDeliveryError) as exc:
        await provider.send(delivery([receiver.url("json", "slow")]))
    assert exc.value.reason.startswith("timeout:")
    # The send we stopped waiting for still runs in Apprise's worker thread: let it end
    # (the receiver answered it, Apprise no longer tracks it) before the server closes.
    from apprise.apprise import any_abandoned_calls_still_running

    deadline = asyncio.get_running_loop().time() + 10
    while not receiver.at("/slow") or any_abandoned_calls_still_running():
        assert asyncio.get_running_loop().time() < deadline, "Apprise's send did not end"
        await asyncio.sleep(0.02)
    assert len(receiver.at("/slow")) == 1


async def test_credentials_are_masked_in_reasons(receiver: Receiver) -> None:
    provider = AppriseProvider(timeout_s=5)
    receiver.status["/x"] = 500
    url = f"json://alice:s3cr3t-pw@127.0.0.1:{receiver.server.port}/x?+X-Api-Key=s3cr3t-key"
    with pytest.raises(RetriableDeliveryError) as exc:
        await provider.send(delivery([url]))
    # Apprise's own privacy rendering hides the password but not a header's value.
    assert "s3cr3t-pw" not in exc.value.reason and "s3cr3t-key" not in exc.value.reason
    assert "json://127.0.0.1/" in exc.value.reason


# --- permanent refusals -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["nosuchservice://host/x", "json://", "://nothing"])
async def test_invalid_url_is_permanent(url: str) -> None:
    provider = AppriseProvider()
    with pytest.raises(PermanentDeliveryError, match="invalid_address"):
        provider.check(delivery([url]))
    with pytest.raises(PermanentDeliveryError):
        await provider.send(delivery([url]))


async def test_scheme_allow_list(receiver: Receiver) -> None:
    provider = AppriseProvider(schemes=frozenset({"form"}), timeout_s=5)
    with pytest.raises(PermanentDeliveryError, match="not allowed"):
        await provider.send(delivery([receiver.url("json", "j")]))
    assert receiver.received == []
    # One refused target among delivered ones: delivered, the refusal reported.
    receipt = await provider.send(
        delivery([receiver.url("json", "j"), receiver.url("form", "f")])
    )
    assert len(receiver.at("/f")) == 1
    assert receipt.detail["apprise_sent"] == 1
    assert "not allowed" in receipt.detail["apprise_refused"][0]


async def test_disabled_is_permanent(receiver: Receiver) -> None:
    provider = AppriseProvider(enabled=False)
    with pytest.raises(PermanentDeliveryError, match="apprise_disabled"):
        await provider.send(delivery([receiver.url("json", "x")]))
    assert receiver.received == []


def test_empty_content_and_no_url_are_permanent() -> None:
    provider = AppriseProvider()
    with pytest.raises(PermanentDeliveryError, match="empty_body"):
        provider.check(delivery(["json://127.0.0.1:1/x"], title="", body=""))
    with pytest.raises(PermanentDeliveryError, match="no Apprise URL"):
        provider.check(delivery(["device-token"]))


def test_settings_build_the_provider() -> None:
    s = Settings(apprise_enabled=False, apprise_schemes="json, Form ,", apprise_timeout_s=3)
    p = AppriseProvider.from_settings(s)
    assert (p.enabled, p.schemes, p.timeout_s) == (False, frozenset({"json", "form"}), 3)
    assert AppriseProvider.from_settings(Settings()).schemes is None


# --- the push channel: device tokens and Apprise URLs ------------------------------------


def test_split_targets() -> None:
    fcm = "dXx3:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx"
    assert not is_apprise_url(fcm)
    assert split_targets([fcm, "", "json://h/x", "ab12"]) == ([fcm, "ab12"], ["json://h/x"])


def test_push_channel_provider_is_the_router() -> None:
    assert isinstance(build_provider("push", Settings()), PushRouter)


async def test_router_sends_tokens_to_push_and_urls_to_apprise(receiver: Receiver) -> None:
    push = MemoryProvider("push")
    router = PushRouter(push, AppriseProvider(timeout_s=5))
    await router.start()
    try:
        receipt = await router.send(delivery(["tok-1", receiver.url("json", "r")]))
    finally:
        await router.stop()
    [sent] = push.deliveries
    assert sent.tokens == ["tok-1"]
    assert len(receiver.at("/r")) == 1
    assert receipt.detail["apprise_sent"] == 1


async def test_router_only_push_or_only_apprise(receiver: Receiver) -> None:
    push = MemoryProvider("push")
    router = PushRouter(push, AppriseProvider(timeout_s=5))
    await router.send(delivery(["tok-1"]))
    await router.send(delivery([receiver.url("json", "only")], notification_id="n-2"))
    assert [d.tokens for d in push.deliveries] == [["tok-1"]]
    assert len(receiver.at("/only")) == 1
    with pytest.raises(PermanentDeliveryError, match="no push device token or Apprise URL"):
        router.check(delivery([]))


async def test_router_partial_failures(receiver: Receiver) -> None:
    push = MemoryProvider("push")
    router = PushRouter(push, AppriseProvider(timeout_s=5))
    # Push refuses for good, Apprise delivers: delivered (reported).
    push.fail_next(PermanentDeliveryError("http_400: bad token"))
    receipt = await router.send(delivery(["tok", receiver.url("json", "ok")]))
    assert "http_400: bad token" in receipt.detail["apprise_refused"]
    # Push delivers, Apprise target fails: retriable.
    receiver.status["/down"] = 500
    with pytest.raises(RetriableDeliveryError):
        await router.send(delivery(["tok", receiver.url("json", "down")], notification_id="n-3"))
    # Both refuse for good: permanent.
    push.fail_next(PermanentDeliveryError("http_400: bad token"))
    with pytest.raises(PermanentDeliveryError):
        await router.send(delivery(["tok", "nosuch://x/y"], notification_id="n-4"))
    # An invalid URL next to a device token does not fail the check.
    router.check(delivery(["tok", "nosuch://x/y"]))


# --- routing rules: apprise_urls make the push channel deliverable ----------------------


def test_rules_route_apprise_urls_through_push() -> None:
    event = Event(event_id="e", user_id="u", title="T", body="B")
    policy = ThrottlePolicy(0, 3600, "defer")
    prefs = {"user_id": "u", "apprise_urls": ["json://h/x"], "push_tokens": ["tok"]}
    push = next(d for d in decide(event, prefs, 0.0, {}, policy) if d.channel == "push")
    assert push.action == SEND
    assert push.tokens == ["tok", "json://h/x"]
    only = {"user_id": "u", "apprise_urls": ["json://h/x"]}
    push = next(d for d in decide(event, only, 0.0, {}, policy) if d.channel == "push")
    assert push.action == SEND and push.tokens == ["json://h/x"]
    none = {"user_id": "u"}
    push = next(d for d in decide(event, none, 0.0, {}, policy) if d.channel == "push")
    assert push.action == SUPPRESS and (push.reason or "").startswith("no_address")
