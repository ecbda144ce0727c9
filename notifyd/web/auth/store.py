"""The credential store: users, sessions, refresh tokens, revoked jti, login counters.

One small async key/value interface (:class:`CredentialStore`) with two real backends:
Redis (shared by every worker) and SQLite (single host, zero setup).  Values are bytes;
every key may carry a TTL.  Any backend failure surfaces as :class:`StoreUnavailable`,
a :class:`~notifyd.errors.ServiceUnavailable`, so the web layer answers 503 instead of
500 and never leaks driver details.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiosqlite
import redis.asyncio as aredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifyd.errors import ServiceUnavailable

if TYPE_CHECKING:
    from notifyd.config import Settings

log = structlog.get_logger(__name__)


class StoreUnavailable(ServiceUnavailable):
    """The credential store could not be reached or failed; answered as 503."""

    code = "credential_store_unavailable"

    def __init__(self, detail: str = "credential store unavailable") -> None:
        super().__init__(detail)


class CredentialStore(ABC):
    """Async bytes key/value store with per-key TTL (seconds)."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        """Store ``value``; ``ttl_s=None`` means no expiry (and clears an existing one)."""

    @abstractmethod
    async def set_if_absent(self, key: str, value: bytes, ttl_s: int | None = None) -> bool:
        """Atomically store ``value`` only if ``key`` is missing/expired; True if stored."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a live value was removed.

        Only one of several concurrent callers gets True, which makes get-then-delete a
        safe "consume once" (OIDC state, refresh-token rotation).
        """

    @abstractmethod
    async def incr(self, key: str, ttl_s: int) -> int:
        """Atomically add 1 and return the new value; the first increment sets the TTL."""

    @abstractmethod
    async def ttl(self, key: str) -> int | None:
        """Seconds until ``key`` expires (rounded up); None if missing or without expiry."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks; idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _check_ttl(ttl_s: int | None) -> None:
    # A zero/negative TTL would mean "delete" in Redis and "already expired" in SQLite:
    # always a caller bug, so fail loudly instead of silently diverging.
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")


# --- Redis ----------------------------------------------------------------------------


class RedisStore(CredentialStore):
    """Backend on a Redis server (``redis://``, ``rediss://``, ``unix://`` URLs)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        client: aredis.Redis | None = None,
    ) -> None:
        # Bounded timeouts and few, fast retries: a dead store must turn into a 503
        # within seconds, not hang requests (redis-py's default socket timeout is None).
        self._redis: aredis.Redis = client or aredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        )
        self._closed = False

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        if self._closed:
            raise StoreUnavailable("credential store is closed")
        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("credential_store_error", backend="redis", op=op, error=repr(exc))
            raise StoreUnavailable() from exc

    async def get(self, key: str) -> bytes | None:
        with self._guard("get"):
            value = await self._redis.get(key)
        # decode_responses is off, so this is bytes; the str branch only satisfies typing.
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        _check_ttl(ttl_s)
        with self._guard("set"):
            await self._redis.set(key, value, ex=ttl_s)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: int | None = None) -> bool:
        _check_ttl(ttl_s)
        with self._guard("set_if_absent"):
            return bool(await self._redis.set(key, value, ex=ttl_s, nx=True))

    async def delete(self, key: str) -> bool:
        with self._guard("delete"):
            return int(await self._redis.delete(key)) > 0

    async def incr(self, key: str, ttl_s: int) -> int:
        _check_ttl(ttl_s)
        with self._guard("incr"):
            # MULTI: create the counter with its TTL only if absent, then INCR (which keeps
            # the TTL) -- atomic and works on Redis < 7 (no EXPIRE NX needed).
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, 0, ex=ttl_s, nx=True)
                pipe.incr(key)
                results: list[Any] = await pipe.execute()
        return int(results[1])

    async def ttl(self, key: str) -> int | None:
        with self._guard("ttl"):
            remaining = int(await self._redis.ttl(key))
        return remaining if remaining >= 0 else None

    async def ping(self) -> None:
        with self._guard("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()


# --- SQLite ---------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
"""

# Each operation is ONE statement on one connection in autocommit mode, so it is atomic
# without an asyncio lock even when coroutines interleave.
_SQL_GET = "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
_SQL_SET = "INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)"
_SQL_SET_NX = """
INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
    WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?
RETURNING 1
"""
# Liveness is checked in Python: some SQLite versions (3.40) evaluate expressions in a
# DELETE ... RETURNING wrongly on WITHOUT ROWID tables; plain columns are reliable.
_SQL_DELETE = "DELETE FROM kv WHERE key = ? RETURNING expires_at"
# Counters are stored as decimal text bytes (like Redis), so get() returns b"3" on both.
_SQL_INCR = """
INSERT INTO kv (key, value, expires_at) VALUES (?, CAST('1' AS BLOB), ?)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= ?
                 THEN CAST('1' AS BLOB)
                 ELSE CAST(CAST(kv.value AS INTEGER) + 1 AS BLOB) END,
    expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= ?
                      THEN excluded.expires_at
                      ELSE kv.expires_at END
RETURNING CAST(value AS INTEGER)
"""
_SQL_TTL = "SELECT expires_at FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
_SQL_PURGE = "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?"


class SqliteStore(CredentialStore):
    """Backend on one SQLite file (WAL); expiry checked on read plus a periodic purge.

    Create with :meth:`open`.  Meant for a single host: several worker processes may
    share the file (WAL + busy timeout), but Redis is the choice for a cluster.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        purge_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._purge_interval_s = purge_interval_s
        self._closed = False
        self._purge_task: asyncio.Task[None] | None = None
        if purge_interval_s > 0:
            self._purge_task = asyncio.get_running_loop().create_task(
                self._purge_loop(), name="notifyd-credential-store-purge"
            )

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        purge_interval_s: float = 60.0,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            log.warning("credential_store_error", backend="sqlite", op="open", error=repr(exc))
            raise StoreUnavailable() from exc
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            await conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            await conn.close()
            log.warning("credential_store_error", backend="sqlite", op="open", error=repr(exc))
            raise StoreUnavailable() from exc
        return cls(conn, purge_interval_s=purge_interval_s, clock=clock)

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        if self._closed:
            raise StoreUnavailable("credential store is closed")
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            log.warning("credential_store_error", backend="sqlite", op=op, error=repr(exc))
            raise StoreUnavailable() from exc

    def _expiry(self, ttl_s: int | None) -> float | None:
        _check_ttl(ttl_s)
        return None if ttl_s is None else self._clock() + ttl_s

    async def get(self, key: str) -> bytes | None:
        with self._guard("get"):
            rows = list(await self._conn.execute_fetchall(_SQL_GET, (key, self._clock())))
        return bytes(rows[0][0]) if rows else None

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        expires_at = self._expiry(ttl_s)
        with self._guard("set"):
            await self._conn.execute(_SQL_SET, (key, bytes(value), expires_at))

    async def set_if_absent(self, key: str, value: bytes, ttl_s: int | None = None) -> bool:
        expires_at = self._expiry(ttl_s)
        with self._guard("set_if_absent"):
            rows = await self._conn.execute_fetchall(
                _SQL_SET_NX, (key, bytes(value), expires_at, self._clock())
            )
        return len(list(rows)) > 0

    async def delete(self, key: str) -> bool:
        now = self._clock()
        with self._guard("delete"):
            rows = list(await self._conn.execute_fetchall(_SQL_DELETE, (key,)))
        return bool(rows) and (rows[0][0] is None or float(rows[0][0]) > now)

    async def incr(self, key: str, ttl_s: int) -> int:
        expires_at = self._expiry(ttl_s)
        now = self._clock()
        with self._guard("incr"):
            rows = list(await self._conn.execute_fetchall(_SQL_INCR, (key, expires_at, now, now)))
        return int(rows[0][0])

    async def ttl(self, key: str) -> int | None:
        now = self._clock()
        with self._guard("ttl"):
            rows = list(await self._conn.execute_fetchall(_SQL_TTL, (key, now)))
        if not rows or rows[0][0] is None:
            return None
        return max(1, math.ceil(float(rows[0][0]) - now))

    async def ping(self) -> None:
        with self._guard("ping"):
            await self._conn.execute_fetchall("SELECT 1")

    async def purge_expired(self) -> int:
        """Delete expired rows now; returns how many.  Reads never see them anyway."""
        with self._guard("purge"):
            cursor = await self._conn.execute(_SQL_PURGE, (self._clock(),))
            count = cursor.rowcount
            await cursor.close()
        return max(count, 0)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self._purge_interval_s)
            try:
                purged = await self.purge_expired()
            except StoreUnavailable:
                continue  # already logged; try again next round
            if purged:
                log.debug("credential_store_purged", count=purged)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._conn.close()


# --- factory --------------------------------------------------------------------------


def _sqlite_path(url: str) -> str:
    # SQLAlchemy convention: sqlite:///relative/path, sqlite:////absolute/path,
    # which is exactly what Settings.resolved_credential_store_url produces.
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"sqlite URL must look like sqlite:///path, got {url!r}")
    return rest[1:]


async def open_store(url: str, **kwargs: Any) -> CredentialStore:
    """Open the store named by ``url`` (``redis://``, ``rediss://``, ``unix://``, ``sqlite:///``).

    Redis connects lazily (the first operation, or :meth:`CredentialStore.ping`, reveals
    an unreachable server); SQLite opens the file now.  ``kwargs`` go to the backend.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, **kwargs)
    if scheme == "sqlite":
        return await SqliteStore.open(_sqlite_path(url), **kwargs)
    raise ValueError(f"unsupported credential store URL scheme {scheme or url!r}")


async def resolve_jwt_secret(settings: Settings, store: CredentialStore) -> str:
    """The configured secret, else one shared through the credential store.

    Every worker of a deployment (and the CLI minting tokens for it) must sign with the
    same key; with Redis the first one creates it and the others read it, with SQLite
    (single worker) it persists in the data dir.
    """
    configured = settings.jwt_secret.get_secret_value()
    if configured:
        return configured
    await store.set_if_absent("config:jwt_secret", secrets.token_urlsafe(48).encode())
    value = await store.get("config:jwt_secret")
    if value is None:  # pragma: no cover - just written
        raise RuntimeError("could not read the generated JWT secret")
    return value.decode()


async def read_jwt_secret(settings: Settings) -> str:
    """The shared JWT secret through a store opened for the purpose (the e-mail provider
    has none at hand): :func:`notifyd.domain.unsubscribe.share_secret_from`."""
    store = await open_store(settings.resolved_credential_store_url)
    try:
        return await resolve_jwt_secret(settings, store)
    finally:
        await store.close()
