"""``notifyd run``: the whole daemon on one machine with no JVM and no Redis.

Starts Tansu (in-memory Kafka-compatible broker), the sandbox SMS/push/webhook API,
an SMTP sink writing a maildir, and one worker whose credential store is SQLite;
then (with ``--demo``) produces a sample event like any other service would and
prints what each channel delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from notifyd.config import CHANNELS, Settings
from notifyd.errors import NotifydError
from notifyd.model.records import notification_id_for
from notifyd.stream.producer import produce
from notifyd.stream.topology import TopicNames
from notifyd.tools.broker.base import BrokerError, port_is_free
from notifyd.tools.broker.tansu import TansuBroker
from notifyd.tools.sandbox.provider import SandboxServer
from notifyd.tools.sandbox.smtp import SmtpSink

DEMO_USER = "demo-user"


def _secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


async def _operator_token(store_url: str, jwt_secret: str, token_file: Path) -> str:
    """An operator account for the local instance; its token goes to a 0600 file."""
    from notifyd.web.auth.store import open_store
    from notifyd.web.auth.users import TokenService, UserService

    store = await open_store(store_url)
    try:
        users = UserService(store)
        user = await users.get_by_username("operator")
        if user is None:
            user = await users.create(
                "operator",
                secrets.token_urlsafe(24),
                "operator@example.com",
                roles=("user", "operator"),
            )
        tokens = TokenService(
            jwt_secret,
            store=store,
            users=users,
            issuer="notifyd",
            audience="notifyd-api",
            ttl_s=24 * 3600,
        )
        token = str((await tokens.issue(user))["access_token"])
    finally:
        await store.close()
    token_file.write_text(token)
    token_file.chmod(0o600)
    return token


async def _wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise RuntimeError(f"worker not ready after {timeout:.0f}s (log: {log})")


async def _demo(
    settings: Settings, web: str, token: str, sandbox: SandboxServer, smtp: SmtpSink
) -> bool:
    names = TopicNames(settings.topic_prefix)
    prefs = {
        "op": "put",
        "user_id": DEMO_USER,
        "fields": {
            "email": "demo@example.com",
            "phone": "+15555550100",
            "push_tokens": ["demo-device-token"],
            "webhook_url": f"{sandbox.url}/v1/webhook/demo",
            "locale": "en",
        },
    }
    await produce(settings, names.preferences, DEMO_USER.encode(), orjson.dumps(prefs))
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

        async def table(name: str, key: str, user_id: str | None = None) -> Any:
            query = {"user_id": user_id} if user_id else None
            async with http.get(f"{web}/api/v1/admin/tables/{name}/{key}", params=query,
                                headers=headers) as r:
                return (await r.json())["value"] if r.status == 200 else None

        deadline = time.monotonic() + 20
        while await table("preferences", DEMO_USER) is None:
            if time.monotonic() > deadline:
                print("preferences were not applied in time", file=sys.stderr)
                return False
            await asyncio.sleep(0.2)
        event_id = f"demo-{uuid.uuid4()}"
        event: dict[str, Any] = {
            "event_id": event_id,
            "user_id": DEMO_USER,
            "template": "welcome",
            "data": {"name": "Ada", "product": "notifyd"},
            "priority": "high",
        }
        print(
            f"\nproducing to {names.events} (key {DEMO_USER!r}):\n  {orjson.dumps(event).decode()}"
        )
        started = time.monotonic()
        await produce(settings, names.events, DEMO_USER.encode(), orjson.dumps(event))
        nid = notification_id_for(DEMO_USER, event_id)
        doc: Any = None
        while time.monotonic() - started < 30:
            doc = await table("status", nid, DEMO_USER)  # in the user's partition
            if doc and all(
                doc["channels"].get(ch, {}).get("status")
                in ("sent", "failed", "dead", "suppressed")
                for ch in CHANNELS
            ):
                break
            await asyncio.sleep(0.2)
    if not doc:
        print("the notification was not processed in time", file=sys.stderr)
        return False
    print(f"\nnotification {nid} — {doc['title']!r}")
    for ch in CHANNELS:
        st = doc["channels"].get(ch, {})
        extra = f" ({st['latency_ms']} ms after acceptance)" if "latency_ms" in st else ""
        reason = f" — {st['reason']}" if st.get("reason") else ""
        print(f"  {ch:8} {st.get('status', '?'):10}{extra}{reason}")
    print("\nwhat the providers received:")
    for mail in smtp.messages:
        print(f"  email  → {mail['To']}: {mail['Subject']!r}")
    for kind in ("sms", "push", "webhook"):
        for d in sandbox.deliveries(kind):
            p = d["payload"]
            what = p.get("body") if kind == "sms" else p.get("title")
            print(f"  {kind:6} → {p.get('to') or p.get('tokens') or d.get('name')}: {what!r}")
    print(f"  inapp  → GET {web}/api/v1/admin/tables/inbox/{DEMO_USER}")
    return all(doc["channels"][ch]["status"] == "sent" for ch in CHANNELS)


async def run_embedded(datadir: Path, web_port: int, demo: bool, exit_after_demo: bool) -> int:
    datadir = datadir.resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    if not port_is_free(web_port):
        print(f"port {web_port} is in use; pass --web-port", file=sys.stderr)
        return 2
    jwt_secret = _secret(datadir / "jwt-secret")
    webhook_secret = _secret(datadir / "webhook-secret")
    store_url = f"sqlite:///{datadir / 'credentials.db'}"
    tansu = TansuBroker(datadir / "tansu")
    sandbox = SandboxServer(webhook_secret=webhook_secret.encode())
    smtp = SmtpSink(maildir=datadir / "mail")
    proc: subprocess.Popen[bytes] | None = None
    try:
        print("starting Tansu (embedded Kafka-compatible broker, in memory) ...")
        tansu.start()
        await tansu.wait_ready()
        await sandbox.start()
        await smtp.start()
        token = await _operator_token(store_url, jwt_secret, datadir / "operator-token")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")}
        env.update(
            {
                "NOTIFYD_BROKER_URL": tansu.url,
                "NOTIFYD_WEB_PORT": str(web_port),
                "NOTIFYD_DATADIR": str(datadir / "worker"),
                "NOTIFYD_CREDENTIAL_STORE_URL": store_url,
                "NOTIFYD_JWT_SECRET": jwt_secret,
                "NOTIFYD_WEBHOOK_SECRET": webhook_secret,
                "NOTIFYD_SMS_API_URL": f"{sandbox.url}/v1/sms",
                "NOTIFYD_PUSH_API_URL": f"{sandbox.url}/v1/push",
                "NOTIFYD_SMTP_HOST": "127.0.0.1",
                "NOTIFYD_SMTP_PORT": str(smtp.port),
                # The demo user's webhook is the sandbox on loopback, which user-chosen
                # URLs may not reach by default: re-admit that one address only.
                "NOTIFYD_EGRESS_ALLOW": f"{sandbox.host}/32",
                "NOTIFYD_TOPIC_PARTITIONS": os.environ.get("NOTIFYD_TOPIC_PARTITIONS", "4"),
            }
        )
        log = datadir / "worker.log"
        log.unlink(missing_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "notifyd", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        web = f"http://127.0.0.1:{web_port}"
        print("starting the worker ...")
        await _wait_ready(web, proc, log)
        print(f"notifyd is running. web view: {web}  (API docs: {web}/docs)")
        print(f"  broker:   {tansu.url}   sandbox provider API: {sandbox.url}")
        print(f"  SMTP sink: 127.0.0.1:{smtp.port} → {datadir / 'mail'}")
        print(f"  operator token: {datadir / 'operator-token'}   worker log: {log}")
        ok = True
        if demo:
            settings = Settings(broker_url=tansu.url)
            ok = await _demo(settings, web, token, sandbox, smtp)
            print("\ndemo: delivered on every channel" if ok else "\ndemo: NOT fully delivered")
        if exit_after_demo:
            return 0 if ok else 1
        print("\nCtrl-C stops everything.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.create_task(stop.wait())
        while not stop.is_set() and proc.poll() is None:
            await asyncio.wait({waiter}, timeout=1)
        waiter.cancel()
        return 0 if proc.poll() is None else 1
    except (BrokerError, RuntimeError, OSError, NotifydError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await smtp.stop()
        await sandbox.stop()
        tansu.stop()
