"""The app factory: importing notifyd builds and reads nothing; create_app builds a
complete app from the settings it is given, each build its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from notifyd.config import CHANNELS
from notifyd.stream import runtime
from notifyd.stream.runtime import NotBuilt, Runtime, ref
from notifyd.stream.tables import ledger
from notifyd.stream.topics import events_topic, names
from notifyd.stream.topology import TABLE_NAMES
from tests.support.app import build_app

ROOT = Path(__file__).resolve().parents[2]

IMPORT_EVERYTHING = """
import notifyd.stream.app, notifyd.stream.topics, notifyd.stream.tables, notifyd.stream.agents
import notifyd.stream.handlers.ingest, notifyd.stream.scheduler, notifyd.service, notifyd.web.view
import notifyd.web.api.v1, notifyd.cli.commands
from notifyd.stream import runtime
from notifyd.stream.topics import events_topic
assert runtime._current == [], runtime._current
try:
    events_topic.get_topic_name()
except runtime.NotBuilt:
    print("not built")
"""


def test_importing_builds_nothing_and_reads_no_settings() -> None:
    # An invalid setting: reading the settings at import time would fail.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFYD_TOPIC_PARTITIONS": "many"}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "not built"


def test_create_app_declares_topics_tables_agents_and_the_web_view(runtime: Runtime) -> None:
    app = runtime.app
    assert set(app.agents) == {
        *(f"notifyd.agent.{ch}" for ch in CHANNELS),
        "notifyd.ingest", "notifyd.preferences", "notifyd.control", "notifyd.status",
        "notifyd.subscriptions", "notifyd.fanout", "notifyd.callbacks",
    }
    assert tuple(runtime.tables.by_name) == TABLE_NAMES
    assert all(app.tables[name] is t for name, t in runtime.tables.by_name.items())
    assert set(runtime.topics.deliver) == set(CHANNELS)
    paths = {r.resource.canonical for r in app.web.web_app.router.routes()  # type: ignore[attr-defined]
             if r.resource is not None}
    assert {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"} <= paths
    # One route of each module that declares routes on the registry.
    assert {"/api/v1/subscriptions", "/api/v1/notifications/stream", "/api/v1/unsubscribe",
            "/api/v1/admin/providers"} <= paths


def test_the_web_view_mounts_every_module_that_declares_routes() -> None:
    graph = grimp.build_graph("notifyd", cache_dir=None)
    declaring = graph.find_modules_that_directly_import("notifyd.web.registry")
    mounted = graph.find_modules_directly_imported_by("notifyd.web.view")
    assert declaring - {"notifyd.web.view"} <= mounted


async def test_each_build_has_its_own_settings_and_the_refs_follow_the_current() -> None:
    first = build_app(topic_prefix="one")
    assert names.events == "one.events"
    assert events_topic.get_topic_name() == "one.events"
    second = build_app(topic_prefix="two", topic_partitions=3)
    assert second.app is not first.app
    assert first.topics.events.get_topic_name() == "one.events"
    assert events_topic.get_topic_name() == "two.events"
    assert ledger.name == "ledger" and ledger.partitions == 3
    assert runtime.current() is second


def test_refs_forward_and_say_when_nothing_is_built() -> None:
    with runtime.scoped():
        runtime._current.clear()
        with pytest.raises(NotBuilt, match="create_app"):
            _ = names.events
        assert repr(ledger) == "ref(<not built>)"
    box = {"n": 0}
    fake = Runtime(settings=None, app=None, topics=None, tables=box,  # type: ignore[arg-type]
                   build_provider=None)  # type: ignore[arg-type]
    rows = ref(lambda rt: rt.tables)
    with runtime.scoped():
        runtime.install(fake)
        assert rows["n"] == 0 and "n" in rows and list(rows) == ["n"] and len(rows) == 1
        rows["m"] = 1
        del rows["n"]
        assert box == {"m": 1} and bool(rows)
        box.clear()
        assert not rows


def test_a_ref_keeps_what_it_found_only_while_its_runtime_is_current() -> None:
    def fake(rows: dict[str, int]) -> Runtime:
        return Runtime(settings=None, app=None, topics=None, tables=rows,  # type: ignore[arg-type]
                       build_provider=None)  # type: ignore[arg-type]

    rows = ref(lambda rt: rt.tables)
    one, two = fake({"one": 1}), fake({"two": 2})
    with runtime.scoped():
        runtime.install(one)
        assert list(rows) == ["one"]
        with runtime.scoped():
            runtime.install(two)
            assert list(rows) == ["two"] and rows.get("two") == 2
        assert list(rows) == ["one"] and rows.get("one") == 1  # the scope's end restored it
        runtime._current.clear()
        with pytest.raises(NotBuilt):
            _ = rows.get
