"""A throwaway real ``redis-server`` for tests: free port, temp dir, no persistence."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from notifyd.tools.broker.base import free_port


def _pings(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """Start with :meth:`start` (or ``with RedisServer() as srv``), connect to :attr:`url`.

    Synchronous on purpose so it works as a plain (module/session scoped) pytest fixture.
    ``start()`` after ``stop()`` starts a fresh, empty server on a new port.
    """

    def __init__(
        self,
        *,
        executable: str = "redis-server",
        host: str = "127.0.0.1",
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.executable = shutil.which(executable) or executable
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if self._proc is None:
            raise RuntimeError("redis server is not running")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self._proc is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="notifyd-redis-"))
        self._log = (self._dir / "redis.log").open("wb")
        # The free port can be taken between probe and bind: retry a few times.
        for _ in range(3):
            self.port = free_port(self.host)
            self._proc = subprocess.Popen(
                [
                    self.executable,
                    "--port", str(self.port),
                    "--bind", self.host,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self._dir),
                    "--protected-mode", "no",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
            )
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _pings(self.host, self.port):
                    return self
                time.sleep(0.02)
            self._kill()
        log = (self._dir / "redis.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"redis-server did not start:\n{log}")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self) -> None:
        self._kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
