"""The structlog set-up: JSON lines with the bound per-record context; levels filtered
before any processing."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from notifyd.log import configure, get_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_with_context_and_debug_filtered(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure("json", "INFO")
    # Disabled levels are dropped before the chain runs (per-record debug lines are on
    # the hot path).
    assert structlog.get_config()["processors"][0] is structlog.stdlib.filter_by_level
    log = get_logger("notifyd.test")
    structlog.contextvars.bind_contextvars(topic="t", partition=3, offset=7)
    log.debug("quiet")
    log.info("loud", password="hunter2")
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert [x["event"] for x in lines] == ["loud"]
    assert lines[0]["partition"] == 3 and lines[0]["offset"] == 7
    assert lines[0]["password"] == "**********"
    assert lines[0]["level"] == "info"


def test_debug_follows_the_level_even_for_a_cached_logger(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure("json", "INFO")
    log = get_logger("notifyd.test.cached")
    log.debug("dropped")  # the logger is built (and cached) while DEBUG is off
    configure("json", "DEBUG")
    log.debug("kept", n=1)
    configure("json", "WARNING")
    log.debug("dropped again")
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert [(x["event"], x["level"]) for x in lines] == [("kept", "debug")]
