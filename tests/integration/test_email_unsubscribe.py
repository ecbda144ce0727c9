"""Issue 18: HTML e-mail with one-click unsubscribe, end to end on the real stack.

Apache Kafka, Redis, a notifyd worker and the SMTP sink (aiosmtpd, which parses what it
receives with the standard library's ``email`` parser, ``policy=email.policy.default``).
The test follows the ``List-Unsubscribe`` link of the received message over HTTP, as a
mailbox provider does (RFC 8058), and checks the preferences API and the next event.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import pytest

from notifyd.domain.unsubscribe import PATH, UnsubscribeSigner, derive_key
from notifyd.model.records import notification_id_for
from notifyd.providers.smtp import message_id_for
from notifyd.tools.broker.kafka import KafkaBroker
from notifyd.web.auth.store import SqliteStore
from tests.integration.conftest import start_stack
from tests.support.harness import JWT_SECRET, Sinks, Stack, http_json, new_id, wait_for

pytestmark = pytest.mark.integration

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    answer_headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of a plain HTTP request: no credentials at all."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            if answer_headers is not None:
                answer_headers.update(resp.headers.items())
            return resp.status, resp.headers.get_content_type(), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


def error(result: tuple[int, str, bytes]) -> tuple[int, str]:
    status, ctype, body = result
    assert ctype == "application/json", result
    doc = orjson.loads(body)
    assert set(doc) == {"code", "detail"}, doc
    return status, doc["code"]


def prefs(stack: Stack, user: str, worker: int = 0) -> dict[str, Any]:
    w = stack.workers[worker]
    status, body = http_json(
        "GET", f"{w.url}/api/v1/users/{user}/preferences", headers=w.op_headers
    )
    assert status == 200, body
    return cast(dict[str, Any], body)


def status_doc(stack: Stack, nid: str) -> dict[str, Any] | None:
    status, body = http_json(
        "GET", f"{stack.worker.url}/api/v1/notifications/{nid}", headers=stack.worker.op_headers
    )
    return cast(dict[str, Any], body) if status == 200 else None


async def email_state(stack: Stack, nid: str, state: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        doc = status_doc(stack, nid)
        email = (doc or {}).get("channels", {}).get("email")
        return email if email and email["status"] == state else None

    return await wait_for(probe, timeout=30, what=f"{nid} email {state}")


async def send_order_email(
    stack: Stack, user: str, category: str, order_id: str
) -> tuple[str, EmailMessage]:
    """Send an ``order_shipped`` event and return (notification id, the received mail)."""
    event_id = new_id("evt")
    await stack.send_events({
        "event_id": event_id, "user_id": user, "category": category, "channels": ["email"],
        "template": "order_shipped", "data": {"order_id": order_id, "eta": "Mo & Di"},
    })
    nid = notification_id_for(user, event_id)
    await email_state(stack, nid, "sent")
    mid = message_id_for(f"{nid}:email")
    [msg] = await wait_for(
        lambda: [m for m in stack.sinks.emails() if m["Message-ID"] == mid], what=f"mail {mid}"
    )
    return nid, cast(EmailMessage, msg)


def unsubscribe_uris(msg: EmailMessage) -> tuple[str, str]:
    """(web URL, mailto: URI) from the raw List-Unsubscribe header."""
    raw = next(v for k, v in msg.raw_items() if k.lower() == "list-unsubscribe")
    assert "=?" not in raw  # plain <URI>s, as mailbox providers read them
    uris = [u.strip() for u in " ".join(raw.split()).split(",")]
    assert all(u.startswith("<") and u.endswith(">") for u in uris), raw
    web, mailto = (u[1:-1] for u in uris)
    return web, mailto


async def test_html_email_one_click_unsubscribe_and_the_next_event(stack: Stack) -> None:
    user = new_id("u-unsub")
    address = f"{user}@example.com"
    await stack.set_preferences(user, {"email": address, "opt_out": {"marketing": ["sms"]}})

    nid, msg = await send_order_email(stack, user, "orders", "<script>alert(1)</script>")
    # multipart/alternative: the text, then the HTML with the data value escaped.
    assert msg["To"] == address
    assert msg["Message-ID"] == message_id_for(f"{nid}:email")
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text = cast(EmailMessage, msg.get_body(("plain",))).get_content()
    html = cast(EmailMessage, msg.get_body(("html",))).get_content()
    assert "Your order <script>alert(1)</script> is on its way, expected Mo & Di." in text
    assert "<strong>&lt;script&gt;alert(1)&lt;/script&gt;</strong>" in html
    assert "<script>" not in html and "<em>Mo &amp; Di</em>" in html

    # The unsubscribe headers (RFC 2369 + RFC 8058).
    web, mailto = unsubscribe_uris(msg)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = urlsplit(web)
    # NOTIFYD_PUBLIC_URL is unset here: the worker's canonical URL (https in production).
    assert f"{url.scheme}://{url.netloc}" == stack.worker.url and url.path == PATH
    [token] = parse_qs(url.query)["t"]
    assert mailto.startswith("mailto:notifyd@localhost?subject=")
    assert unquote(mailto.partition("subject=")[2]) == f"unsubscribe {token}"

    # GET (what a link scanner does): a confirmation page, and no change.
    status, ctype, page = request("GET", web)
    assert (status, ctype) == (200, "text/html")
    assert b'<form method="post"' in page and b"orders" in page
    assert prefs(stack, user)["opt_out"] == {"marketing": ["sms"]}

    # POST as a mailbox provider does: form-encoded, no cookie, no login.
    status, ctype, body = request("POST", web, ONE_CLICK, {"Content-Type": FORM})
    assert (status, ctype) == (200, "application/json"), body
    assert orjson.loads(body) == {"unsubscribed": True, "category": "orders", "channel": "email"}
    # Read-your-writes: the preferences API shows it at once; the other opt-out is kept.
    after = prefs(stack, user)
    assert after["opt_out"] == {"marketing": ["sms"], "orders": ["email"]}
    assert after["email"] == address

    # Again (empty body, as some clients send): fine, and nothing changes.
    status, _, body = request("POST", web)
    assert status == 200, body
    assert prefs(stack, user) == after
    # The confirmation page's button (a browser): an HTML answer, still nothing new.
    status, ctype, body = request("POST", web, ONE_CLICK,
                                  {"Content-Type": FORM, "Accept": "text/html,*/*;q=0.8"})
    assert (status, ctype) == (200, "text/html") and b"Unsubscribed" in body
    assert prefs(stack, user) == after

    # The next e-mail of that category is suppressed: opted_out ...
    eid = new_id("evt")
    await stack.send_events({"event_id": eid, "user_id": user, "category": "orders",
                             "template": "order_shipped", "data": {"order_id": "2"},
                             "channels": ["email"]})
    suppressed = await email_state(stack, notification_id_for(user, eid), "suppressed")
    assert suppressed["reason"].startswith("opted_out: ")
    # ... while another category still goes out.
    _, other = await send_order_email(stack, user, "news", "3")
    assert other["To"] == address
    assert [m["Message-ID"] for m in stack.sinks.emails() if m["To"] == address] == [
        msg["Message-ID"], other["Message-ID"]
    ]


async def test_tampered_links_are_refused_and_change_nothing(stack: Stack) -> None:
    victim = new_id("u-victim")
    await stack.set_preferences(victim, {"email": f"{victim}@example.com"})
    attacker = new_id("u-attacker")
    await stack.set_preferences(attacker, {"email": f"{attacker}@example.com"})
    _, msg = await send_order_email(stack, attacker, "orders", "1")
    web, _ = unsubscribe_uris(msg)
    base, _, query = web.partition("?")
    [token] = parse_qs(query)["t"]
    header, payload, sig = token.split(".")

    # The attacker's own link, edited to name the victim: the signature no longer matches.
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == attacker
    claims["sub"] = victim
    forged_payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    flipped = sig[:3] + ("A" if sig[3] != "A" else "B") + sig[4:]
    other_key = UnsubscribeSigner(b"x" * 32).sign(victim, "orders")
    for bad in (f"{header}.{forged_payload}.{sig}", f"{header}.{payload}.{flipped}", other_key):
        for method in ("POST", "GET"):
            result = request(method, f"{base}?t={bad}", ONE_CLICK, {"Content-Type": FORM})
            assert error(result) == (403, "token_rejected"), (method, bad)
    assert error(request("POST", f"{base}?t=not-a-token", ONE_CLICK)) == (400, "invalid_token")
    assert error(request("POST", base, ONE_CLICK))[0] == 400  # no token at all
    # A valid link with another body than RFC 8058's is refused too.
    bad_body = b"List-Unsubscribe=Everything"
    assert error(request("POST", web, bad_body, {"Content-Type": FORM})) == (400, "invalid_value")
    assert prefs(stack, victim)["opt_out"] == {}
    assert prefs(stack, attacker)["opt_out"] == {}

    # The worker's key is HKDF of the shared JWT secret: a link signed with it works,
    # multipart/form-data (RFC 8058's SHOULD) included.
    victim_link = UnsubscribeSigner(derive_key(JWT_SECRET)).sign(victim, "orders")
    boundary = "----notifyd-test"
    multipart = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
        f"One-Click\r\n--{boundary}--\r\n"
    ).encode()
    status, _, body = request(
        "POST", f"{base}?t={victim_link}", multipart,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200, body
    assert prefs(stack, victim)["opt_out"] == {"orders": ["email"]}
    assert prefs(stack, attacker)["opt_out"] == {}


async def test_unsubscribe_is_public_and_documented(stack: Stack) -> None:
    status, doc = http_json("GET", f"{stack.worker.url}/api/v1/openapi.json")
    assert status == 200
    item = doc["paths"][PATH]
    assert set(item) == {"get", "post"}
    for op in item.values():
        assert op["security"] == [] and op["x-notifyd-auth"] == "public"
        assert {"400", "403"} <= set(op["responses"])
    assert "text/html" in item["get"]["responses"]["200"]["content"]


# --- two workers, the JWT secret shared through the credential store -------------------------


async def _seed_jwt_secret(path: Path) -> None:
    store = await SqliteStore.open(path, purge_interval_s=0)
    try:
        await store.set("config:jwt_secret", JWT_SECRET.encode())
    finally:
        await store.close()


@pytest.fixture(scope="module")
def pair(
    kafka: KafkaBroker, sinks: Sinks, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Two workers without NOTIFYD_JWT_SECRET: they share the one in their credential
    store (a SQLite file here, seeded with the secret the harness signs tokens with), so
    both the SMTP provider and the web view must derive the link key from the store."""
    root: Path = tmp_path_factory.mktemp("unsub")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _seed_jwt_secret(root / "credentials.db")).result()
    st = start_stack(kafka.url, kafka.bootstrap, root, "unsub", sinks,
                     {"NOTIFYD_JWT_SECRET": ""}, workers=2)
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()


async def test_link_posted_to_another_worker_is_applied_by_the_owner(pair: Stack) -> None:
    user = new_id("u-pair")
    await pair.set_preferences(user, {"email": f"{user}@example.com"})
    _, msg = await send_order_email(pair, user, "orders", "7")
    web, _ = unsubscribe_uris(msg)
    url = urlsplit(web)
    [token] = parse_qs(url.query)["t"]
    # The key is HKDF of the secret the workers share through the store.
    assert UnsubscribeSigner(derive_key(JWT_SECRET)).verify(token).user_id == user
    # The e-mail went out from the owner of the user's partition (its canonical URL is
    # the link's base): POST the same link to the other worker, which proxies it.
    origin = f"{url.scheme}://{url.netloc}"
    assert origin in {w.url for w in pair.workers}
    other = next(i for i, w in enumerate(pair.workers) if w.url != origin)
    seen: dict[str, str] = {}
    status, _, body = request(
        "POST", f"{pair.workers[other].url}{url.path}?{url.query}", ONE_CLICK,
        {"Content-Type": FORM}, answer_headers=seen,
    )
    assert status == 200, body
    assert orjson.loads(body)["category"] == "orders"
    assert seen.get("X-Notifyd-Served-By", "").rstrip("/") == origin
    # Read-your-writes through either worker.
    for w in (0, 1):
        assert prefs(pair, user, w)["opt_out"] == {"orders": ["email"]}
