"""The processes a bench run drives: a notifyd worker, the raw aiokafka floor, the Quix peer."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from notifyd.tools.worker_process import WorkerSubprocess

#: ``--worker-patch`` experiments: code run in the worker process before notifyd starts.
WORKER_PATCHES: dict[str, str] = {
    # The event loop: uvloop instead of asyncio's default loop.
    "uvloop": "import asyncio, uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())",
    # Faust hard-codes fetch_max_wait_ms=1500 for its aiokafka consumer (faust
    # transport/drivers/aiokafka.py); try 10 ms.
    "fetch-wait-10ms": (
        "import aiokafka\n"
        "_init = aiokafka.AIOKafkaConsumer.__init__\n"
        "def _patched(self, *a, **kw):\n"
        "    if kw.get('fetch_max_wait_ms') == 1500:\n"
        "        kw['fetch_max_wait_ms'] = 10\n"
        "    _init(self, *a, **kw)\n"
        "aiokafka.AIOKafkaConsumer.__init__ = _patched"
    ),
    # Let the broker hold each fetch up to 5 ms to gather records (fetch_min_bytes 1 MB):
    # fewer fetch round trips at low rates, at up to 5 ms more latency per hop.
    "fetch-batch-5ms": (
        "import aiokafka\n"
        "_init = aiokafka.AIOKafkaConsumer.__init__\n"
        "def _patched(self, *a, **kw):\n"
        "    if kw.get('fetch_max_wait_ms') == 1500:\n"
        "        kw['fetch_max_wait_ms'] = 5\n"
        "        kw['fetch_min_bytes'] = 1 << 20\n"
        "    _init(self, *a, **kw)\n"
        "aiokafka.AIOKafkaConsumer.__init__ = _patched"
    ),
    # notifyd.stream.app sets producer_linger=0.001 (1 ms); try 5 ms: fewer, larger requests.
    "linger-5ms": (
        "import notifyd.stream.app as _app\n"
        "_conf = _app.faust_settings\n"
        "_app.faust_settings = lambda s: {**_conf(s), 'producer_linger': 0.005}"
    ),
}


@dataclass(kw_only=True)
class WorkerProc(WorkerSubprocess):
    """``python -m notifyd worker`` in a subprocess, optionally under pyinstrument or
    with ``--worker-patch`` experiments (readiness, logs, stop: :class:`WorkerSubprocess`)."""

    env: dict[str, str]
    profile_out: Path | None = None
    patches: tuple[str, ...] = ()
    #: ``notifyd worker --processes``: the worker's web port is its first process's.
    processes: int = 1

    probe_timeout_s: ClassVar[float] = 3.0

    def command(self) -> list[str]:
        if self.patches:
            # Experiments on the unmodified worker: patches applied before it starts.
            code = "\n".join(WORKER_PATCHES[p] for p in self.patches)
            argv = ["worker", "--processes", str(self.processes)]
            target = ["-c", code + f"\nfrom notifyd.cli.commands import main\nmain({argv!r})\n"]
        else:
            target = ["-m", "notifyd", "worker", "--processes", str(self.processes)]
        if self.profile_out is not None:
            # pyinstrument writes its session when the worker exits (SIGTERM: clean stop).
            return [
                sys.executable,
                "-m",
                "pyinstrument",
                "--interval",
                "0.001",
                "-r",
                "session",
                "-o",
                str(self.profile_out),
                *target,
            ]
        return [sys.executable, *target]

    def start(self) -> WorkerProc:
        self.launch(self.env)
        return self


@dataclass
class ModuleProc:
    """``python -m <module> <args>`` in a session of its own (a signal to the bench's
    terminal does not reach it), output to ``log_path``: the floor, the Quix peer."""

    module: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def start(self) -> ModuleProc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class FloorProc(ModuleProc):
    """The raw aiokafka floor (:mod:`notifyd.tools.bench.floor`)."""

    def __init__(self, bootstrap: str, src: str, dst: str, group: str, log_path: Path) -> None:
        super().__init__(
            "notifyd.tools.bench.floor",
            ["--bootstrap", bootstrap, "--src", src, "--dst", dst, "--group", group],
            log_path,
        )
