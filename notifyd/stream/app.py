"""The Faust application's configuration.

Importing this module builds nothing: :func:`notifyd.stream.factory.build_stream`
(through :func:`notifyd.service.create_app`) makes the app from a :class:`Settings`
with :func:`faust_app` and declares its topics, tables, agents and web view on it.
``app`` and ``settings`` here are the current runtime's (``stream.runtime.ref``), for
modules that are not handed them yet.
"""

from __future__ import annotations

from typing import Any

import faust

from notifyd.config import Settings
from notifyd.stream import changelog, faust_fixes, livelock
from notifyd.stream.runtime import ref

settings: Settings = ref(lambda rt: rt.settings)
app: faust.App = ref(lambda rt: rt.app)


def faust_settings(s: Settings) -> dict[str, Any]:
    canonical = s.web_canonical_url or f"http://{s.web_host}:{s.web_port}"
    return {
        "broker": s.broker_url,
        "store": s.table_store,
        "datadir": str(s.datadir),
        "origin": "notifyd",
        "topic_partitions": s.topic_partitions,
        "topic_replication_factor": s.topic_replication,
        "table_standby_replicas": s.table_standby_replicas,
        # exactly_once has open duplicate bugs in faust-streaming; at-least-once
        # processing plus idempotency (event ids, the delivery ledger) instead.
        "processing_guarantee": "at_least_once",
        "web_host": s.web_host,
        "web_port": s.web_port,
        "web_bind": s.web_host,
        "canonical_url": canonical,
        "web_enabled": True,
        # Faust's own pages would expose every table to anyone who can reach the port.
        "web_tables_enabled": False,
        "web_router_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "topic_allow_declare": True,
        # Lower end-to-end latency: flush produced batches quickly, commit often.
        # 1 ms. 5 ms would mean fewer, larger produce requests (socket.send is ~10% of the
        # worker's time, docs/bench/profile.md), but the crash test stalled once with it
        # (Faust "producer buffer full", 3 of 20,000 undelivered) and it is not verified.
        "producer_linger": 0.001,
        # The batch writer (notifyd.stream.writer) hands the client a batch per partition
        # of all a chunk holds: room for it (Faust's default, 16 KiB, ~30 status records).
        "producer_max_batch_size": 256 * 1024,
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": s.broker_session_timeout_s,
        "broker_heartbeat_interval": min(3.0, s.broker_session_timeout_s / 3),
        "stream_wait_empty": False,
        "worker_redirect_stdouts": False,
        "table_cleanup_interval": 30.0,
    }


def faust_app(s: Settings) -> faust.App:
    """A bare Faust app configured from ``s`` (nothing declared on it yet)."""
    faust_fixes.apply()  # idempotent; before any app exists
    changelog.install()
    livelock.install()
    return faust.App(s.app_id, **faust_settings(s))


def recovery_done(a: faust.App) -> bool:
    """True once table recovery finished (readiness, scheduler)."""
    recovery = getattr(a.tables, "recovery", None)
    return bool(recovery is not None and recovery.completed.is_set())
