"""Settings: NOTIFYD_* environment parsing, validation and redaction."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from notifyd.config import CHANNELS, Settings

SECRET_FIELDS = (
    "jwt_secret",
    "oidc_client_secret",
    "smtp_password",
    "sms_api_token",
    "push_api_token",
    "webhook_secret",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFYD_* variable of the surrounding process leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("NOTIFYD_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.app_id == "notifyd"
    assert s.broker_url == "kafka://127.0.0.1:9092"
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.topic_partitions == 8
    assert s.throttle_mode == "defer"
    assert s.templates_dir is None
    assert s.clock_start is None
    assert s.jwt_secret.get_secret_value() == ""
    assert CHANNELS == ("email", "sms", "push", "webhook", "inapp")


def test_env_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFYD_APP_ID", "notifyd-test")
    monkeypatch.setenv("NOTIFYD_TOPIC_PARTITIONS", "3")
    monkeypatch.setenv("NOTIFYD_THROTTLE_MODE", "suppress")
    monkeypatch.setenv("NOTIFYD_THROTTLE_LIMIT", "0")
    monkeypatch.setenv("NOTIFYD_SMTP_STARTTLS", "true")
    monkeypatch.setenv("NOTIFYD_RETRY_BASE_S", "0.25")
    monkeypatch.setenv("NOTIFYD_DATADIR", str(tmp_path))
    monkeypatch.setenv("NOTIFYD_TEMPLATES_DIR", str(tmp_path / "tpl"))
    monkeypatch.setenv("NOTIFYD_CLOCK_START", "2024-03-30T23:59:00+01:00")
    monkeypatch.setenv("NOTIFYD_JWT_SECRET", "s3cr3t")
    s = Settings()
    assert s.app_id == "notifyd-test"
    assert s.topic_partitions == 3
    assert s.throttle_mode == "suppress"
    assert s.throttle_limit == 0
    assert s.smtp_starttls is True
    assert s.retry_base_s == 0.25
    assert s.datadir == tmp_path
    assert s.templates_dir == tmp_path / "tpl"
    assert s.clock_start == datetime(2024, 3, 30, 22, 59, tzinfo=UTC)
    assert isinstance(s.jwt_secret, SecretStr)
    assert s.jwt_secret.get_secret_value() == "s3cr3t"


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("notifyd_web_port", "7070")
    assert Settings().web_port == 7070


def test_unprefixed_env_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ID", "nope")
    monkeypatch.setenv("TOPIC_PARTITIONS", "99")
    s = Settings()
    assert s.app_id == "notifyd" and s.topic_partitions == 8


def test_unknown_notifyd_env_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFYD_NOT_A_SETTING", "x")
    Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFYD_TOPIC_PARTITIONS", "0"),
        ("NOTIFYD_TOPIC_PARTITIONS", "many"),
        ("NOTIFYD_THROTTLE_MODE", "drop"),
        ("NOTIFYD_THROTTLE_LIMIT", "-1"),
        ("NOTIFYD_WEB_PORT", "70000"),
        ("NOTIFYD_TOPIC_PREFIX", "has space"),
        ("NOTIFYD_TOPIC_PREFIX", ""),
        ("NOTIFYD_RETRY_BASE_S", "0"),
        ("NOTIFYD_LOG_FORMAT", "xml"),
        ("NOTIFYD_DEDUPE_TTL_S", "10"),
    ],
)
def test_invalid_env_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_web_port_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other workers route look-ups to the port this one announces: it must be a real one.
    monkeypatch.setenv("NOTIFYD_WEB_PORT", "0")
    with pytest.raises(ValidationError, match="web_port") as err:
        Settings()
    assert [(e["loc"], e["type"]) for e in err.value.errors()] == [
        (("web_port",), "greater_than_equal")
    ]
    for port in (1, 65535):
        monkeypatch.setenv("NOTIFYD_WEB_PORT", str(port))
        assert Settings().web_port == port

@pytest.mark.parametrize(
    "url",
    ["kafka://broker:9092", "aiokafka://b1:9092", "kafka://a:1;b:2"],
)
def test_broker_url_accepted(url: str) -> None:
    assert Settings(broker_url=url).broker_url == url


@pytest.mark.parametrize(
    "url", ["broker:9092", "http://broker:9092", "redis://x", "", "KAFKA//x:1"]
)
def test_broker_url_rejected(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ValidationError, match="broker_url"):
        Settings(broker_url=url)
    monkeypatch.setenv("NOTIFYD_BROKER_URL", url)
    with pytest.raises(ValidationError, match="broker_url"):
        Settings()


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("kafka://a:9092", ["a:9092"]),
        ("kafka://a:9092;b:9093", ["a:9092", "b:9093"]),
        ("kafka://a:9092,b:9093", ["a:9092", "b:9093"]),
        ("kafka://a:1;b:2,c:3", ["a:1", "b:2", "c:3"]),
        ("kafka:// a:1 ; b:2 ;", ["a:1", "b:2"]),
        ("aiokafka://x:1;;y:2", ["x:1", "y:2"]),
    ],
)
def test_bootstrap_servers(monkeypatch: pytest.MonkeyPatch, url: str, servers: list[str]) -> None:
    monkeypatch.setenv("NOTIFYD_BROKER_URL", url)
    assert Settings().bootstrap_servers == servers


def test_default_credential_store_is_sqlite_in_datadir(tmp_path: Path) -> None:
    s = Settings(datadir=tmp_path / "data")
    assert s.credential_store_url == ""
    assert s.resolved_credential_store_url == f"sqlite:///{tmp_path / 'data' / 'credentials.db'}"
    assert Settings().resolved_credential_store_url == "sqlite:///var/notifyd/credentials.db"


def test_explicit_credential_store_kept() -> None:
    s = Settings(credential_store_url="redis://localhost:6379/2")
    assert s.resolved_credential_store_url == "redis://localhost:6379/2"


def test_redacted_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {name: f"VALUE-OF-{name}-xyz" for name in SECRET_FIELDS}
    for name, value in values.items():
        monkeypatch.setenv(f"NOTIFYD_{name.upper()}", value)
    s = Settings()
    out = s.redacted()
    for name in SECRET_FIELDS:
        assert out[name] == "**********", name
    dumped = json.dumps(out)  # printable as JSON
    for value in values.values():
        assert value not in dumped
        assert value not in repr(s) and value not in str(s)


def test_redacted_shows_unset_secrets_as_empty() -> None:
    out = Settings().redacted()
    for name in SECRET_FIELDS:
        assert out[name] == ""


def test_redacted_keeps_plain_settings_and_stringifies(tmp_path: Path) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    s = Settings(datadir=tmp_path, clock_start=start, smtp_username="mailer")
    out = s.redacted()
    assert out["datadir"] == str(tmp_path)
    assert out["clock_start"] == str(start)
    assert out["smtp_username"] == "mailer"
    assert out["topic_partitions"] == 8
    assert set(out) == set(Settings.model_fields)
    json.dumps(out)


@pytest.mark.parametrize(
    ("url", "masked", "secret"),
    [
        ("redis://user:hunter2@cache:6379/0", "redis://user:****@cache:6379/0", "hunter2"),
        ("redis://:hunter2@cache:6379/0", "redis://:****@cache:6379/0", "hunter2"),
        ("rediss://u:p%40ss:w0rd@cache/1", "rediss://u:****@cache/1", "w0rd"),
        ("redis://u:p@ss@cache/1", "redis://u:****@cache/1", "p@ss"),
    ],
)
def test_redacted_masks_password_in_credential_store_url(
    url: str, masked: str, secret: str
) -> None:
    out = Settings(credential_store_url=url).redacted()
    assert out["credential_store_url"] == masked
    assert secret not in json.dumps(out)


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "redis://user@cache:6379/0", "sqlite:////tmp/x.db", ""]
)
def test_redacted_leaves_urls_without_password(url: str) -> None:
    assert Settings(credential_store_url=url).redacted()["credential_store_url"] == url
