"""Session-wide real services: Apache Kafka (KRaft), Tansu, the sinks, notifyd workers.

Every service is started here, on free loopback ports, and stopped at the end.
Each group of tests gets its own app id and topic prefix, so workers with
different settings never see each other's events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifyd.stream.topology import TopicNames
from notifyd.tools.broker.kafka import KafkaBroker
from notifyd.tools.broker.tansu import TansuBroker
from notifyd.tools.worker_process import ready_state
from tests.support.harness import Sinks, Stack, WorkerProcess, mint_user_token
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    if os.environ.get("NOTIFYD_TEST_BROKER_URL"):
        pytest.skip("external broker given; KafkaBroker fixture not used")
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        asyncio.run(broker.wait_ready(120))
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sinks]:
    s = Sinks(ledger_path=tmp_path_factory.mktemp("sinks") / "receipts.jsonl")
    yield s
    s.close()


def start_stack(
    broker_url: str,
    bootstrap: str,
    root: Path,
    name: str,
    sinks: Sinks,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    redis_url: str | None = None,
) -> Stack:
    """Start ``workers`` notifyd workers sharing an app id, topic prefix and credential
    store (Redis if given, else SQLite in the first worker's data dir)."""
    names = TopicNames(f"it-{name}")
    store_url = redis_url or f"sqlite:///{root / 'credentials.db'}"
    # In a thread: start_stack may be called from inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        token = pool.submit(
            asyncio.run, mint_user_token(store_url, f"op-{name}", ("user", "operator"))
        ).result()
    procs = [
        WorkerProcess(
            broker_url=broker_url,
            datadir=root / f"worker{i}",
            app_id=f"notifyd-it-{name}",
            topic_prefix=names.prefix,
            extra_env={
                **sinks.env(),
                "NOTIFYD_CREDENTIAL_STORE_URL": store_url,
                **(extra_env or {}),
            },
            operator_token=token,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start(wait=False)
    for p in procs:
        p.wait_ready()
    if workers > 1:
        _wait_balanced(procs)
    return Stack(bootstrap=bootstrap, names=names, workers=procs, sinks=sinks, operator_token=token)


def _wait_balanced(procs: list[WorkerProcess], timeout: float = 120) -> None:
    """Wait until the group settled: every partition owned by exactly one ready worker,
    and every worker owns some."""
    deadline = time.monotonic() + timeout
    seen: list[list[int] | None] = []
    while time.monotonic() < deadline:
        # ready_state: None while a worker is not ready or answers late (a worker
        # recovering tables on a loaded machine may answer a probe after 2 s)
        seen = [(st or {}).get("partitions") for st in (ready_state(p.url, 2) for p in procs)]
        owned = [parts for parts in seen if parts]
        if len(owned) == len(procs) and sorted(x for parts in owned for x in parts) == list(
            range(4)
        ):
            return
        time.sleep(0.5)
    raise TimeoutError(f"workers did not settle on a partition assignment: {seen}")


@pytest.fixture(scope="session")
def stack(
    kafka: KafkaBroker, sinks: Sinks, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One worker on Apache Kafka + Redis, with a small throttle (4/hour) to test it quickly."""
    st = start_stack(
        kafka.url,
        kafka.bootstrap,
        tmp_path_factory.mktemp("main"),
        "main",
        sinks,
        {"NOTIFYD_THROTTLE_LIMIT": "4", "NOTIFYD_THROTTLE_WINDOW_S": "3600"},
        redis_url=redis.url,
    )
    yield st
    for w in st.workers:
        w.stop()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(tmp_path_factory.mktemp("tansu"))
    broker.start()
    try:
        asyncio.run(broker.wait_ready(30))
        yield broker
    finally:
        broker.stop()
