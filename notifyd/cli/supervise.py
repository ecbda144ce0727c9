"""``notifyd worker --processes N``: N worker processes on one machine, one per core.

A worker's streams run on one event loop, so one process uses about one core; Kafka
spreads the partitions over the processes (one consumer group), as over machines.
Each child is a plain ``notifyd worker`` with its own web port (``NOTIFYD_WEB_PORT``
+ its index, so requests are routed between them as between hosts) and its own table
directory (``NOTIFYD_DATADIR/process-<i>``: RocksDB stores are not shared).  A child
that dies is started again after a pause that doubles up to a minute (reset once it
ran a minute); SIGTERM/SIGINT stop them all, SIGKILL after ``stop_timeout_s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from notifyd.config import Settings

log = structlog.stdlib.get_logger("notifyd.cli.supervise")

RESTART_BASE_S = 1.0
RESTART_MAX_S = 60.0
#: A child that ran this long counts as healthy: its next restart waits the base pause.
HEALTHY_AFTER_S = 60.0


class ProcessesUnsupported(ValueError):
    """The settings cannot be split over processes (a fixed canonical URL)."""


def child_env(base: Mapping[str, str], index: int, settings: Settings) -> dict[str, str]:
    """The environment of child ``index``: its own web port and table directory, the
    credential store they all share (by default a SQLite file in the parent's datadir,
    which every process must see: a token issued by one is checked by another)."""
    if settings.web_canonical_url:
        raise ProcessesUnsupported(
            "NOTIFYD_WEB_CANONICAL_URL names one address; with --processes each process "
            "serves its own port: leave it unset, or run one worker per host/port"
        )
    env = dict(base)
    env["NOTIFYD_WEB_PORT"] = str(settings.web_port + index)
    env["NOTIFYD_DATADIR"] = str(Path(settings.datadir) / f"process-{index}")
    env["NOTIFYD_CREDENTIAL_STORE_URL"] = settings.resolved_credential_store_url
    return env


@dataclass
class Child:
    index: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = RESTART_BASE_S
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts, restarts and stops the children (``command``: a child's argv)."""

    children: list[Child]
    command: Sequence[str] = field(default_factory=lambda: [sys.executable, "-m", "notifyd",
                                                            "worker"])
    stop_timeout_s: float = 30.0
    poll_s: float = 0.2
    clock: Callable[[], float] = time.monotonic
    _stopping: bool = False

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(list(self.command), env=child.env)
        child.started_at = self.clock()
        child.restart_at = None
        log.info("supervise.started", index=child.index, pid=child.proc.pid,
                 web_port=child.env.get("NOTIFYD_WEB_PORT"))

    def stop(self, *_: object) -> None:
        """Ask every child to stop (SIGTERM); :meth:`run` then waits for them."""
        self._stopping = True
        for c in self.children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)

    def step(self) -> None:
        """Restart what died (after its pause)."""
        now = self.clock()
        for c in self.children:
            if c.proc is None or self._stopping:
                continue
            code = c.proc.poll()
            if code is None:
                continue
            if c.restart_at is None:
                if now - c.started_at >= HEALTHY_AFTER_S:
                    c.backoff_s = RESTART_BASE_S
                c.restart_at = now + c.backoff_s
                log.error("supervise.child_exited", index=c.index, pid=c.proc.pid, code=code,
                          restart_in_s=c.backoff_s)
                c.backoff_s = min(RESTART_MAX_S, c.backoff_s * 2)
            elif now >= c.restart_at:
                self.start(c)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        for c in self.children:
            self.start(c)
        while not self._stopping and not should_stop():
            self.step()
            time.sleep(self.poll_s)  # a supervisor's poll interval, not synchronisation
        self.stop()
        return self.wait_all()

    def wait_all(self) -> int:
        deadline = self.clock() + self.stop_timeout_s
        worst = 0
        for c in self.children:
            if c.proc is None:
                continue
            try:
                code = c.proc.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.warning("supervise.kill", index=c.index, pid=c.proc.pid)
                c.proc.kill()
                code = c.proc.wait()
            worst = worst or (code if code > 0 else 0)
        return worst


def run_processes(n: int, settings: Settings) -> int:
    """Run ``n`` workers until SIGTERM/SIGINT; the exit code is the first failure's."""
    children = [Child(i, child_env(os.environ, i, settings)) for i in range(n)]
    Path(settings.datadir).mkdir(parents=True, exist_ok=True)  # the shared SQLite file's
    sup = Supervisor(children)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return sup.run()
