"""The credential store contract, run against both real backends."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aredis

from notifyd.errors import ServiceUnavailable
from notifyd.web.auth.store import (
    CredentialStore,
    RedisStore,
    SqliteStore,
    StoreUnavailable,
    open_store,
)
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@dataclass
class Backend:
    """A store and a way to let ``seconds`` pass for its TTLs."""

    store: CredentialStore
    elapse: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["sqlite", "redis"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        # SQLite checks expiry against the store's clock: a fake one moves at will.
        now = [1_000_000.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        s = await open_store(f"sqlite:///{tmp_path}/creds.db", clock=lambda: now[0])
        assert isinstance(s, SqliteStore)
        try:
            yield Backend(s, advance)
        finally:
            await s.close()
        return
    raw = aredis.Redis.from_url(redis_server.url)
    await raw.flushdb()

    async def wait_out(seconds: float) -> None:
        # Redis keeps TTLs on the server's clock.  A witness key set now for ``seconds``
        # is gone once that much time has passed there, and so is every key whose TTL,
        # set earlier, was no longer.
        witness = f"witness:{uuid.uuid4().hex}"
        await raw.set(witness, b"1", px=int(seconds * 1000))
        deadline = time.monotonic() + seconds + 10
        while await raw.exists(witness):
            assert time.monotonic() < deadline, "Redis did not expire the witness key"
            await asyncio.sleep(0.02)

    s = await open_store(redis_server.url)
    assert isinstance(s, RedisStore)
    try:
        yield Backend(s, wait_out)
    finally:
        await s.close()
        await raw.aclose()


@pytest.fixture
def store(backend: Backend) -> CredentialStore:
    return backend.store


async def test_get_set_delete(store: CredentialStore) -> None:
    assert await store.get("k") is None
    await store.set("k", b"\x00binary\xff")
    assert await store.get("k") == b"\x00binary\xff"
    assert await store.ttl("k") is None
    await store.set("k", b"v2")
    assert await store.get("k") == b"v2"
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None
    await store.ping()


async def test_ttl_expiry(store: CredentialStore, backend: Backend) -> None:
    await store.set("short", b"x", ttl_s=1)
    await store.set("long", b"y", ttl_s=60)
    ttl = await store.ttl("long")
    assert ttl is not None and 55 <= ttl <= 60
    await backend.elapse(1.2)
    assert await store.get("short") is None
    assert await store.ttl("short") is None
    assert await store.delete("short") is False
    assert await store.get("long") == b"y"


async def test_set_without_ttl_clears_expiry(store: CredentialStore, backend: Backend) -> None:
    await store.set("k", b"a", ttl_s=1)
    await store.set("k", b"b")
    await backend.elapse(1.2)
    assert await store.get("k") == b"b"


async def test_set_if_absent(store: CredentialStore, backend: Backend) -> None:
    assert await store.set_if_absent("user:alice", b"first") is True
    assert await store.set_if_absent("user:alice", b"second") is False
    assert await store.get("user:alice") == b"first"
    # An expired value counts as absent.
    assert await store.set_if_absent("tmp", b"old", ttl_s=1) is True
    await backend.elapse(1.2)
    assert await store.set_if_absent("tmp", b"new", ttl_s=60) is True
    assert await store.get("tmp") == b"new"


async def test_set_if_absent_is_atomic_under_concurrency(store: CredentialStore) -> None:
    results = await asyncio.gather(
        *(store.set_if_absent("race", str(i).encode()) for i in range(25))
    )
    assert results.count(True) == 1


async def test_incr(store: CredentialStore, backend: Backend) -> None:
    assert await store.incr("fails", ttl_s=1) == 1
    assert await store.incr("fails", ttl_s=1) == 2
    assert await store.get("fails") == b"2"
    ttl = await store.ttl("fails")
    assert ttl is not None and ttl <= 1
    await backend.elapse(1.2)
    # Window over: the counter restarts (with a fresh TTL).
    assert await store.incr("fails", ttl_s=60) == 1
    ttl = await store.ttl("fails")
    assert ttl is not None and ttl > 1


async def test_incr_keeps_first_ttl(store: CredentialStore, backend: Backend) -> None:
    await store.incr("c", ttl_s=1)
    await store.incr("c", ttl_s=60)  # must not extend the window
    await backend.elapse(1.2)
    assert await store.get("c") is None


async def test_incr_is_atomic_under_concurrency(store: CredentialStore) -> None:
    values = await asyncio.gather(*(store.incr("n", ttl_s=60) for _ in range(50)))
    assert sorted(values) == list(range(1, 51))


async def test_rejects_non_positive_ttl(store: CredentialStore) -> None:
    with pytest.raises(ValueError):
        await store.set("k", b"v", ttl_s=0)


async def test_closed_store_is_unavailable(store: CredentialStore) -> None:
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.get("k")


async def test_sqlite_purge_with_fake_clock(tmp_path: Path) -> None:
    now = [1000.0]
    store = await SqliteStore.open(tmp_path / "c.db", purge_interval_s=0, clock=lambda: now[0])
    try:
        await store.set("a", b"1", ttl_s=10)
        await store.set("b", b"2")
        now[0] += 11
        assert await store.get("a") is None  # expiry checked on read
        assert await store.purge_expired() == 1
        assert await store.purge_expired() == 0
        assert await store.get("b") == b"2"
    finally:
        await store.close()


async def test_sqlite_background_purge_task_is_cleaned_up(tmp_path: Path) -> None:
    now = [1000.0]
    store = await SqliteStore.open(tmp_path / "c.db", purge_interval_s=0.01, clock=lambda: now[0])
    await store.set("a", b"1", ttl_s=1)
    await store.set("b", b"2")
    now[0] += 2

    def rows() -> list[str]:
        with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as conn:
            return sorted(k for (k,) in conn.execute("SELECT key FROM kv"))

    try:
        # The background task purges the expired row by itself.
        deadline = time.monotonic() + 10
        while rows() != ["b"]:
            assert time.monotonic() < deadline, f"expired row not purged: {rows()}"
            await asyncio.sleep(0.01)
    finally:
        await store.close()
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("notifyd-credential")]
    assert leftover == []


async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/dir/creds.db"  # parent dirs are created
    async with await open_store(url) as s1:
        await s1.set("k", b"v")
    async with await open_store(url) as s2:
        assert await s2.get("k") == b"v"


async def test_redis_unavailable_when_server_stops() -> None:
    server = RedisServer().start()
    try:
        store = await open_store(server.url, timeout_s=1.0, retries=1)
        try:
            await store.set("k", b"v")
            await store.ping()
            server.stop()
            with pytest.raises(StoreUnavailable) as info:
                await store.get("k")
            assert isinstance(info.value, ServiceUnavailable)
            assert info.value.status == 503
            assert info.value.code == "credential_store_unavailable"
            with pytest.raises(StoreUnavailable):
                await store.incr("c", ttl_s=10)
            with pytest.raises(StoreUnavailable):
                await store.ping()
        finally:
            await store.close()
    finally:
        server.stop()


async def test_redis_unreachable_from_the_start() -> None:
    server = RedisServer().start()
    url = server.url
    server.stop()  # nothing listens on that port now
    async with await open_store(url, timeout_s=1.0, retries=0) as store:
        with pytest.raises(StoreUnavailable):
            await store.ping()


async def test_open_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError):
        await open_store("memcached://localhost")
    with pytest.raises(ValueError):
        await open_store("sqlite://relative-without-slash")
