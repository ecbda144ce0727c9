"""The operator commands (prefs, user, token) with click's CliRunner: help texts, argument
checks and exit codes; ``user create`` and ``token`` on a real SQLite credential store;
``prefs`` against a small local HTTP stand-in for the worker's API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner

from notifyd.cli import admin as cli_admin
from notifyd.cli.admin import (
    EXIT_NOPERM,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    apply_changes,
    parse_quiet_hours,
)
from notifyd.cli.commands import main
from notifyd.config import get_settings

SECRET = "unit-test-jwt-secret-0123456789abcdef0123"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.startswith("NOTIFYD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NOTIFYD_DATADIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str, input: str | None = None, **env: str) -> Any:
    return CliRunner().invoke(main, list(args), input=input, env=env or None)


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), ["prefs", "user", "token", "worker", "send", "dlq"]),
        (("prefs",), ["get", "set"]),
        (("prefs", "get"), ["USER_ID", "--url", "--token", "NOTIFYD_TOKEN"]),
        (("prefs", "set"), ["--email", "--phone", "--quiet-hours", "--opt-out", "--opt-in",
                            "--apprise-url", "--push-token", "--enable", "--disable"]),
        (("user",), ["create"]),
        (("user", "create"), ["USERNAME", "--email", "--password", "--operator"]),
        (("token",), ["USERNAME", "--password", "--json"]),
    ],
)
def test_help(args: tuple[str, ...], words: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = run(*args, flag)
        assert result.exit_code == 0, result.output
        for w in words:
            assert w in result.output, (args, w)


# --- argument checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prefs", "set", "u1"), "nothing to change"),
        (("prefs", "set", "u1", "--quiet-hours", "22-07"), "START-END@TIMEZONE"),
        (("prefs", "set", "u1", "--quiet-hours", "25:00-07:00@UTC"), "24 h time"),
        (("prefs", "set", "u1", "--quiet-hours", "07:00-07:00@UTC"), "must differ"),
        (("prefs", "set", "u1", "--opt-out", "marketing:fax"), "unknown channel"),
        (("prefs", "set", "u1", "--opt-out", ":email"), "CATEGORY[:CHANNEL]"),
        (("prefs", "set", "u1", "--enable", "fax"), "unknown channel"),
        (("prefs", "set", "u1", "--enable", "sms", "--disable", "sms"), "both"),
        (("prefs", "set", "u1", "--push-token", "t", "--clear-push-tokens"), "exclude"),
        (("prefs", "get"), "Missing argument"),
        (("user", "create", "alice"), "--email"),
        (("token",), "Missing argument"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.output


def test_worker_with_a_bad_setting_exits_2_naming_it() -> None:
    from notifyd.tools.broker.base import free_port

    # A broker nobody listens on: were the setting accepted, the worker would start.
    broker = f"kafka://127.0.0.1:{free_port()}"
    result = run("worker", NOTIFYD_WEB_PORT="0", NOTIFYD_BROKER_URL=broker)
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.strip() == (
        "Error: invalid settings: NOTIFYD_WEB_PORT: Input should be greater than or equal to 1"
    )
    # The flag is checked by click itself.
    result = run("worker", "--web-port", "0", NOTIFYD_BROKER_URL=broker)
    assert result.exit_code == EXIT_USAGE
    assert "'--web-port': 0 is not in the range 1<=x<=65535" in result.output

def test_prefs_without_token_exit_77() -> None:
    result = run("prefs", "get", "u1", "--url", "http://127.0.0.1:1")
    assert result.exit_code == EXIT_NOPERM
    assert "--token or NOTIFYD_TOKEN" in result.output


def test_prefs_unreachable_worker_exit_69() -> None:
    from notifyd.tools.broker.base import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = run("prefs", "get", "u1", "--url", url, "--token", "t")
    assert result.exit_code == EXIT_UNAVAILABLE
    assert f"cannot reach notifyd at {url}" in result.output


def test_parse_quiet_hours() -> None:
    assert parse_quiet_hours("22:00-07:00@Europe/Paris") == {
        "start": "22:00", "end": "07:00", "timezone": "Europe/Paris"
    }
    assert parse_quiet_hours("9:30-17:00@UTC") == {"start": "09:30", "end": "17:00",
                                                   "timezone": "UTC"}
    assert parse_quiet_hours("off") is None


def test_apply_changes() -> None:
    current = {
        "user_id": "u1", "email": "a@example.com", "phone": None, "push_tokens": ["t"],
        "webhook_url": None, "apprise_urls": [], "channels": {"sms": False},
        "opt_out": {"marketing": ["sms"], "news": ["*"]}, "quiet_hours": None,
        "locale": None, "updated_at": 1.0,
    }
    doc = apply_changes(current, {
        "phone": "+14155550123", "email": "", "apprise_urls": ["json://h/x"],
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "UTC"},
        "opt_out": [("marketing", "email"), ("marketing", "sms")],
        "opt_in": [("news", "*")], "enable": ["sms"], "disable": ["push"],
    })
    assert "updated_at" not in doc
    assert doc["phone"] == "+14155550123" and doc["email"] is None
    assert doc["push_tokens"] == ["t"] and doc["apprise_urls"] == ["json://h/x"]
    assert doc["opt_out"] == {"marketing": ["sms", "email"]}
    assert doc["channels"] == {"sms": True, "push": False}
    assert doc["quiet_hours"]["timezone"] == "UTC"
    assert current["opt_out"] == {"marketing": ["sms"], "news": ["*"]}  # not mutated


# --- user create / token on a real SQLite store -----------------------------------------


def test_user_create_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("user", "create", "alice", "--email", "alice@example.com", "--operator",
                 input="correct horse battery\ncorrect horse battery\n")
    assert result.exit_code == 0, result.output
    created = json.loads(result.output[result.output.index("{"):])
    assert created["username"] == "alice"
    assert created["roles"] == ["user", "operator"]
    assert "password" not in json.dumps(created)
    assert "correct horse" not in result.output  # hidden prompt

    again = run("user", "create", "alice", "--email", "alice@example.com",
                "--password", "another password")
    assert again.exit_code == EXIT_REFUSED
    assert "username_taken" in again.output

    bad = run("user", "create", "bob", "--email", "bob@example.com", "--password", "short")
    assert bad.exit_code == EXIT_REFUSED
    assert "password" in bad.output

    tok = run("token", "alice", "--password-stdin", input="correct horse battery\n")
    assert tok.exit_code == 0, tok.output
    token = tok.output.strip()
    # Signed with the secret the workers share through the store (none configured).
    secret = asyncio.run(_stored_secret())
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="notifyd-api")
    assert claims["sub"] == created["user_id"]
    assert claims["roles"] == ["user", "operator"]

    wrong = run("token", "alice", "--password", "wrong password!")
    assert wrong.exit_code == EXIT_NOPERM
    assert "invalid_credentials" in wrong.output

    as_json = run("token", "alice", "--json", NOTIFYD_PASSWORD="correct horse battery")
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.output)
    assert body["token_type"] == "bearer" and body["expires_in"] > 0


def test_token_uses_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFYD_JWT_SECRET", SECRET)
    get_settings.cache_clear()
    assert run("user", "create", "carol", "--email", "c@example.com",
               "--password", "long enough pw").exit_code == 0
    tok = run("token", "carol", "--password", "long enough pw")
    assert tok.exit_code == 0, tok.output
    claims = jwt.decode(tok.output.strip(), SECRET, algorithms=["HS256"],
                        audience="notifyd-api")
    assert claims["roles"] == ["user"]


def test_unknown_user_token_exit_77() -> None:
    result = run("token", "nobody", "--password", "whatever pw")
    assert result.exit_code == EXIT_NOPERM


def test_unreachable_store_exit_69(monkeypatch: pytest.MonkeyPatch) -> None:
    from notifyd.tools.broker.base import free_port

    monkeypatch.setenv("NOTIFYD_CREDENTIAL_STORE_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    result = run("token", "alice", "--password", "whatever pw")
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "credential store" in result.output


async def _stored_secret() -> str:
    from notifyd.web.auth.store import open_store

    store = await open_store(get_settings().resolved_credential_store_url)
    try:
        raw = await store.get("config:jwt_secret")
        assert raw is not None
        return raw.decode()
    finally:
        await store.close()


# --- prefs against a stand-in API ---------------------------------------------------------


class FakeApi:
    """Answers GET/PUT /api/v1/users/{id}/preferences like the worker (a few rules)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                api.requests.append((self.command, self.path, body,
                                     self.headers.get("Authorization")))
                if self.headers.get("Authorization") != "Bearer good":
                    return self._answer(401, {"code": "invalid_token", "detail": "bad token"})
                user = self.path.split("/")[4]
                if self.command == "GET":
                    return self._answer(200, api.docs.get(user) or {
                        "user_id": user, "email": None, "phone": None, "push_tokens": [],
                        "webhook_url": None, "apprise_urls": [], "channels": {},
                        "opt_out": {}, "quiet_hours": None, "locale": None,
                        "updated_at": None})
                phone = (body or {}).get("phone")
                if phone is not None and not phone.startswith("+"):
                    return self._answer(400, {"code": "invalid_preferences",
                                              "detail": f"phone {phone!r} is not E.164"})
                api.docs[user] = {**body, "updated_at": 2.0}
                return self._answer(200, api.docs[user])

            do_GET = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    a = FakeApi()
    yield a
    a.close()


def test_prefs_set_then_get(api: FakeApi) -> None:
    result = run("prefs", "set", "u 1", "--url", api.url, "--email", "u1@example.com",
                 "--quiet-hours", "22:00-07:00@Europe/Paris", "--opt-out", "marketing:email",
                 "--opt-out", "promo", "--apprise-url", "json://h/x",
                 NOTIFYD_TOKEN="good")
    assert result.exit_code == 0, result.output
    method, path, body, auth = api.requests[-1]
    assert (method, path, auth) == ("PUT", "/api/v1/users/u%201/preferences", "Bearer good")
    assert body["quiet_hours"] == {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"}
    assert body["opt_out"] == {"marketing": ["email"], "promo": ["*"]}
    assert body["apprise_urls"] == ["json://h/x"]
    assert json.loads(result.output)["email"] == "u1@example.com"

    got = run("prefs", "get", "u 1", "--url", api.url, "--token", "good")
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["opt_out"]["marketing"] == ["email"]

    # A second set keeps what it does not change.
    result = run("prefs", "set", "u 1", "--url", api.url, "--token", "good",
                 "--opt-in", "marketing:email", "--quiet-hours", "off")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["email"] == "u1@example.com"
    assert doc["opt_out"] == {"promo": ["*"]}
    assert doc["quiet_hours"] is None


def test_prefs_set_shows_validation_errors(api: FakeApi) -> None:
    result = run("prefs", "set", "u1", "--url", api.url, "--token", "good", "--phone", "12345")
    assert result.exit_code == EXIT_REFUSED
    assert "400 invalid_preferences: phone '12345' is not E.164" in result.output


def test_prefs_bad_token_exit_77(api: FakeApi) -> None:
    result = run("prefs", "get", "u1", "--url", api.url, "--token", "bad")
    assert result.exit_code == EXIT_NOPERM
    assert "401 invalid_token" in result.output


def test_default_url_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFYD_WEB_PORT", "7171")
    monkeypatch.setenv("NOTIFYD_WEB_HOST", "0.0.0.0")
    get_settings.cache_clear()
    assert cli_admin._default_url() == "http://127.0.0.1:7171"
