"""Issue 13 item 6 (SSRF): user-chosen destinations on the real stack.

A self-registered user points their webhook or Apprise URL at an internal address;
the worker (Apache Kafka, Redis, ``NOTIFYD_EGRESS_ALLOW=127.0.0.1/32`` from the
harness) must refuse it without connecting: the status document the user reads back
says ``failed`` / ``egress_denied``.  Error bodies of an allowed user host are not
echoed into it.  Only loopback addresses are ever used as targets here: a refused one
must see no connection, and a broken policy could reach nothing but this machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.support.harness import Stack, http_json, new_id, wait_for
from tests.support.http_target import HttpTarget

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
TERMINAL = ("sent", "failed", "dead", "suppressed")


@dataclass
class User:
    stack: Stack
    user_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.stack.worker.url}{path}", body, self.auth)

    def notify(self, channels: list[str]) -> str:
        code, answer = self.call(
            "POST", "/api/v1/notifications",
            {"title": "Egress", "body": "where does this go?", "channels": channels},
        )
        assert code == 202, answer
        return str(answer["notification_id"])

    async def channel_state(self, nid: str, channel: str) -> dict[str, Any]:
        """The channel's entry of the status document, as the user reads it, once final."""

        def probe() -> dict[str, Any] | None:
            code, doc = self.call("GET", f"/api/v1/notifications/{nid}")
            state = doc.get("channels", {}).get(channel, {}) if code == 200 else {}
            return doc if state.get("status") in TERMINAL else None

        doc = await wait_for(probe, timeout=40, what=f"{nid} {channel} final")
        state: dict[str, Any] = doc["channels"][channel]
        return {**state, "_doc": orjson.dumps(doc).decode()}


async def set_destination(user: User, field: str, value: Any) -> None:
    """Write a preference through the preferences topic (as services do; the API refuses
    literal internal addresses up front) and wait until the worker applied it."""
    stack = user.stack
    await stack.produce(stack.names.preferences, [(
        user.user_id.encode(),
        orjson.dumps({"op": "patch", "user_id": user.user_id, "fields": {field: value}}),
    )])
    await wait_for(
        lambda: (stack.worker.table("preferences", user.user_id) or {}).get(field) == value,
        what=f"{field} of {user.user_id} applied",
    )


def signup(stack: Stack) -> User:
    name = new_id("egress").replace("-", "_")
    code, user = http_json("POST", f"{stack.worker.url}/api/v1/users",
                           {"username": name, "password": PASSWORD,
                            "email": f"{name}@example.com"})
    assert code == 201, user
    code, tokens = http_json("POST", f"{stack.worker.url}/api/v1/auth/token",
                             {"username": name, "password": PASSWORD})
    assert code == 200, tokens
    return User(stack, user["user_id"], tokens["access_token"])


@pytest.fixture
async def loopback1() -> AsyncIterator[HttpTarget]:
    """On 127.0.0.1, the one address the stack allows."""
    t = await HttpTarget().start()
    yield t
    await t.close()


@pytest.fixture
async def loopback2() -> AsyncIterator[HttpTarget]:
    """On 127.0.0.2: loopback, not allowed."""
    t = await HttpTarget(host="127.0.0.2").start()
    yield t
    await t.close()


@pytest.fixture
async def loopback6() -> AsyncIterator[HttpTarget]:
    """On ::1: loopback, not allowed."""
    t = await HttpTarget(host="::1").start()
    yield t
    await t.close()


async def test_webhook_to_internal_address_fails_egress_denied(
    stack: Stack, loopback1: HttpTarget, loopback2: HttpTarget, loopback6: HttpTarget
) -> None:
    cases = {
        "127.0.0.2": loopback2.url(),
        "localhost": f"http://localhost:{loopback1.port}/hook",  # a name for 127.0.0.1
        "::1": loopback6.url(),
        "::ffff:127.0.0.2": f"http://[::ffff:127.0.0.2]:{loopback2.port}/hook",
    }
    pending = []
    for what, url in cases.items():
        user = signup(stack)
        await set_destination(user, "webhook_url", url)
        pending.append((what, user, user.notify(["webhook"])))
    for what, user, nid in pending:
        state = await user.channel_state(nid, "webhook")
        assert state["status"] == "failed", (what, state)
        assert state["reason"].startswith("egress_denied: webhook destination refused ("), what
        assert "127.0.0" not in state["reason"] and "::1" not in state["reason"]
    assert loopback1.connections == loopback2.connections == loopback6.connections == 0


async def test_webhook_error_body_is_not_shown_to_the_user(
    stack: Stack, loopback1: HttpTarget
) -> None:
    loopback1.status = 403
    loopback1.body = b'{"detail": "internal admin console: token=SECRET-0xdeadbeef"}'
    user = signup(stack)
    await set_destination(user, "webhook_url", loopback1.url())
    state = await user.channel_state(user.notify(["webhook"]), "webhook")
    assert state["status"] == "failed"
    assert state["reason"] == "http_403: webhook answered 403"
    assert "SECRET" not in state["_doc"] and "admin console" not in state["_doc"]
    assert len(loopback1.requests) == 1  # the allowed host was called


async def test_apprise_to_internal_address_fails_egress_denied(
    stack: Stack, loopback1: HttpTarget, loopback2: HttpTarget
) -> None:
    cases = {
        # A name for 127.0.0.1 (which the stack allows as an address, not by this name).
        "localhost": f"json://localhost:{loopback1.port}/x",
        # The URL's host is example.com; the SMTP server it connects to is internal.
        "smtp=": (f"mailto://example.com?smtp=127.0.0.2&port={loopback2.port}"
                  "&mode=insecure&to=a@example.com&from=n@example.com"),
    }
    pending = []
    for what, url in cases.items():
        user = signup(stack)
        await set_destination(user, "apprise_urls", [url])
        pending.append((what, user, user.notify(["push"])))
    for what, user, nid in pending:
        state = await user.channel_state(nid, "push")
        assert state["status"] == "failed", (what, state)
        assert state["reason"].startswith("egress_denied: apprise destination refused ("), what
    assert loopback1.connections == loopback2.connections == 0


def test_preferences_api_refuses_literal_internal_destinations(stack: Stack) -> None:
    user = signup(stack)
    for body in [
        {"webhook_url": "http://169.254.169.254/latest/meta-data/"},
        {"webhook_url": "http://[::1]:8080/hook"},
        {"webhook_url": "https://localhost/hook"},
        {"apprise_urls": ["json://10.0.0.1/notify"]},
    ]:
        code, answer = user.call("PATCH", "/api/v1/preferences", body)
        assert code == 422, (body, code, answer)  # schema-valid, refused by the policy
        assert answer["code"] == "invalid_preferences", answer
        assert "egress policy" in answer["detail"]
    # Public names and allow-listed addresses are accepted.
    code, doc = user.call("PATCH", "/api/v1/preferences",
                          {"webhook_url": "https://hooks.example.com/x",
                           "apprise_urls": ["json://127.0.0.1:9/ok"]})
    assert code == 200, doc
    assert doc["webhook_url"] == "https://hooks.example.com/x"
