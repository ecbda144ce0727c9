"""A notifyd worker in a child process: what ``notifyd bench`` and the integration
tests share.

The worker (``python -m notifyd worker`` unless :meth:`WorkerSubprocess.command` says
otherwise) runs in a session of its own with stdout and stderr appended to
``<datadir>/worker.log``; it is ready when ``GET /readyz`` on its web port answers 200
with ``"ready": true``; it is stopped with SIGTERM, then SIGKILL if it does not exit.
What a caller adds (its environment, profiling, topic names, ...) stays in a subclass.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from notifyd.tools.broker.base import ManagedProcess, spawn

# No proxy for the worker's local web port, whatever http_proxy says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ready_state(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """``{url}/readyz``'s answer while it is 200 with ``"ready": true`` (the partitions the
    worker holds among it); None otherwise, on any error or no answer within ``timeout``."""
    try:
        with _opener.open(f"{url}/readyz", timeout=timeout) as resp:
            body = json.loads(resp.read() or b"null")
            ready = resp.status == 200 and isinstance(body, dict) and bool(body.get("ready"))
            return body if ready else None
    except (OSError, ValueError, http.client.HTTPException):  # URLError, HTTPError: OSError
        return None


def readyz(url: str, timeout: float = 2.0) -> bool:
    """Whether ``{url}/readyz`` answers 200 with ``"ready": true``; False on any error."""
    return ready_state(url, timeout) is not None


@dataclass(kw_only=True)
class WorkerSubprocess:
    """One worker process; :meth:`launch` it with an environment, then wait for it."""

    datadir: Path
    web_port: int = 0
    process: ManagedProcess | None = field(default=None, repr=False)
    #: ``time.monotonic()`` at the last :meth:`launch`
    started_at: float = 0.0

    #: lines of the log quoted when the worker exits or is not ready in time
    log_tail_lines: ClassVar[int] = 40
    #: timeout of one ``/readyz`` request
    probe_timeout_s: ClassVar[float] = 2.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def log_path(self) -> Path:
        return self.datadir / "worker.log"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "notifyd", "worker"]

    def launch(self, env: dict[str, str]) -> None:
        """Start the worker (again, after a stop: the log is appended to)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(self.command(), self.log_path, env)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def wait_ready(self, timeout: float = 90.0, interval: float = 0.3) -> float:
        """Block until the worker is ready; seconds from its launch to then.

        RuntimeError if it exits first, TimeoutError if it is not ready in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._probe():
                return time.monotonic() - self.started_at
            time.sleep(interval)
        raise self._not_ready(timeout)

    async def wait_ready_async(self, timeout: float = 180.0, interval: float = 0.1) -> float:
        """:meth:`wait_ready` for a caller on an event loop (the probe runs in a thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._probe):
                return time.monotonic() - self.started_at
            await asyncio.sleep(interval)
        raise self._not_ready(timeout)

    def _probe(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"worker exited:\n{self.log_tail()}")
        return readyz(self.url, self.probe_timeout_s)

    def _not_ready(self, timeout: float) -> TimeoutError:
        return TimeoutError(f"worker not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int | None = None) -> str:
        """The last ``n`` lines of the log ("" before the first launch)."""
        if self.process is None:
            return ""
        return self.process.log_tail(n or self.log_tail_lines)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if not running."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown."""
        if self.process is not None:
            self.process.kill()
