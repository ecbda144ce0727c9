"""Apache Kafka (KRaft, combined broker+controller) from the Maven Central jars.

The jars are fetched once by Maven from ``config/kafka/pom.xml`` into the user cache;
the storage is formatted with ``kafka.tools.StorageTool format --standalone`` on first
start only, so a data directory survives restarts (ports are remembered there too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from notifyd.tools.broker.base import (
    BrokerError,
    ManagedProcess,
    cache_dir,
    free_port,
    port_is_free,
    spawn,
)

KAFKA_VERSION = "4.1.1"
REPO_ROOT = Path(__file__).resolve().parents[3]
POM = REPO_ROOT / "config" / "kafka" / "pom.xml"
PROPERTIES_TEMPLATE = REPO_ROOT / "config" / "kafka" / "server.properties"

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(quiet: bool = True) -> Path:
    """Fetch the Kafka jars (and the log4j2 binding) with Maven if not cached yet."""
    libs = libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch the Apache Kafka jars")
    if not POM.exists():
        raise BrokerError(f"{POM} not found: run from a notifyd source checkout")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn",
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BrokerError(
            f"mvn failed ({res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-2000:]}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(KAFKA_VERSION)
    return libs


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    exe = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not exe:
        raise BrokerError("Java 17+ is needed to run Apache Kafka (set JAVA_HOME or PATH)")
    return exe


@dataclass
class KafkaBroker:
    """One KRaft node on loopback; ``datadir`` keeps logs, ports and the cluster id."""

    datadir: Path
    port: int = 0
    controller_port: int = 0
    heap: str = "512m"
    log_level: str = "WARN"
    extra_properties: dict[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def _load_state(self) -> dict[str, object]:
        state_file = self.datadir / "notifyd-broker.json"
        if state_file.exists():
            return dict(json.loads(state_file.read_text()))
        return {}

    def _prepare(self) -> Path:
        self.datadir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        # Reuse the ports of an existing data dir: clients and tests may remember them.
        if not self.port:
            old = int(str(state.get("port", 0)))
            self.port = old if old and port_is_free(old) else free_port()
        if not self.controller_port:
            old = int(str(state.get("controller_port", 0)))
            self.controller_port = old if old and port_is_free(old) else free_port()
        cluster_id = str(state.get("cluster_id") or _cluster_id())
        (self.datadir / "notifyd-broker.json").write_text(
            json.dumps(
                {
                    "port": self.port,
                    "controller_port": self.controller_port,
                    "cluster_id": cluster_id,
                }
            )
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.datadir / "logs"),
        }
        props.update(_read_properties(PROPERTIES_TEMPLATE))
        props.update(self.extra_properties)
        path = self.datadir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.datadir / "log4j2.properties").write_text(_LOG4J2.format(level=self.log_level))
        if not (self.datadir / "logs" / "meta.properties").exists():
            self._format(path, cluster_id)
        return path

    def _classpath(self) -> str:
        return str(ensure_jars() / "*")

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            java(),
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.datadir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            main,
            *args,
        ]

    def _format(self, props: Path, cluster_id: str) -> None:
        cmd = self._java_cmd(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            f"--cluster-id={cluster_id}",
            "-c",
            str(props),
        )
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BrokerError(f"kafka storage format failed:\n{res.stdout}\n{res.stderr}")

    def start(self) -> None:
        props = self._prepare()
        self.process = spawn(
            self._java_cmd("kafka.Kafka", str(props)), self.datadir / "kafka.out.log"
        )

    async def wait_ready(self, timeout: float = 90.0) -> None:
        from notifyd.tools.broker.base import wait_for_metadata

        if self.process is None:
            raise BrokerError("broker not started")
        try:
            await wait_for_metadata(self.bootstrap, timeout)
        except BrokerError as exc:
            alive = self.process.alive()
            raise BrokerError(
                f"{exc} (process {'running' if alive else 'exited'})\n{self.process.log_tail()}"
            ) from None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None


def _cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without padding (22 chars).
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _read_properties(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out
