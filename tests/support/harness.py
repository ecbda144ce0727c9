"""Integration harness: real brokers, sinks and notifyd workers, started by the tests.

- :class:`LoopThread` runs an asyncio loop in a thread so session-wide servers (the
  sandbox provider API, the SMTP sink) keep serving while tests come and go.
- :class:`WorkerProcess` runs ``python -m notifyd worker`` as a subprocess with its
  own data dir, web port, app id and topic prefix, and waits for ``/readyz``.
- Small aiokafka helpers produce plain JSON (as other services do) and read topics.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from notifyd.stream.headers import header_value
from notifyd.stream.topology import TopicNames
from notifyd.tools.broker.base import free_port
from notifyd.tools.sandbox.provider import SandboxServer
from notifyd.tools.sandbox.smtp import SmtpSink
from notifyd.tools.worker_process import WorkerSubprocess

T = TypeVar("T")
WEBHOOK_SECRET = "whsec-integration-tests-0123456789abcdef"


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Sinks:
    """The sandbox SMS/push/webhook API and an SMTP sink, serving from a thread."""

    def __init__(self, ledger_path: Path | None = None) -> None:
        self.lt = LoopThread()
        self.sandbox = SandboxServer(
            webhook_secret=WEBHOOK_SECRET.encode(), ledger_path=ledger_path
        )
        self.smtp = SmtpSink()
        self.lt.call(self.sandbox.start())
        self.lt.call(self.smtp.start())

    @property
    def url(self) -> str:
        return self.sandbox.url

    def env(self) -> dict[str, str]:
        return {
            "NOTIFYD_SMS_API_URL": f"{self.url}/v1/sms",
            "NOTIFYD_PUSH_API_URL": f"{self.url}/v1/push",
            "NOTIFYD_SMTP_HOST": "127.0.0.1",
            "NOTIFYD_SMTP_PORT": str(self.smtp.port),
            "NOTIFYD_WEBHOOK_SECRET": WEBHOOK_SECRET,
            # Users' webhooks and Apprise URLs point at sinks on 127.0.0.1, which the
            # egress policy denies by default; only that address is re-admitted.
            "NOTIFYD_EGRESS_ALLOW": "127.0.0.1/32",
        }

    def webhook_url(self, name: str) -> str:
        return f"{self.url}/v1/webhook/{name}"

    def deliveries(self, kind: str) -> list[dict[str, Any]]:
        async def get() -> list[dict[str, Any]]:
            return list(self.sandbox.deliveries(kind))

        return self.lt.call(get())

    def emails(self) -> list[Any]:
        async def get() -> list[Any]:
            return list(self.smtp.messages)

        return self.lt.call(get())

    def close(self) -> None:
        self.lt.call(self.smtp.stop())
        self.lt.call(self.sandbox.stop())
        self.lt.close()


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


@dataclass(kw_only=True)
class WorkerProcess(WorkerSubprocess):
    """A real notifyd worker in a subprocess (process handling: :class:`WorkerSubprocess`)."""

    broker_url: str
    app_id: str
    topic_prefix: str
    extra_env: dict[str, str] = field(default_factory=dict)
    operator_token: str = ""

    log_tail_lines: ClassVar[int] = 60

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")}
        env.update(
            {
                "NOTIFYD_BROKER_URL": self.broker_url,
                "NOTIFYD_APP_ID": self.app_id,
                "NOTIFYD_TOPIC_PREFIX": self.topic_prefix,
                "NOTIFYD_TOPIC_PARTITIONS": "4",
                "NOTIFYD_DATADIR": str(self.datadir / "data"),
                "NOTIFYD_WEB_PORT": str(self.web_port),
                "NOTIFYD_LOG_LEVEL": "INFO",
                "NOTIFYD_RETRY_BASE_S": "0.2",
                "NOTIFYD_RETRY_MAX_S": "2",
                "NOTIFYD_RETRY_MAX_ATTEMPTS": "3",
                "NOTIFYD_JWT_SECRET": JWT_SECRET,
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True, timeout: float = 90) -> WorkerProcess:
        if not self.web_port:
            self.web_port = free_port()
        self.launch(self.env())
        if wait:
            self.wait_ready(timeout)
        return self

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return http_json("GET", f"{self.url}{path}", headers=headers)

    @property
    def op_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}"}

    def table(self, table: str, key: str) -> Any:
        if table == "status":
            # A status row lives in its user's partition: without the user, the API asks
            # every worker for it.
            path, take = f"/api/v1/notifications/{key}", lambda body: body
        else:
            path, take = f"/api/v1/admin/tables/{table}/{key}", lambda body: body["value"]
        status, body = self.get(path, self.op_headers)
        if status == 503:  # rebalancing / not ready: the caller polls again
            return None
        if status not in (200, 404):
            raise AssertionError(f"{table} query failed: {status} {body}")
        return take(body) if status == 200 else None


JWT_SECRET = "integration-tests-jwt-secret-0123456789abcdef"


async def mint_user_token(store_url: str, username: str, roles: tuple[str, ...]) -> str:
    """Create a user straight in the credential store and sign a token for it, the
    way ``notifyd user create`` + ``notifyd token`` do for an operator."""
    from notifyd.web.auth.store import open_store
    from notifyd.web.auth.users import TokenService, UserService

    store = await open_store(store_url)
    try:
        users = UserService(store)
        user = await users.create(
            username, "correct horse battery staple", f"{username}@example.com", roles=roles
        )
        tokens = TokenService(
            JWT_SECRET, store=store, users=users, issuer="notifyd", audience="notifyd-api"
        )
        return str((await tokens.issue(user))["access_token"])
    finally:
        await store.close()


@dataclass
class Stack:
    """What a test talks to: the broker, the worker(s), the sinks and topic names."""

    bootstrap: str
    names: TopicNames
    workers: list[WorkerProcess]
    sinks: Sinks
    operator_token: str = ""

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[0]

    async def produce(self, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            futs = [await producer.send(topic, v, key=k) for k, v in values]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()

    async def send_events(self, *events: dict[str, Any], key: str | None = None) -> None:
        await self.produce(
            self.names.events,
            [((key or e["user_id"]).encode(), orjson.dumps(e)) for e in events],
        )

    async def set_preferences(self, user_id: str, fields: dict[str, Any], op: str = "put") -> None:
        await self.produce(
            self.names.preferences,
            [(user_id.encode(), orjson.dumps({"op": op, "user_id": user_id, "fields": fields}))],
        )
        await wait_for(lambda: self.worker.table("preferences", user_id), what=f"prefs {user_id}")

    async def read_topic(
        self, topic: str, until: Callable[[list[Any]], bool], timeout: float = 30
    ) -> list[Any]:
        """All records of ``topic`` from the beginning, until ``until(records)`` holds."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    records.extend(recs)
                if until(records):
                    return records
            return records
        finally:
            await consumer.stop()


async def wait_for(
    probe: Callable[[], T], timeout: float = 30, interval: float = 0.2, what: str = "condition"
) -> T:
    """Poll ``probe`` (sync, run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(probe)
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


#: The password :func:`signup` gives its users.
USER_PASSWORD = "correct horse battery staple"


def signup(stack: Stack, prefix: str) -> tuple[str, str]:
    """A new user (a unique username from ``prefix``) signed up with an e-mail address on
    the first worker: its user id and an access token."""
    username = new_id(prefix).replace("-", "_")
    status, user = http_json("POST", f"{stack.worker.url}/api/v1/users", {
        "username": username, "password": USER_PASSWORD, "email": f"{username}@example.com"})
    assert status == 201, user
    status, tokens = http_json("POST", f"{stack.worker.url}/api/v1/auth/token",
                               {"username": username, "password": USER_PASSWORD})
    assert status == 200, tokens
    return user["user_id"], tokens["access_token"]


def header(record: Any, name: str) -> str | None:
    """A header of a consumed record, decoded (see :func:`notifyd.stream.headers.header_value`)."""
    return header_value(record.headers, name)
