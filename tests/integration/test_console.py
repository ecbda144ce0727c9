"""Issue "Operator console": /console in a real headless browser (Debian's chromium,
driven by playwright) against a worker on Apache Kafka + Redis.

An operator logs in, sends a test notification from the console, and sees it in the
user's inbox and recent deliveries, the live figures move and a dead letter shows up
with its reason.  A screenshot lands in docs/console.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import Sinks, Stack, new_id
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery staple"  # what the harness gives its operator
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-quic"]


def ensure_chromium() -> str | None:
    """None if /usr/bin/chromium is there (installed with apt-get if it was not), else
    why it cannot be had."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run([*sudo, *cmd], check=True, env=env, capture_output=True,
                           timeout=900, stdin=subprocess.DEVNULL)
    except (subprocess.SubprocessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"{exc} {err.decode(errors='replace')[-300:]}".strip()
    return None if CHROMIUM.exists() else "apt-get install chromium did not provide it"


@pytest.fixture(scope="module")
def chromium() -> str:
    why = ensure_chromium()
    if why is not None:
        pytest.skip(f"Debian's chromium is missing and could not be installed: {why}")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def console_stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    # Two SMS providers, so the Providers panel shows a failover chain.
    st = start_stack(kafka.url, kafka.bootstrap, tmp_path_factory.mktemp("console"),
                     "console", sinks, redis_url=redis.url,
                     extra_env={"NOTIFYD_SMS_PROVIDERS":
                                "http backup=json://127.0.0.1:9/sms?:to={phone}"})
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Any]:
    pw_api = pytest.importorskip("playwright.async_api")
    async with pw_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 1000})
            pg = await context.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            # JavaScript errors; answers like the 401 of a wrong password or the 404 of
            # an empty table entry are expected and shown in the page.
            pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                  and not msg.text.startswith("Failed to load resource") else None)
            pg.errors = errors
            yield pg
        finally:
            await browser.close()


def test_page_and_assets_are_served_locally(console_stack: Stack) -> None:
    base = console_stack.worker.url
    with urllib.request.urlopen(f"{base}/console") as resp:
        html = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        with urllib.request.urlopen(f"{base}/console/static/{asset}") as resp:
            assert resp.headers["Content-Type"].startswith(kind)
            assert "https://" not in resp.read().decode()
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{base}/console/static/nope.js")
    exc.value.close()  # its connection: left to the garbage collector, a ResourceWarning
    assert exc.value.code == 404


async def test_operator_console_end_to_end(console_stack: Stack, page: Any) -> None:
    # Locator assertions, not wait_for_function: the page's CSP forbids eval, and the
    # test keeps that CSP in force.
    expect = pytest.importorskip("playwright.async_api").expect
    st = console_stack
    base = st.worker.url
    user = new_id("console-user")
    title = "Hello from the operator console"
    # A rejected event, so the dead letters panel has something to show.
    await st.produce(st.names.events, [(user.encode(), b"{not json")])

    await page.goto(f"{base}/console")
    await page.fill("#login-username", "wrong")
    await page.fill("#login-password", "wrong password!")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("invalid")
    await page.fill("#login-username", "op-console")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#app-view", state="visible")
    assert await page.text_content("#who") == "op-console"
    token = await page.evaluate("sessionStorage.getItem('notifyd.console.token')")
    assert token  # in this tab only

    # Send a test notification (in-app and webhook: the user has no webhook URL).
    await page.fill("#send-user", user)
    await page.fill("#send-title", title)
    await page.check("input[name=channel][value=webhook]")
    await page.click("#send-form button[type=submit]")
    await expect(page.locator("#send-result")).to_contain_text("accepted: ")
    await expect(page.locator("#sent-list")).to_contain_text("inapp: sent", timeout=30_000)
    assert "webhook: suppressed" in await page.text_content("#sent-list")

    # Look the user up: the notification is in the inbox and in the recent deliveries.
    assert await page.input_value("#user-id") == user
    for _ in range(30):
        await page.click("#user-form button[type=submit]")
        await page.wait_for_selector("#user-result", state="visible")
        if title in (await page.text_content("#user-inbox") or ""):
            break
        await page.wait_for_timeout(500)
    assert title in await page.text_content("#user-inbox")
    assert "1 unread" in await page.text_content("#user-unread")
    deliveries = await page.text_content("#user-deliveries")
    assert title in deliveries and "inapp: sent" in deliveries
    assert "webhook: suppressed" in deliveries
    assert "in-app" not in (await page.text_content("#user-prefs") or "x")  # text, not HTML

    # A scheduled send and an open digest of the user show as pending.
    await st.send_events(
        {"event_id": new_id("later"), "user_id": user, "title": "Scheduled from the test",
         "channels": ["inapp"], "delay_s": 3600},
        {"event_id": new_id("dg"), "user_id": user, "title": "Collected for the digest",
         "channels": ["inapp"], "category": "comments", "digest": {"window": "1d"}},
    )
    for _ in range(30):
        await page.click("#user-form button[type=submit]")
        await page.wait_for_selector("#user-result", state="visible")
        if "Collected for the digest" in (await page.text_content("#user-digests") or ""):
            break
        await page.wait_for_timeout(500)
    assert "Scheduled from the test" in await page.text_content("#user-scheduled")
    digests = await page.text_content("#user-digests")
    assert "Collected for the digest" in digests and "comments" in digests

    # Live figures: the in-app send is counted within the window.
    await expect(page.locator("#channel-table")).to_contain_text("inapp", timeout=30_000)
    assert (await page.text_content("#kpi-sent")).strip() not in ("", "\u2013", "0")  # en dash: no figure yet
    assert "live streams" in await page.text_content("#workers")

    # Provider health: the SMS chain's two circuits, and the single-provider channels.
    providers = page.locator("#providers-table")
    await expect(providers).to_contain_text("backup", timeout=30_000)
    assert "closed" in await providers.text_content()
    assert "only provider: no failover" in await providers.text_content()

    # The dead letter, with its reason.
    for _ in range(30):
        await page.click("#dlq-refresh")
        await page.wait_for_timeout(500)
        if "invalid_json" in (await page.text_content("#dlq-table tbody") or ""):
            break
    assert "invalid_json" in await page.text_content("#dlq-table tbody")
    assert user in await page.text_content("#dlq-table tbody")

    await page.wait_for_timeout(6000)  # a few stats polls, so the chart has a line
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert page.errors == []

    # Logging out forgets the token and shows the form again.
    await page.click("#logout")
    await page.wait_for_selector("#login-view", state="visible")
    assert await page.evaluate("sessionStorage.getItem('notifyd.console.token')") is None


async def test_console_shows_topic_subscribers_and_fallback_steps(
    console_stack: Stack, page: Any
) -> None:
    """Issue #17: a topic's subscribers (paged) and a notification's fallback steps."""
    from notifyd.model.records import notification_id_for
    from tests.support.harness import http_json, wait_for

    expect = pytest.importorskip("playwright.async_api").expect
    st = console_stack
    base = st.worker.url
    ops = {"Authorization": f"Bearer {st.operator_token}"}
    topic = new_id("console-topic")
    subs = [new_id("sub") for _ in range(55)]  # more than one page of 50
    for u in subs:
        status, body = http_json("PUT", f"{base}/api/v1/topics/{topic}/subscribers/{u}",
                                 headers=ops)
        assert status == 200, body
    user = new_id("console-fb")
    event_id = new_id("fb")
    await st.send_events({
        "event_id": event_id, "user_id": user, "title": "Escalating",
        "fallback": [{"channel": "inapp"},
                     {"channel": "email", "after_s": 3600, "unless": "read"}],
    })
    nid = notification_id_for(user, event_id)
    await wait_for(lambda: (st.worker.table("status", nid) or {}).get("channels", {})
                   .get("inapp", {}).get("status") == "sent", what="the first step sent")

    await page.goto(f"{base}/console")
    await page.fill("#login-username", "op-console")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#app-view", state="visible")

    await page.fill("#topic-name", topic)
    await page.click("#topic-form button[type=submit]")
    await expect(page.locator("#topic-total")).to_have_text("55")
    await expect(page.locator("#topic-subscribers tbody tr")).to_have_count(50)
    await page.click("#topic-more")
    await expect(page.locator("#topic-subscribers tbody tr")).to_have_count(55)
    shown = await page.locator("#topic-subscribers tbody td:first-child").all_text_contents()
    assert sorted(shown) == sorted(subs)

    await page.fill("#notification-id", nid)
    await page.click("#notification-form button[type=submit]")
    steps = page.locator("#notification-fallback tbody tr")
    await expect(steps).to_have_count(2)
    await expect(steps.nth(0)).to_contain_text("inapp")
    await expect(steps.nth(0)).to_contain_text("sent")
    await expect(steps.nth(1)).to_contain_text("email")
    await expect(steps.nth(1)).to_contain_text("pending")
    await expect(steps.nth(1)).to_contain_text("3600 s")
    assert page.errors == []


async def test_swagger_ui_renders_the_openapi_31_document(
    console_stack: Stack, page: Any
) -> None:
    """/docs is Swagger UI 5 reading the document as served (OpenAPI 3.1, no 3.0
    rendering): every operation shows, and nothing fails to render."""
    from tests.support.harness import http_json

    expect = pytest.importorskip("playwright.async_api").expect
    base = console_stack.worker.url
    status, doc = http_json("GET", f"{base}/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    # Swagger UI shows an operation once under each of its tags.
    shown = sum(len(op.get("tags") or ["default"]) for item in doc["paths"].values()
                for op in item.values())

    await page.goto(f"{base}/docs")
    info = page.locator(".information-container")
    await expect(info.locator(".title")).to_contain_text(doc["info"]["title"])
    await expect(info.locator(".version-stamp")).to_contain_text("OAS 3.1")
    await expect(page.locator(".opblock")).to_have_count(shown)
    # A schema of 3.1 only (the inbox stream's events: const, contentSchema) renders.
    stream = page.locator("#operations-notifications-notification_stream")
    await stream.locator(".opblock-summary").click()
    await expect(stream.locator(".responses-wrapper")).to_contain_text("text/event-stream")
    assert await page.locator(".errors-wrapper").count() == 0
    assert page.errors == []
