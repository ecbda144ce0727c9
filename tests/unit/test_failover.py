"""Per-channel provider lists and failover: settings, the chain's order and outcomes,
the circuit breaker on a fake clock, per-provider metrics, and real Apprise services
(``json://``, ``form://``, ``ntfy://``, ``mailto://``) against servers started here."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from notifyd.config import Settings
from notifyd.errors import PermanentDeliveryError, RetriableDeliveryError
from notifyd.log import configure
from notifyd.metrics import Metrics
from notifyd.model.records import Delivery
from notifyd.providers.apprise import AppriseProvider, PushRouter
from notifyd.providers.chain import CLOSED, HALF_OPEN, OPEN, Circuit, FailoverProvider, board
from notifyd.providers.httpapi import SmsProvider
from notifyd.providers.registry import build_provider
from notifyd.providers.service import ServiceProvider, encode_value, expand
from notifyd.providers.smtp import SmtpProvider
from notifyd.providers.spec import ProviderSpec, parse_providers
from notifyd.tools.sandbox.provider import SandboxServer
from notifyd.tools.sandbox.smtp import SmtpSink
from tests.support.http_receiver import Receiver, receiving
from tests.support.memory_provider import MemoryProvider

HOSTILE = "a@evil/x?y#z"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sms(**kw: Any) -> Delivery:
    base: dict[str, Any] = {
        "notification_id": "n-1", "event_id": "e-1", "user_id": "u-1", "channel": "sms",
        "title": "Order", "body": "Order 42 shipped", "address": "+15551234567",
    }
    return Delivery(**{**base, **kw})


def metric(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(f"notifyd_{name}", labels)


def chain(*providers: tuple[str, Any], clock: FakeClock | None = None, failures: int = 2,
          metrics: Metrics | None = None) -> FailoverProvider:
    return FailoverProvider(
        "sms", list(providers), failures=failures, cooldown_s=30.0,
        clock=clock or FakeClock(), metrics=metrics or Metrics(CollectorRegistry()),
    )


# --- settings -----------------------------------------------------------------------------


def test_parse_names_builtins_and_urls() -> None:
    specs = parse_providers(
        "sms", "twilio://SID:TOKEN@+15550001111/{phone} backup=json://h/x?:to={phone} "
        "http json://other/{user_id}",
    )
    assert [s.name for s in specs] == ["twilio", "backup", "http", "json"]
    assert specs[0].url is not None and specs[2] == ProviderSpec("http", builtin="http")
    twice = parse_providers("email", "mailtos://a:b@h/?to={email} mailtos://c:d@h/?to={email}")
    assert [s.name for s in twice] == ["mailtos", "mailtos-2"]
    assert parse_providers("push", "") == [ProviderSpec("http", builtin="http")]


@pytest.mark.parametrize(("channel", "text", "error"), [
    ("sms", "http,twilio://a:b@+1555/{phone}", "separate entries with spaces"),
    ("sms", "smtp", "neither an Apprise URL"),
    ("sms", "json://h/x?to={email}", "unknown placeholder {email}"),
    ("push", "fcm://{token}/x", "not in its host or credentials"),
    ("sms", "twilio://{phone}:tok@+1555/x", "not in its host or credentials"),
    ("sms", "a=http a=json://h/{phone}", "used twice"),
    ("sms", "Bad Name=http", "neither an Apprise URL"),
])
def test_parse_refuses_bad_lists(channel: str, text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("{", r"\{").replace("}", r"\}")):
        parse_providers(channel, text)


def test_settings_refuse_bad_list_without_echoing_secrets() -> None:
    with pytest.raises(ValueError) as exc:
        Settings(sms_providers="twilio://ACsid:SeCrEt-ToKeN@+15550001111/{email}")
    assert "sms_providers" in str(exc.value) and "{email}" in str(exc.value)
    assert "SeCrEt-ToKeN" not in str(exc.value)


def test_notifyd_config_masks_provider_urls() -> None:
    env = {"NOTIFYD_SMS_PROVIDERS":
           "primary=twilio://ACsid:SeCrEt-ToKeN@+15550001111/{phone} http",
           "NOTIFYD_PUSH_PROVIDERS": "fcm://AIzaSeCrEtKeY/{token}",
           "NOTIFYD_CIRCUIT_FAILURES": "3"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")}
    out = subprocess.run([sys.executable, "-m", "notifyd", "config"], env={**base, **env},
                         capture_output=True, text=True, check=True, timeout=60).stdout
    shown = json.loads(out)
    assert shown["sms_providers"] == "primary=twilio://**** http"
    assert shown["push_providers"] == "fcm://****"
    assert shown["circuit_failures"] == 3
    assert "SeCrEt" not in out and "ACsid" not in out
    assert "SeCrEt" not in repr(Settings(sms_providers=env["NOTIFYD_SMS_PROVIDERS"]))


def test_registry_single_provider_is_unchanged_and_several_chain() -> None:
    assert isinstance(build_provider("sms", Settings()), SmsProvider)
    assert isinstance(build_provider("push", Settings()), PushRouter)
    assert build_provider("email", Settings()).name == "smtp"
    only = build_provider("sms", Settings(sms_providers="json://127.0.0.1:1/x?:to={phone}"))
    assert isinstance(only, ServiceProvider) and only.name == "json"
    push = build_provider("push", Settings(push_providers="fcm://proj/{token}?keyfile=/k http"))
    assert isinstance(push, FailoverProvider)
    routers = [link.provider for link in push.links]
    assert all(isinstance(r, PushRouter) for r in routers)
    assert isinstance(routers[0], PushRouter) and isinstance(routers[0].push, ServiceProvider)
    assert isinstance(routers[1], PushRouter) and routers[0].apprise is routers[1].apprise
    built = build_provider("email", Settings(
        email_providers="ses=mailtos://u:p@h/?to={email} smtp", circuit_failures=7))
    assert isinstance(built, FailoverProvider)
    assert [(link.name, type(link.provider)) for link in built.links] == [
        ("ses", ServiceProvider), ("smtp", SmtpProvider)]
    assert built.links[0].circuit.threshold == 7


def test_readme_examples_resolve_to_exactly_the_recipient() -> None:
    """The README's provider settings parse, build chains, and each Apprise URL becomes
    a service with the substituted recipient as its only target."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("## Providers"):readme.index("## Command line")]
    env = dict(re.findall(r"^NOTIFYD_(\w+)='([^']*)'", block, re.M))
    assert set(env) == {"SMS_PROVIDERS", "EMAIL_PROVIDERS", "PUSH_PROVIDERS"}
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    recipient = {"sms": "+15551234567", "email": "bob@example.com", "push": "dXyz:APA91b"}
    apprise = AppriseProvider()
    for channel, want in recipient.items():
        assert isinstance(build_provider(channel, settings), FailoverProvider)
        for spec in settings.provider_specs(channel):
            if spec.url is None:
                continue
            values = {"user_id": "u-123", "token": want, "phone": want, "email": want,
                      "address": want}
            plugin = apprise.instantiate(expand(spec.url, values))
            targets = getattr(plugin, "targets", None) or getattr(plugin, "topics", None)
            flat = [t[-1] if isinstance(t, tuple) else t for t in targets or ()]
            assert flat == ["u-123" if "{user_id}" in spec.url else want], spec.name


# --- the chain ----------------------------------------------------------------------------


async def test_retriable_failure_moves_to_next_provider_with_same_key() -> None:
    a, b = MemoryProvider("sms"), MemoryProvider("sms")
    a.fail_next(RetriableDeliveryError("http_503: down"))
    m = Metrics(CollectorRegistry())
    c = chain(("a", a), ("b", b), metrics=m)
    receipt = await c.send(sms())
    assert receipt.provider == "b" and receipt.detail["failed_over"] == ["a: http_503: down"]
    assert a.calls == 1 and a.deliveries == []
    assert b.keys == ["n-1:sms"]
    assert metric(m, "provider_attempts_total", channel="sms", provider="a") == 1
    assert metric(m, "provider_failures_total", channel="sms", provider="a",
                  kind="retriable") == 1
    assert metric(m, "provider_attempts_total", channel="sms", provider="b") == 1
    # Healthy again: the first provider is first again.
    assert (await c.send(sms(notification_id="n-2"))).provider == "a"


async def test_permanent_refusal_does_not_fail_over() -> None:
    a, b = MemoryProvider("sms"), MemoryProvider("sms")
    a.fail_next(PermanentDeliveryError("http_400: invalid number"))
    c = chain(("a", a), ("b", b))
    with pytest.raises(PermanentDeliveryError, match="http_400"):
        await c.send(sms())
    assert b.calls == 0
    assert c.links[0].circuit.state == CLOSED  # an answer: the provider is up


async def test_bad_address_fails_without_calling_any_provider() -> None:
    a, b = MemoryProvider("sms"), MemoryProvider("sms")
    c = chain(("a", a), ("b", b))
    with pytest.raises(PermanentDeliveryError, match="invalid_address"):
        c.check(sms(address="12345"))
    with pytest.raises(PermanentDeliveryError, match="invalid_address"):
        await c.send(sms(address="12345"))
    assert a.calls == b.calls == 0


async def test_provider_refusing_the_input_is_skipped() -> None:
    # A {token} service cannot serve a push user without device tokens; the built-in can.
    svc = ServiceProvider("push", "json://127.0.0.1:1/p?:t={token}", name="svc", timeout_s=1)
    mem = MemoryProvider("push")
    c = FailoverProvider("push", [("svc", svc), ("mem", mem)], clock=FakeClock(),
                         metrics=Metrics(CollectorRegistry()))
    d = Delivery("n-1", "e-1", "u-1", "push", "t", "b", tokens=["json://x/y"])
    c.check(d)
    assert (await c.send(d)).provider == "mem"


async def test_all_failing_is_retriable_with_every_reason() -> None:
    a, b = MemoryProvider("sms"), MemoryProvider("sms")
    a.fail_next(RetriableDeliveryError("timeout: a"))
    b.fail_next(RetriableDeliveryError("http_503: b", retry_after=4))
    with pytest.raises(RetriableDeliveryError) as exc:
        await chain(("a", a), ("b", b)).send(sms())
    assert exc.value.reason == "providers_failed: a: timeout: a | b: http_503: b"


async def test_a_crashing_provider_is_a_failure_of_that_provider() -> None:
    class Broken(MemoryProvider):
        async def send(self, delivery: Delivery) -> Any:
            raise KeyError("bug")

    b = MemoryProvider("sms")
    c = chain(("broken", Broken("sms")), ("b", b))
    assert (await c.send(sms())).provider == "b"
    assert c.links[0].last_error == "provider_error: KeyError: 'bug'"


# --- the circuit --------------------------------------------------------------------------


def test_circuit_opens_half_opens_and_closes_on_the_clock() -> None:
    clock = FakeClock()
    states: list[str] = []
    c = Circuit(3, 30.0, clock, states.append)
    for _ in range(2):
        assert c.allow()
        c.failure()
    assert c.state == CLOSED
    c.success()  # consecutive: a success resets the count
    for _ in range(3):
        assert c.allow()
        c.failure()
    assert c.state == OPEN and not c.allow() and c.retry_in() == 30.0
    clock.t += 29.9
    assert not c.allow()
    clock.t += 0.1
    assert c.allow() and c.state == HALF_OPEN  # the probe
    assert not c.allow()  # only one probe at a time
    c.failure()
    assert c.state == OPEN and c.retry_in() == 30.0  # re-opened for a full cool-down
    clock.t += 30
    assert c.allow()
    c.success()
    assert c.state == CLOSED and c.consecutive_failures == 0 and c.allow()
    assert states == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


async def test_open_circuit_skips_provider_until_probe_succeeds() -> None:
    clock = FakeClock()
    m = Metrics(CollectorRegistry())
    a, b = MemoryProvider("sms"), MemoryProvider("sms")
    c = chain(("a", a), ("b", b), clock=clock, failures=2, metrics=m)
    a.fail_next(RetriableDeliveryError("http_503: down"), times=2)
    for i in range(2):
        assert (await c.send(sms(notification_id=f"n-{i}"))).provider == "b"
    assert c.links[0].circuit.state == OPEN
    assert metric(m, "provider_circuit_state", channel="sms", provider="a") == 2
    # Open: the next deliveries do not call it at all.
    assert (await c.send(sms(notification_id="n-9"))).provider == "b"
    assert a.calls == 2 and c.links[0].skipped == 1
    assert metric(m, "provider_skipped_total", channel="sms", provider="a") == 1
    row = c.health()[0]
    assert (row["provider"], row["state"], row["consecutive_failures"]) == ("a", "open", 2)
    # After the cool-down one probe goes to it; it succeeds and the circuit closes.
    clock.t += 30
    assert (await c.send(sms(notification_id="n-10"))).provider == "a"
    assert c.links[0].circuit.state == CLOSED
    assert metric(m, "provider_circuit_state", channel="sms", provider="a") == 0


async def test_every_circuit_open_is_retriable_until_the_first_probe() -> None:
    clock = FakeClock()
    a, b = MemoryProvider("sms"), MemoryProvider("sms")
    c = chain(("a", a), ("b", b), clock=clock, failures=1)
    a.fail_next(RetriableDeliveryError("timeout: a"))
    b.fail_next(RetriableDeliveryError("timeout: b"))
    with pytest.raises(RetriableDeliveryError):
        await c.send(sms())
    clock.t += 10
    with pytest.raises(RetriableDeliveryError) as exc:
        await c.send(sms())
    assert exc.value.reason == "providers_failed: a: circuit_open | b: circuit_open"
    assert exc.value.retry_after == 20.0
    assert a.calls == b.calls == 1


async def test_board_lists_started_chains_only() -> None:
    c = chain(("a", MemoryProvider("sms")), ("b", MemoryProvider("sms")))
    await c.start()
    try:
        assert [r["provider"] for r in board.snapshot() if r["channel"] == "sms"][-2:] == [
            "a", "b"]
    finally:
        await c.stop()
    assert all(r["provider"] not in ("a", "b") for r in board.snapshot())


# --- substitution -------------------------------------------------------------------------


def test_values_are_percent_encoded_whole() -> None:
    assert encode_value("+15551234567", "phone") == "%2B15551234567"
    assert encode_value("a@evil?y#z:1", "user_id") == "a%40evil%3Fy%23z%3A1"
    url = expand("json://127.0.0.1:9/p?:user={user_id}", {"user_id": "x@evil.com:80?#"})
    assert url == "json://127.0.0.1:9/p?:user=x%40evil.com%3A80%3F%23"


@pytest.mark.parametrize("value", [HOSTILE, "a,b", "tok1 tok2", "#news", "@everyone", "a;b",
                                   "a\\b", ""])
def test_values_that_would_change_the_targets_are_refused(value: str) -> None:
    with pytest.raises(PermanentDeliveryError, match="invalid_address"):
        encode_value(value, "token")


# --- real Apprise services against local servers ---------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as rec:
        yield rec


async def test_json_service_substitutes_and_keeps_structure(receiver: Receiver) -> None:
    svc = ServiceProvider("sms", f"json://127.0.0.1:{receiver.port}/sms?:to={{phone}}"
                          "&:user={user_id}", name="j", timeout_s=5)
    await svc.start()
    try:
        receipt = await svc.send(sms(user_id="a@evil?y#z:1"))
    finally:
        await svc.stop()
    [got] = receiver.received
    assert got["path"] == "/sms"  # same host, port and path whatever the values
    assert got["body"]["to"] == "+15551234567" and got["body"]["user"] == "a@evil?y#z:1"
    assert got["body"]["message"] == "Order 42 shipped" and got["body"]["title"] == ""
    assert got["headers"]["Idempotency-Key"] == "n-1:sms"
    assert receipt.detail == {"service": "json", "targets": 1}


async def test_hostile_value_is_refused_before_any_call(receiver: Receiver) -> None:
    svc = ServiceProvider("sms", f"json://127.0.0.1:{receiver.port}/sms?:user={{user_id}}",
                          name="j", timeout_s=5)
    with pytest.raises(PermanentDeliveryError, match="invalid_address"):
        svc.check(sms(user_id=HOSTILE))
    with pytest.raises(PermanentDeliveryError):
        await svc.send(sms(user_id=HOSTILE))
    assert receiver.received == []


async def test_form_service_one_url_per_push_token(receiver: Receiver) -> None:
    svc = ServiceProvider("push", f"form://127.0.0.1:{receiver.port}/push/{{token}}",
                          name="f", timeout_s=5)
    d = Delivery("n-1", "e-1", "u-1", "push", "Hi", "there",
                 tokens=["tok:A-1", "json://user/own-url", "tok_B"])
    await svc.send(d)
    assert sorted(r["path"] for r in receiver.received) == ["/push/tok:A-1", "/push/tok_B"]
    assert all(r["body"]["message"] == "there" for r in receiver.received)


async def test_ntfy_service_topic_per_user(receiver: Receiver) -> None:
    svc = ServiceProvider("sms", f"ntfy://127.0.0.1:{receiver.port}/{{user_id}}",
                          name="ntfy", timeout_s=5)
    await svc.send(sms(user_id="u-123"))
    [got] = receiver.received
    assert got["body"]["topic"] == "u-123" and got["body"]["message"] == "Order 42 shipped"


async def test_failing_service_then_healthy_one_same_idempotency_key(
    receiver: Receiver,
) -> None:
    receiver.status["/down"] = 500
    base = f"json://127.0.0.1:{receiver.port}"
    m = Metrics(CollectorRegistry())
    c = chain(("down", ServiceProvider("sms", base + "/down?:to={phone}", name="down",
                                       timeout_s=5)),
              ("up", ServiceProvider("sms", base + "/up?:to={phone}", name="up", timeout_s=5)),
              metrics=m)
    await c.start()
    try:
        receipt = await c.send(sms())
    finally:
        await c.stop()
    assert receipt.provider == "up"
    [down], [up] = receiver.at("/down"), receiver.at("/up")
    assert down["headers"]["Idempotency-Key"] == up["headers"]["Idempotency-Key"] == "n-1:sms"
    assert receipt.detail["failed_over"] == [
        "down: apprise_failed: json://\u2026 failed for 1 of 1 target"]
    assert metric(m, "provider_failures_total", channel="sms", provider="down",
                  kind="retriable") == 1


async def test_secrets_in_a_service_url_never_reach_reasons_or_logs(
    receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    # Apprise's privacy rendering masks the password but not a custom header's value.
    receiver.status["/x"] = 503
    url = (f"json://alice:s3cr3t-pw@127.0.0.1:{receiver.port}/x?+X-Api-Key=s3cr3t-key"
           "&:to={phone}")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure("json", "DEBUG")
    try:
        svc = ServiceProvider("sms", url, name="j", timeout_s=5)
        c = chain(("j", svc), ("j2", MemoryProvider("sms")))
        await c.start()
        try:
            receipt = await c.send(sms())
        finally:
            await c.stop()
        logged = capfd.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    assert receiver.at("/x")[0]["headers"]["X-Api-Key"] == "s3cr3t-key"  # it was used
    assert receipt.provider == "j2"
    assert "provider.failover" in logged  # the worker's own debug/info lines are there
    for text in (json.dumps(receipt.detail), json.dumps(c.health()), logged):
        assert "s3cr3t" not in text and "+15551234567" not in text


async def test_mailto_service_to_a_local_smtp_server() -> None:
    async with SmtpSink() as sink:
        svc = ServiceProvider(
            "email", f"mailto://127.0.0.1:{sink.port}/?to={{email}}&from=notifyd@example.com"
            "&mode=insecure", name="mail", timeout_s=10)
        d = Delivery("n-1", "e-1", "u-1", "email", "Your order", "It shipped",
                     address="bob+tag@example.com")
        await svc.send(d)
        [msg] = sink.messages
    assert msg["To"].endswith("bob+tag@example.com") or "bob+tag@example.com" in msg["To"]
    assert msg["Subject"] == "Your order"


async def test_push_chain_fails_over_devices_and_sends_user_urls_once(
    receiver: Receiver,
) -> None:
    """A push chain: device tokens through an Apprise service (failing) then the
    built-in push API (the sandbox); the user's own Apprise URL gets it exactly once."""
    receiver.status["/fcm/dev-1"] = 500
    async with SandboxServer() as sandbox:
        settings = Settings(
            push_providers=f"svc=form://127.0.0.1:{receiver.port}/fcm/{{token}} http",
            push_api_url=f"{sandbox.url}/v1/push", egress_allow="127.0.0.1/32",
            apprise_timeout_s=5,
        )
        c = build_provider("push", settings)
        assert isinstance(c, FailoverProvider)
        c.metrics = Metrics(CollectorRegistry())
        user_url = f"json://127.0.0.1:{receiver.port}/mine"
        d = Delivery("n-1", "e-1", "u-1", "push", "Hi", "there",
                     tokens=["dev-1", user_url])
        await c.start()
        try:
            c.check(d)
            receipt = await c.send(d)
        finally:
            await c.stop()
        [pushed] = sandbox.deliveries("push")
    assert receipt.provider == "http"
    assert pushed["payload"]["tokens"] == ["dev-1"]
    assert pushed["idempotency_key"] == "n-1:push"
    assert len(receiver.at("/fcm/dev-1")) == 1
    [mine] = receiver.at("/mine")  # sent by the first entry, not again by the second
    assert mine["headers"]["Idempotency-Key"] == "n-1:push"
