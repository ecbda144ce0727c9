"""docker-compose.yml is checked against the settings the code reads (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from notifyd.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_services_and_healthchecks() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", "sandbox", "worker1", "worker2", "worker3"} <= set(services)
    for name in ("kafka", "redis", "sandbox", "worker1"):
        assert "healthcheck" in services[name], name
    for w in ("worker1", "worker2", "worker3"):
        deps = services[w]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"


def test_every_notifyd_variable_is_a_setting_and_parses() -> None:
    fields = {f"NOTIFYD_{name.upper()}" for name in Settings.model_fields}
    services = _compose()["services"]
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for key in env:
            if key.startswith("NOTIFYD_"):
                assert key in fields, f"{name}: {key} is not read by notifyd.config.Settings"
        if name.startswith("worker"):
            values = {
                k[len("NOTIFYD_") :].lower(): v
                for k, v in env.items()
                if k.startswith("NOTIFYD_") and "${" not in str(v)
            }
            s = Settings(**values)
            assert s.bootstrap_servers == ["kafka:9092"]
            assert s.resolved_credential_store_url.startswith("redis://")
            assert s.web_canonical_url == f"http://{name}:6066"


def test_example_env_lists_only_real_settings() -> None:
    fields = {f"NOTIFYD_{name.upper()}" for name in Settings.model_fields}
    for line in (ROOT / "config" / "notifyd.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            assert line.split("=", 1)[0] in fields, line
