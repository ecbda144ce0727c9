"""The egress policy for user-chosen destinations (notifyd.egress): the ranges, the
allow-list, and the connect-time checks against real local servers that must see no
connection when a destination is refused."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import requests
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import ValidationError

from notifyd.config import Settings
from notifyd.egress import EgressDenied, EgressPolicy, classify, guard_sockets
from notifyd.errors import PermanentDeliveryError, RetriableDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.http import EgressResolver, egress_connector, post_json
from notifyd.providers.httpapi import SmsProvider
from notifyd.providers.webhook import WebhookProvider
from tests.support.http_target import HttpTarget

DENY_ALL = EgressPolicy()

# --- the ranges ----------------------------------------------------------------------------

DENIED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.254", "shared (CGNAT)"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "reserved"),  # Teredo
    ("::127.0.0.1", "reserved (IPv4-compatible)"),
    ("64:ff9b:1::a00:1", "reserved (local NAT64)"),
    # IPv6 forms that carry a denied IPv4 address:
    ("::ffff:127.0.0.1", "loopback (IPv4 in IPv6)"),
    ("::ffff:169.254.169.254", "link-local (IPv4 in IPv6)"),
    ("::ffff:10.0.0.1", "private (IPv4 in IPv6)"),
    ("::ffff:0.0.0.0", "unspecified (IPv4 in IPv6)"),
    ("64:ff9b::7f00:1", "loopback (IPv4 in IPv6)"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local (IPv4 in IPv6)"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::1", "loopback (IPv4 in IPv6)"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:101::1", "private (IPv4 in IPv6)"),  # 6to4 of 192.168.1.1
]

PUBLIC = [
    "93.184.215.14",
    "8.8.8.8",
    "1.1.1.1",
    "172.32.0.1",  # just past 172.16/12
    "100.128.0.1",  # just past 100.64/10
    "192.169.0.1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of a public address
]


@pytest.mark.parametrize(("address", "label"), DENIED)
def test_denied_ranges(address: str, label: str) -> None:
    assert DENY_ALL.address_denial(address) == label
    assert DENY_ALL.host_denial(f"[{address}]" if ":" in address else address) == label
    with pytest.raises(EgressDenied) as exc:
        DENY_ALL.check_address(address, "webhook")
    # The reason names the class of address, never the address.
    assert exc.value.reason == f"egress_denied: webhook destination refused ({label} address)"


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None
    assert DENY_ALL.address_denial(address) is None
    DENY_ALL.check_address(address, "webhook")


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "localhost.", "app.localhost", "ip6-localhost",
     "ip6-loopback", "localhost.localdomain", "[::1]", "127.0.0.1"],
)
def test_local_host_names_are_refused_before_resolution(host: str) -> None:
    assert DENY_ALL.host_denial(host) is not None
    with pytest.raises(EgressDenied, match=r"^egress_denied: webhook destination refused \("):
        DENY_ALL.check_host(host, "webhook")
    if host.startswith(("l", "L", "a", "i")):
        assert DENY_ALL.host_denial(host) == "local host name"
        with pytest.raises(EgressDenied, match=r"refused \(local host name\)$"):
            DENY_ALL.check_host(host, "webhook")


def test_other_names_are_left_to_resolution() -> None:
    for host in ("example.com", "hooks.slack.com", "localhost.example.com"):
        assert DENY_ALL.host_denial(host) is None
    assert DENY_ALL.address_denial("not-an-address") == "unresolved"


def test_check_url() -> None:
    for url in ["http://127.0.0.1:8080/x", "https://[::1]/", "http://LOCALHOST/",
                "http://169.254.169.254/latest/meta-data/", "http://[::ffff:7f00:1]/"]:
        with pytest.raises(EgressDenied):
            DENY_ALL.check_url(url, "webhook")
    DENY_ALL.check_url("https://hooks.example.com/x", "webhook")


def test_egress_denied_is_permanent_and_an_os_error() -> None:
    err = EgressDenied("webhook", "loopback")
    assert isinstance(err, PermanentDeliveryError) and not err.retriable
    assert isinstance(err, OSError)  # what aiohttp and urllib3 treat as a failed connect


# --- the allow-list ----------------------------------------------------------------------


def test_allow_list_cidrs_and_hosts() -> None:
    policy = EgressPolicy.parse(" 127.0.0.1/32, 10.0.0.0/8 ,::1, Sink.Internal., *.corp.example,")
    assert policy.address_denial("127.0.0.1") is None
    assert policy.address_denial("::ffff:127.0.0.1") is None  # the same destination
    assert policy.address_denial("127.0.0.2") == "loopback"
    assert policy.address_denial("10.200.0.1") is None
    assert policy.address_denial("::1") is None
    assert policy.address_denial("169.254.169.254") == "link-local"
    assert policy.host_denial("sink.internal") is None and policy.host_allowed("SINK.internal.")
    assert policy.host_allowed("a.corp.example") and policy.host_allowed("b.a.corp.example")
    assert not policy.host_allowed("corp.example")
    assert not policy.host_allowed("evilcorp.example")
    assert policy.host_denial("localhost") == "local host name"
    assert policy.host_denial("127.0.0.1") is None


@pytest.mark.parametrize("entry", ["bad entry", "http://x/", "10.0.0.0/33", "*.", "a..b", "é.com"])
def test_allow_list_rejects_garbage(entry: str) -> None:
    with pytest.raises(ValueError, match="neither a CIDR nor a host name"):
        EgressPolicy.parse(entry)
    with pytest.raises(ValidationError, match="egress_allow"):
        Settings(egress_allow=entry)


def test_settings_default_denies() -> None:
    policy = EgressPolicy.from_settings(Settings())
    assert policy == EgressPolicy()
    assert EgressPolicy.from_settings(Settings(egress_allow="127.0.0.1/32")).address_denial(
        "127.0.0.1"
    ) is None


# --- aiohttp: checked on the address actually connected to ---------------------------------


class HostsResolver(AbstractResolver):
    """DNS as an attacker controls it: a fixed answer per name (like a hosts file),
    e.g. a name that resolves to a public address when validated and to a private one
    when the worker connects (DNS rebinding)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {"hostname": host, "host": a, "port": port, "proto": 0, "flags": 0,
             "family": socket.AF_INET6 if ":" in a else socket.AF_INET}
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def target() -> AsyncIterator[HttpTarget]:
    t = await HttpTarget().start()
    yield t
    await t.close()


async def _post(
    policy: EgressPolicy, url: str, resolver: AbstractResolver | None = None
) -> dict[str, object]:
    async with aiohttp.ClientSession(
        connector=egress_connector(policy, "webhook", resolver),
        timeout=aiohttp.ClientTimeout(total=5),
    ) as session:
        return await post_json(session, url, b"{}", {}, what="webhook", echo_body=False)


@pytest.mark.parametrize(
    "netloc",
    [
        "localhost:{port}",  # a local name
        "127.0.0.1:{port}",  # a literal address: aiohttp asks no resolver for it
        "[::ffff:127.0.0.1]:{port}",  # the same, IPv4-mapped
        "0x7f.0.0.1:{port}",  # a name the system resolver turns into 127.0.0.1
    ],
)
async def test_connector_refuses_loopback_without_connecting(
    target: HttpTarget, netloc: str
) -> None:
    url = f"http://{netloc.format(port=target.port)}/hook"
    with pytest.raises(EgressDenied) as exc:
        await _post(DENY_ALL, url)
    assert exc.value.reason.startswith("egress_denied: webhook destination refused (")
    assert target.connections == 0 and target.requests == []


async def test_dns_rebinding_is_checked_on_the_resolved_address(target: HttpTarget) -> None:
    url = f"http://rebind.test:{target.port}/hook"
    dns = HostsResolver({"rebind.test": ["127.0.0.1"]})
    with pytest.raises(EgressDenied, match=r"\(loopback address\)"):
        await _post(DENY_ALL, url, dns)
    assert dns.asked == ["rebind.test"]
    assert target.connections == 0
    # The same set-up reaches the server once the address is allow-listed (the test
    # above can fail).
    await _post(EgressPolicy.parse("127.0.0.1/32"), url, dns)
    assert target.connections == 1 and len(target.requests) == 1


async def test_denied_addresses_are_dropped_from_an_answer(target: HttpTarget) -> None:
    policy = EgressPolicy.parse("127.0.0.1/32")
    dns = HostsResolver({"mixed.test": ["127.0.0.2", "169.254.169.254", "127.0.0.1"]})
    guard = EgressResolver(policy, "webhook", dns)
    found = await guard.resolve("mixed.test", target.port)
    assert [r["host"] for r in found] == ["127.0.0.1"]
    await _post(policy, f"http://mixed.test:{target.port}/x", dns)
    assert target.connections == 1


async def test_allow_listed_host_name_admits_its_addresses(target: HttpTarget) -> None:
    dns = HostsResolver({"sink.internal": ["127.0.0.1"]})
    await _post(EgressPolicy.parse("sink.internal"), f"http://sink.internal:{target.port}/", dns)
    assert target.connections == 1
    # ... but not a literal-IP URL to another loopback address.
    with pytest.raises(EgressDenied):
        await _post(EgressPolicy.parse("sink.internal"), f"http://127.0.0.2:{target.port}/")


# --- the webhook provider ----------------------------------------------------------------


def webhook(url: str) -> Delivery:
    return Delivery(notification_id="n1", event_id="e1", user_id="u1", channel="webhook",
                    title="Hi", body="Hello", address=url)


async def test_webhook_provider_refuses_internal_destinations(target: HttpTarget) -> None:
    async with WebhookProvider(Settings()) as provider:
        for url in [target.url(), f"http://localhost:{target.port}/hook",
                    "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/x"]:
            with pytest.raises(EgressDenied):
                provider.check(webhook(url))
            with pytest.raises(EgressDenied):
                await provider.send(webhook(url))
    assert target.connections == 0


async def test_webhook_provider_remembers_only_urls_that_passed(
    target: HttpTarget, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked URLs are remembered (a user's URL comes with each delivery); a refused
    one is judged again each time, and the memory is bounded."""
    from notifyd.providers import webhook as webhook_module

    monkeypatch.setattr(webhook_module, "PASSED_URLS", 3)
    async with WebhookProvider(Settings()) as provider:
        denied = "http://169.254.169.254/latest/meta-data/"
        for _ in range(2):
            with pytest.raises(EgressDenied):
                provider.check(webhook(denied))
        assert provider._passed == {}
        urls = [f"https://hooks{i}.example.com/x" for i in range(4)]
        for url in urls[:3]:
            provider.check(webhook(url))
        assert list(provider._passed) == urls[:3]
        provider.check(webhook(urls[3]))  # full: starts over
        assert list(provider._passed) == urls[3:]
        with pytest.raises(PermanentDeliveryError):
            provider.check(webhook("ftp://files.example.com/x"))


async def test_webhook_error_body_is_not_echoed(target: HttpTarget) -> None:
    target.status, target.body = 500, b'{"error": "db password is hunter2"}'
    async with WebhookProvider(Settings(egress_allow="127.0.0.1/32")) as provider:
        with pytest.raises(RetriableDeliveryError) as exc:
            await provider.send(webhook(target.url()))
        assert exc.value.reason == "http_500: webhook answered 500"
        target.status = 403
        with pytest.raises(PermanentDeliveryError) as perm:
            await provider.send(webhook(target.url()))
        assert perm.value.reason == "http_403: webhook answered 403"
    assert len(target.requests) == 2


async def test_operator_configured_urls_are_not_subject_to_the_policy(
    target: HttpTarget,
) -> None:
    # The SMS API is the operator's choice: loopback is fine, and its errors are shown.
    settings = Settings(sms_api_url=target.url("v1/sms"))
    assert settings.egress_allow == ""
    async with SmsProvider(settings) as sms:
        await sms.send(Delivery(notification_id="n1", event_id="e1", user_id="u1",
                                channel="sms", title="", body="Hi", address="+15551234567"))
        target.status, target.body = 422, b'{"code": "invalid_to"}'
        with pytest.raises(PermanentDeliveryError, match="invalid_to"):
            await sms.send(Delivery(notification_id="n2", event_id="e2", user_id="u1",
                                    channel="sms", title="", body="Hi", address="+15551234567"))
    assert len(target.requests) == 2


# --- synchronous code in a thread (Apprise): the socket.connect audit hook ----------------


def _requests_post(url: str) -> int:
    return requests.post(url, json={}, timeout=5).status_code


async def test_socket_guard_refuses_connects_in_its_context(target: HttpTarget) -> None:
    def guarded() -> tuple[str, int]:
        with guard_sockets(DENY_ALL, "apprise") as guard:
            try:
                _requests_post(target.url())
            except requests.ConnectionError as exc:
                return type(exc).__name__, len(guard.denials)
        return "connected", len(guard.denials)

    assert await asyncio.to_thread(guarded) == ("ConnectionError", 1)
    assert target.connections == 0
    # Outside the context (same process, hook installed) connections are untouched.
    assert await asyncio.to_thread(_requests_post, target.url()) == 200
    assert target.connections == 1


async def test_socket_guard_admits_allow_listed_addresses(target: HttpTarget) -> None:
    def guarded() -> int:
        with guard_sockets(EgressPolicy.parse("127.0.0.1/32"), "apprise"):
            return _requests_post(target.url())

    assert await asyncio.to_thread(guarded) == 200
    assert target.connections == 1
