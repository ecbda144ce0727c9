"""Issue 2: the walking skeleton on Apache Kafka, and the same flow on Tansu."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from notifyd.model.records import notification_id_for
from notifyd.tools.broker.tansu import TansuBroker
from tests.integration.conftest import start_stack
from tests.support.harness import Sinks, Stack, header, new_id, wait_for

pytestmark = pytest.mark.integration


async def _inbox_flow(stack: Stack) -> None:
    user = new_id("alice")
    event = {"event_id": new_id("evt"), "user_id": user, "title": "Hello", "body": "First one"}
    # A plain JSON value keyed by user_id, as any Kafka client would write it.
    await stack.send_events(event)
    box = await wait_for(lambda: stack.worker.table("inbox", user), what="inbox item")
    assert box["unread"] == 1
    assert box["items"][0]["title"] == "Hello"
    nid = notification_id_for(user, event["event_id"])
    assert box["items"][0]["id"] == nid

    def inapp_sent() -> Any:
        st = stack.worker.table("status", nid)
        return st if st and st["channels"]["inapp"]["status"] == "sent" else None

    status = await wait_for(inapp_sent, what="status sent")
    assert status["user_id"] == user
    # No contact data for this user: the other channels say why they did nothing.
    assert status["channels"]["email"]["status"] == "suppressed"
    assert status["channels"]["email"]["reason"].startswith("no_address")
    code, health = stack.worker.get("/healthz")
    assert code == 200 and health["status"] == "ok"
    op = stack.worker.op_headers
    code, body = stack.worker.get("/api/v1/admin/tables/inbox/nobody-here", op)
    assert code == 404 and body["code"] == "key_not_found"
    code, body = stack.worker.get("/api/v1/admin/tables/nope/x", op)
    assert code == 404 and body["code"] == "unknown_table"
    code, body = stack.worker.get(f"/api/v1/admin/tables/inbox/{user}")
    assert code == 401 and body["code"] == "not_authenticated"


async def test_event_delivered_on_kafka(stack: Stack) -> None:
    await _inbox_flow(stack)


async def test_malformed_events_go_to_dlq_and_worker_survives(stack: Stack) -> None:
    user = new_id("bob")
    bad = [
        (b"k1", b"this is not json"),
        (b"k2", orjson.dumps({"event_id": new_id("e"), "title": "no user"})),
        (b"k3", b"\xff\xfe\x00garbage"),
        (b"k4", orjson.dumps([1, 2, 3])),
    ]
    good = {"event_id": new_id("evt"), "user_id": user, "title": "after the bad ones"}
    await stack.produce(stack.names.events, [*bad, (user.encode(), orjson.dumps(good))])
    await wait_for(lambda: stack.worker.table("inbox", user), what="good event delivered")

    keys = {k for k, _ in bad}
    records = await stack.read_topic(stack.names.events_dlq, lambda rs: keys <= {r.key for r in rs})
    by_key = {r.key: r for r in records if r.key in keys}
    assert set(by_key) == keys
    assert by_key[b"k1"].value == b"this is not json"  # original bytes kept
    assert header(by_key[b"k1"], "notifyd-reason").startswith("invalid_json")
    assert header(by_key[b"k2"], "notifyd-reason") == "missing_field: user_id is required"
    assert header(by_key[b"k3"], "notifyd-reason").startswith("invalid_utf8")
    assert header(by_key[b"k4"], "notifyd-reason").startswith("not_an_object")
    assert header(by_key[b"k2"], "notifyd-source-topic") == stack.names.events
    assert stack.worker.alive()


@pytest.fixture(scope="module")
def tansu_stack(
    tansu: TansuBroker, sinks: Sinks, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("tansu-stack")
    st = start_stack(tansu.url, tansu.bootstrap, root, "tansu", sinks)
    yield st
    for w in st.workers:
        w.stop()


async def test_same_flow_on_tansu(tansu_stack: Stack) -> None:
    await _inbox_flow(tansu_stack)


def test_run_command_delivers_the_demo(tmp_path: Path) -> None:
    """The README's first command: embedded default (Tansu + SQLite) shows a delivery."""
    import subprocess
    import sys

    from notifyd.tools.broker.base import free_port

    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("NOTIFYD_")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "notifyd",
            "run",
            "--datadir",
            str(tmp_path / "run"),
            "--web-port",
            str(port),
            "--exit-after-demo",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"web view: http://127.0.0.1:{port}" in res.stdout
    assert "demo: delivered on every channel" in res.stdout
    for ch in ("email", "sms", "push", "webhook", "inapp"):
        assert f"  {ch:8} sent" in res.stdout
