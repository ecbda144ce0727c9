"""The credential store contract, run against both real backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aredis

from notifyd.errors import ServiceUnavailable
from notifyd.store import CredentialStore, RedisStore, SqliteStore, StoreUnavailable, open_store
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[CredentialStore]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path}/creds.db")
        assert isinstance(s, SqliteStore)
    else:
        raw = aredis.Redis.from_url(redis_server.url)
        await raw.flushdb()
        await raw.aclose()
        s = await open_store(redis_server.url)
        assert isinstance(s, RedisStore)
    try:
        yield s
    finally:
        await s.close()


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


async def test_ttl_expiry(store: CredentialStore) -> None:
    await store.set("short", b"x", ttl_s=1)
    await store.set("long", b"y", ttl_s=60)
    ttl = await store.ttl("long")
    assert ttl is not None and 55 <= ttl <= 60
    await asyncio.sleep(1.2)
    assert await store.get("short") is None
    assert await store.ttl("short") is None
    assert await store.delete("short") is False
    assert await store.get("long") == b"y"


async def test_set_without_ttl_clears_expiry(store: CredentialStore) -> None:
    await store.set("k", b"a", ttl_s=1)
    await store.set("k", b"b")
    await asyncio.sleep(1.2)
    assert await store.get("k") == b"b"


async def test_set_if_absent(store: CredentialStore) -> None:
    assert await store.set_if_absent("user:alice", b"first") is True
    assert await store.set_if_absent("user:alice", b"second") is False
    assert await store.get("user:alice") == b"first"
    # An expired value counts as absent.
    assert await store.set_if_absent("tmp", b"old", ttl_s=1) is True
    await asyncio.sleep(1.2)
    assert await store.set_if_absent("tmp", b"new", ttl_s=60) is True
    assert await store.get("tmp") == b"new"


async def test_set_if_absent_is_atomic_under_concurrency(store: CredentialStore) -> None:
    results = await asyncio.gather(
        *(store.set_if_absent("race", str(i).encode()) for i in range(25))
    )
    assert results.count(True) == 1


async def test_incr(store: CredentialStore) -> None:
    assert await store.incr("fails", ttl_s=1) == 1
    assert await store.incr("fails", ttl_s=1) == 2
    assert await store.get("fails") == b"2"
    ttl = await store.ttl("fails")
    assert ttl is not None and ttl <= 1
    await asyncio.sleep(1.2)
    # Window over: the counter restarts (with a fresh TTL).
    assert await store.incr("fails", ttl_s=60) == 1
    ttl = await store.ttl("fails")
    assert ttl is not None and ttl > 1


async def test_incr_keeps_first_ttl(store: CredentialStore) -> None:
    await store.incr("c", ttl_s=1)
    await store.incr("c", ttl_s=60)  # must not extend the window
    await asyncio.sleep(1.2)
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
    store = await SqliteStore.open(tmp_path / "c.db", purge_interval_s=0.01)
    await store.set("a", b"1", ttl_s=1)
    await asyncio.sleep(0.05)
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
