"""``notifyd bench --quick --skip-state`` end to end: a real broker, worker and sink.

Checks the result document is complete and its numbers are sane; never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from notifyd.tools.bench.stats import LATENCY_KEYS, SECTIONS, missing_sections

pytestmark = pytest.mark.integration

#: What starts coverage in a Python subprocess (coverage's ``patch = ["subprocess"]``).
_COVERAGE_START = frozenset({"COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"})


def _sane_latency(s: dict[str, float | int | None], count: int) -> None:
    assert set(LATENCY_KEYS) <= set(s)
    assert s["count"] == count
    values = [s[k] for k in ("min", "p50", "p90", "p99", "p999", "max")]
    numbers = [float(v) for v in values if isinstance(v, float | int) and v >= 0]
    assert len(numbers) == len(values), s
    assert numbers == sorted(numbers), s


def test_bench_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # The bench's process tree (bench, floor, sink, workers) runs without coverage
    # measurement: it is the suite's longest test (3.5 min bare) and what it checks is
    # the result document, not which lines ran.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFYD_") and k not in _COVERAGE_START}
    broker = os.environ.get("NOTIFYD_TEST_BROKER_URL")
    cmd = [
        sys.executable,
        "-m",
        "notifyd",
        "bench",
        "--quick",
        "--skip-state",
        "--no-progress",
        "--out",
        str(out),
        *(["--broker-url", broker] if broker else []),
    ]
    res = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False
    )
    assert res.returncode == 0, f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    assert "notifyd: full pipeline" in res.stdout  # the summary table

    doc = json.loads(out.read_text())
    assert set(SECTIONS) <= set(doc)
    assert missing_sections(doc) == []
    assert doc["options"]["quick"] is True
    assert doc["machine"]["nproc"] >= 1
    assert doc["state"] == {"skipped": True}

    floor, nd = doc["floor"], doc["notifyd"]
    ft, nt = floor["throughput"], nd["throughput"]
    assert ft["received"] == ft["events"] > 0 and ft["events_per_s"] > 0
    assert nt["received"] == nt["events"] > 0 and nt["events_per_s"] > 0
    assert nt["inapp_sent"] == nt["events"]  # both channels of every event delivered
    ip = nd["throughput_inprocess"]  # in-app only: every event's inbox write is sent
    assert ip["received"] == ip["events"] == nt["events"] and ip["events_per_s"] > 0
    assert 0 < doc["ratios"]["throughput_inprocess"]
    assert set(floor["latency"]) == set(nd["latency"]) == {str(r) for r in doc["options"]["rates"]}
    for run in floor["latency"].values():
        _sane_latency(run["single_hop"], run["sent"])
        _sane_latency(run["passthrough"], run["sent"])
        assert sum(run["passthrough_hist"]["counts"]) == run["sent"]
    for r, run in nd["latency"].items():
        assert run["lost"] == 0 and run["received"] == run["sent"]
        _sane_latency(run["e2e"], run["sent"])
        assert {"ingest", "webhook_send", "inapp_send"} <= set(run["stages"])
        p99 = doc["ratios"]["p99"][r]
        assert p99["vs_single_hop"] > 0 and p99["vs_passthrough"] > 0
    assert 0 < doc["ratios"]["throughput"]

    png = Path(doc["artifacts"]["histogram_png"])
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
