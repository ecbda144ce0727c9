"""``python -m notifyd user create / token / prefs set / prefs get`` against a real worker
(Apache Kafka + Redis credential store), as an operator would bootstrap a deployment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Stack, new_id

pytestmark = pytest.mark.integration

PASSWORD = "a long enough password"


def notifyd(stack: Stack, *args: str, stdin: str | None = None, **env: str) -> Any:
    """Run the CLI with the worker's settings (broker, Redis store, JWT secret, web port)."""
    return subprocess.run(
        [sys.executable, "-m", "notifyd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**stack.worker.env(), **env},
    )


def create_user(stack: Stack, username: str, *extra: str) -> dict[str, Any]:
    res = notifyd(stack, "user", "create", username, "--email", f"{username}@example.com",
                  "--password-stdin", *extra, stdin=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    created: dict[str, Any] = json.loads(res.stdout)
    return created


def token_for(stack: Stack, username: str) -> str:
    res = notifyd(stack, "token", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_bootstrap_an_operator_and_manage_preferences(stack: Stack) -> None:
    admin = new_id("cli-op")
    created = create_user(stack, admin, "--operator")
    assert created["roles"] == ["user", "operator"]
    assert "password" not in json.dumps(created)

    taken = notifyd(stack, "user", "create", admin, "--email", "x@example.com",
                    "--password-stdin", stdin=PASSWORD + "\n")
    assert taken.returncode == 1
    assert "username_taken" in taken.stderr

    wrong = notifyd(stack, "token", admin, "--password-stdin", stdin="not the password\n")
    assert wrong.returncode == 77
    assert "invalid_credentials" in wrong.stderr

    token = token_for(stack, admin)
    # The worker accepts the token (same signing secret).
    status, me = stack.worker.get("/api/v1/users/me", {"Authorization": f"Bearer {token}"})
    assert status == 200 and me["username"] == admin

    user = new_id("cli-user")
    res = notifyd(
        stack, "prefs", "set", user, "--url", stack.worker.url,
        "--email", f"{user}@example.com", "--phone", "+14155550123",
        "--quiet-hours", "22:00-07:00@Europe/Paris",
        "--opt-out", "marketing:email", "--opt-out", "promo",
        "--apprise-url", "json://127.0.0.1:9/hook",
        "--disable", "sms",
        NOTIFYD_TOKEN=token,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["email"] == f"{user}@example.com"
    assert doc["quiet_hours"] == {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"}
    assert doc["opt_out"] == {"marketing": ["email"], "promo": ["*"]}
    assert doc["channels"] == {"sms": False}
    assert doc["apprise_urls"] == ["json://127.0.0.1:9/hook"]
    # Applied by the worker that owns the user's partition.
    assert stack.worker.table("preferences", user)["phone"] == "+14155550123"

    # prefs get: --url defaults to the worker's NOTIFYD_WEB_HOST/PORT, token from --token.
    got = notifyd(stack, "prefs", "get", user, "--token", token)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["opt_out"] == doc["opt_out"]

    # A later change keeps everything else.
    res = notifyd(stack, "prefs", "set", user, "--opt-in", "promo", "--quiet-hours", "off",
                  NOTIFYD_TOKEN=token)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["opt_out"] == {"marketing": ["email"]}
    assert doc["quiet_hours"] is None
    assert doc["phone"] == "+14155550123"

    # The API's validation errors are shown, exit code 1.
    bad = notifyd(stack, "prefs", "set", user, "--phone", "12345", NOTIFYD_TOKEN=token)
    assert bad.returncode == 1
    assert "400 invalid_preferences" in bad.stderr and "E.164" in bad.stderr
    bad_tz = notifyd(stack, "prefs", "set", user, "--quiet-hours", "22:00-07:00@Mars/Olympus",
                     NOTIFYD_TOKEN=token)
    assert bad_tz.returncode == 1
    assert "IANA time zone" in bad_tz.stderr


def test_non_operator_token_is_refused(stack: Stack) -> None:
    plain = new_id("cli-plain")
    created = create_user(stack, plain)
    assert created["roles"] == ["user"]
    token = token_for(stack, plain)
    res = notifyd(stack, "prefs", "get", "someone-else", "--token", token)
    assert res.returncode == 77
    assert "403" in res.stderr


def test_prefs_without_a_worker(stack: Stack) -> None:
    from notifyd.tools.broker.base import free_port

    res = notifyd(stack, "prefs", "get", "u1", "--url", f"http://127.0.0.1:{free_port()}",
                  "--token", "x")
    assert res.returncode == 69
    assert "cannot reach notifyd" in res.stderr


async def test_dlq_list_shows_the_reason_and_undecodable_bytes(stack: Stack) -> None:
    """A malformed event lands in the events DLQ; ``notifyd dlq list`` prints it (JSON
    lines, the same shape as GET /api/v1/admin/dlq) with its reason."""
    import base64

    from tests.support.harness import wait_for

    key = new_id("dlq-cli").encode()
    raw = b"\xff\xfe not json"
    await stack.produce(stack.names.events, [(key, raw)])

    def listed() -> dict[str, Any] | None:
        res = notifyd(stack, "dlq", "list", "--topic", "events", "--limit", "500")
        assert res.returncode == 0, res.stderr
        items = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        return next((i for i in items if i["key"] == key.decode()), None)

    item = await wait_for(listed, interval=1.0, what="dead letter listed")
    assert item["value_base64"] is True and base64.b64decode(item["value"]) == raw
    assert item["reason"] and item["topic"] == stack.names.events_dlq


def test_worker_refuses_web_port_zero_with_one_clean_line(
    stack: Stack, tmp_path: Path
) -> None:
    """NOTIFYD_WEB_PORT=0 against the real broker: a settings error naming the variable,
    exit 2, before anything starts (it used to start, then die in a Faust traceback)."""
    name = new_id("port0")
    res = notifyd(stack, "worker", NOTIFYD_WEB_PORT="0", NOTIFYD_APP_ID=name,
                  NOTIFYD_TOPIC_PREFIX=name, NOTIFYD_DATADIR=str(tmp_path))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "Error: invalid settings: NOTIFYD_WEB_PORT: Input should be greater than or equal to 1"
    ]
