"""What the bench reads of a process in /proc (CPU, threads, memory) and of the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)

    def ver(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "faust": ver("faust-streaming"),
        "aiokafka": ver("aiokafka"),
        "rocksdict": ver("rocksdict"),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of a process and its live child processes (Linux /proc)."""
    own = proc_cpu_s(pid)
    if own is None or pid is None:
        return own
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return own
    return own + sum(proc_cpu_s(int(k)) or 0.0 for k in kids)


def thread_cpu_s(pid: int | None) -> dict[str, float] | None:
    """CPU seconds of a process's main thread and of all its other threads (Faust
    runs its aiokafka consumer in a thread of its own)."""
    if pid is None:
        return None
    main = other = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if int(tid) == pid:
            main += cpu
        else:
            other += cpu
    return {"main_thread": round(main, 3), "other_threads": round(other, 3)}


def thread_cpu_change(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float] | None:
    """The CPU seconds each side of :func:`thread_cpu_s` used between two readings
    (None when either could not be read)."""
    if not before or not after:
        return None
    return {k: round(after[k] - before[k], 3) for k in before}


def proc_mem_mb(pid: int | None) -> tuple[float | None, float | None]:
    """(RSS, peak RSS) in MB of a process (Linux /proc)."""
    if pid is None:
        return None, None
    rss = hwm = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("VmHWM:"):
                hwm = round(int(line.split()[1]) / 1024, 1)
    return rss, hwm


def maps_mention(pid: int | None, needle: str) -> bool:
    """Whether a shared object whose path contains ``needle`` is mapped in ``pid``."""
    if pid is None:
        return False
    try:
        return needle in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def dir_mb(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return round(total / 1024 / 1024, 1)


class CpuMeter:
    """CPU seconds used by named processes between start() and stop(); those named in
    ``trees`` with their child processes (a ``worker --processes N`` supervisor)."""

    def __init__(self, pids: dict[str, int | None], trees: tuple[str, ...] = ("worker",)):
        self.pids = pids
        self.trees = trees
        self.t0: dict[str, float | None] = {}
        self.wall0 = 0.0

    def _cpu(self, key: str, pid: int | None) -> float | None:
        return tree_cpu_s(pid) if key in self.trees else proc_cpu_s(pid)

    def start(self) -> CpuMeter:
        self.t0 = {k: self._cpu(k, p) for k, p in self.pids.items()}
        self.wall0 = time.monotonic()
        return self

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wall_s": round(time.monotonic() - self.wall0, 3)}
        for k, p in self.pids.items():
            now, then = self._cpu(k, p), self.t0.get(k)
            out[k] = round(now - then, 3) if now is not None and then is not None else None
        return out


def _metric_families(url: str, timeout: float) -> list[Any]:
    """The families of ``{url}/metrics`` ([] when it cannot be read)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return []
    return list(text_string_to_metric_families(text))


def delivery_routes(url: str, timeout: float = 5.0) -> dict[str, dict[str, float]]:
    """``{channel: {route: count}}`` of a worker's ``notifyd_deliveries_queued`` (how
    many deliveries went to their channel's lane in the worker, how many through the
    channel topic); {} when ``{url}/metrics`` cannot be read."""
    out: dict[str, dict[str, float]] = {}
    for family in _metric_families(url, timeout):
        if family.name != "notifyd_deliveries_queued":
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                out.setdefault(s.labels["channel"], {})[s.labels["route"]] = s.value
    return out


def counters(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Every counter sample of a worker's ``/metrics`` as ``name{labels}: value``, so
    two readings show what the worker did between them."""
    out: dict[str, float] = {}
    for family in _metric_families(url, timeout):
        if family.type != "counter":
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def counter_changes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The counters that moved from ``before`` to ``after``, by how much."""
    return {
        k: round(v - before.get(k, 0.0), 3) for k, v in sorted(after.items())
        if v != before.get(k, 0.0)
    }
