"""What every HTTP-based provider shares: one session, one POST, one status mapping.

The mapping from an HTTP answer to a :class:`~notifyd.errors.DeliveryError` lives
only here, so the webhook, SMS and push providers cannot disagree on what to retry:

* 2xx: delivered;
* 408, 425, 429 and 5xx: retriable (429/503 pass the ``Retry-After`` hint on); 429 is a
  :class:`~notifyd.errors.RateLimitedDeliveryError`, which pauses the channel;
* any other status (other 4xx, and 3xx since redirects are not followed): permanent;
* connection errors and timeouts: retriable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Self

import aiohttp
import orjson

from ..errors import (
    DeliveryError,
    PermanentDeliveryError,
    RateLimitedDeliveryError,
    RetriableDeliveryError,
)
from .base import Provider

RETRIABLE_STATUSES = frozenset({408, 425, 429})
_SNIPPET = 200  # characters of an error body kept in the reason
_MAX_BODY = 1024 * 1024  # never buffer more than this from a provider answer


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def error_for_status(
    status: int, headers: Mapping[str, str], text: str, what: str
) -> DeliveryError | None:
    """The delivery error an HTTP status stands for, or None for success (2xx)."""
    if 200 <= status < 300:
        return None
    snippet = " ".join(text[:_SNIPPET].split())
    reason = f"http_{status}: {what} answered {status}" + (f": {snippet}" if snippet else "")
    if status >= 500 or status in RETRIABLE_STATUSES:
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(headers.get("Retry-After"))
        if status == 429:
            return RateLimitedDeliveryError(reason, retry_after=retry_after)
        return RetriableDeliveryError(reason, retry_after=retry_after)
    return PermanentDeliveryError(reason)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    # A misbehaving endpoint must not make us buffer an unbounded answer.
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > _MAX_BODY:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def make_session(timeout_s: float) -> aiohttp.ClientSession:
    """A session with an explicit total timeout (aiohttp's default is 5 minutes)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        # Providers are called with explicit headers only; no cookies carried over.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    what: str,
) -> dict[str, Any]:
    """POST ``body`` (JSON bytes); return the JSON object answered, or raise DeliveryError."""
    all_headers = {"Content-Type": "application/json", **headers}
    try:
        # No redirects: a POST must not silently turn into a GET or go to another host.
        async with session.post(url, data=body, headers=all_headers, allow_redirects=False) as resp:
            raw = await _read_capped(resp)
            text = raw.decode("utf-8", "replace")
            err = error_for_status(resp.status, resp.headers, text, what)
            if err is not None:
                raise err
    except DeliveryError:
        raise
    except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
        raise RetriableDeliveryError(f"timeout: {what} did not answer in time") from None
    except aiohttp.ClientConnectionError as exc:
        # Covers refused/reset connections, DNS failures and server disconnects.
        raise RetriableDeliveryError(f"connection_error: {what}: {exc!s:.200}") from None
    except aiohttp.ClientPayloadError as exc:
        raise RetriableDeliveryError(f"connection_error: {what}: {exc!s:.200}") from None
    except (aiohttp.InvalidURL, ValueError) as exc:
        raise PermanentDeliveryError(f"invalid_address: {what}: {exc!s:.200}") from None
    except aiohttp.ClientError as exc:
        raise RetriableDeliveryError(f"http_error: {what}: {exc!s:.200}") from None
    if not raw:
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}  # a 2xx with a non-JSON body still means delivered
    return parsed if isinstance(parsed, dict) else {}


class HttpProvider(Provider):
    """Base of the HTTP providers: one long-lived session from start() to stop()."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = make_session(self._timeout_s)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{type(self).__name__} is not started; await start() first")
        return self._session

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
