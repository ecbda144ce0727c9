"""The pure parts of the bench's state phase: failover figures, probe users, the
restore's share read from a worker log (no broker, no worker)."""

from __future__ import annotations

import json

from notifyd.tools.bench.failover import split_ok, summarize, users_by_partition
from notifyd.tools.bench.schedule import partition_of
from notifyd.tools.bench.stats import format_summary, restore_from_log


def test_users_by_partition_picks_state_users_of_each_partition() -> None:
    got = users_by_partition(10_000, 8, 3)
    assert set(got) == set(range(8))
    for p, users in got.items():
        assert len(users) == 3 and all(partition_of(u, 8) == p for u in users)
        assert all(u.startswith("s") and int(u[1:]) < 10_000 for u in users)
    few = users_by_partition(2, 8, 3)  # fewer users than partitions: some stay empty
    assert sum(len(u) for u in few.values()) == 2


def test_split_ok_wants_every_partition_once_and_every_worker_some() -> None:
    assert split_ok([{0, 1}, {2, 3}], 4)
    assert not split_ok([{0, 1, 2, 3}, set()], 4)  # the second one has nothing yet
    assert not split_ok([{0, 1}, {1, 2, 3}], 4)  # both claim 1 (mid-rebalance)
    assert not split_ok([{0}, {2, 3}], 4)  # 1 owned by nobody


def test_summarize_times_the_victims_partitions_from_the_stop() -> None:
    first = {0: 105.5, 1: 104.0, 2: 100.02, 3: 100.05}
    s = summarize(100.0, first, {0, 1}, {2: 30.0, 3: 1500.0, 0: 9999.0})
    assert s["victim_partitions"] == [0, 1] and s["survivor_partitions"] == [2, 3]
    assert s["failover_s"] == 5.5  # the last victim partition to deliver again
    assert s["first_delivery_s"]["2"] == 0.02
    assert s["survivor_pause_ms"] == 1500.0  # only the survivor's own partitions
    assert summarize(100.0, {**first, 1: None}, {0, 1}, {})["failover_s"] is None


def test_restore_from_log_reads_the_last_restore_record() -> None:
    lines = [
        "not json",
        json.dumps({"event": "restore.done", "records": 5, "seconds": 1.0, "complete": True}),
        json.dumps({"event": "worker.starting"}),
        json.dumps({"event": "restore.done", "records": 7, "partitions": 8, "seconds": 2.5,
                    "complete": False, "per_table": {}}),
    ]
    assert restore_from_log("\n".join(lines)) == {
        "records": 7, "partitions": 8, "seconds": 2.5, "complete": False}
    assert restore_from_log('{"event": "worker.starting"}\n') is None


def test_summary_shows_restore_and_failover_rows() -> None:
    state = {
        "users": 10, "store": "rocksdb://", "recovery_s": 3.0,
        "restore": {"seconds": 1.25},
        "failover": {
            "clean": {"signal": "SIGTERM", "session_timeout_s": 30.0, "failover_s": 4.2,
                      "survivor_pause_ms": 800.0},
            "kill": {"signal": "SIGKILL", "session_timeout_s": 6.0, "failover_s": 8.5,
                     "survivor_pause_ms": 900.0},
        },
    }
    text = format_summary({"state": state})
    assert "of which the bulk restore (s)" in text and "1.2" in text
    assert "failover, clean (SIGTERM, session timeout 30.0 s)" in text and "4.20" in text
    assert "failover, kill (SIGKILL, session timeout 6.0 s)" in text and "8.50" in text
