"""What every HTTP-based provider shares: one session, one POST, one status mapping.

The mapping from an HTTP answer to a :class:`~notifyd.errors.DeliveryError` lives
only here, so the webhook, SMS and push providers cannot disagree on what to retry:

* 2xx: delivered;
* 408, 425, 429 and 5xx: retriable (429/503 pass the ``Retry-After`` hint on); 429 is a
  :class:`~notifyd.errors.RateLimitedDeliveryError`, which pauses the channel;
* any other status (other 4xx, and 3xx since redirects are not followed): permanent;
* connection errors and timeouts: retriable;
* a destination refused by the egress policy (:mod:`notifyd.egress`): permanent,
  ``egress_denied``.

A session for user-chosen destinations (webhooks) is built with an
:class:`~notifyd.egress.EgressPolicy` (:func:`egress_connector`), and their error
bodies are not put into reasons (``echo_body=False``): a reason ends up in the status
document the user reads, and the body could be an internal service's answer.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Self

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from notifyd.egress import EgressDenied, EgressPolicy, denial_in
from notifyd.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RateLimitedDeliveryError,
    RetriableDeliveryError,
)
from notifyd.providers.base import Provider

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
    status: int, headers: Mapping[str, str], text: str, what: str, *, echo_body: bool = True
) -> DeliveryError | None:
    """The delivery error an HTTP status stands for, or None for success (2xx).

    ``echo_body=False`` (user-chosen hosts): the reason carries the status only.
    """
    if 200 <= status < 300:
        return None
    snippet = " ".join(text[:_SNIPPET].split()) if echo_body else ""
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


class EgressResolver(AbstractResolver):
    """Drops the addresses ``policy`` denies from what the inner resolver found; a host
    left with none is refused (:class:`~notifyd.egress.EgressDenied`).

    It is also the connector's socket factory (:meth:`socket_factory`): aiohttp does
    not resolve a literal-IP URL, and the factory sees the address of every connection
    attempt, so nothing is connected to unchecked.  The connection uses the addresses
    checked here (aiohttp does not resolve twice), so DNS rebinding cannot slip a
    private address in between.  Addresses of allow-listed host names are remembered
    as vouched for, since the factory sees no names.
    """

    def __init__(
        self, policy: EgressPolicy, what: str, inner: AbstractResolver | None = None
    ) -> None:
        self.policy = policy
        self.what = what
        self._inner = inner
        self.vouched: set[str] = set()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:  # aiohttp's default resolver needs the running loop
            self._inner = aiohttp.resolver.DefaultResolver()
        if self.policy.host_allowed(host):
            found = await self._inner.resolve(host, port, family)
            self.vouched.update(r["host"] for r in found)
            return found
        self.policy.check_host(host, self.what)
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if self.policy.address_denial(r["host"]) is None]
        if not kept:
            labels = [self.policy.address_denial(r["host"]) for r in found]
            raise EgressDenied(self.what, next((lb for lb in labels if lb), "unresolved"))
        return kept

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if sockaddr[0] not in self.vouched:
            self.policy.check_address(str(sockaddr[0]), self.what)
        return socket.socket(family=family, type=type_, proto=proto)


def egress_connector(
    policy: EgressPolicy, what: str, resolver: AbstractResolver | None = None
) -> aiohttp.TCPConnector:
    """A connector that connects only where ``policy`` allows; ``resolver`` is the DNS
    resolver asked first (aiohttp's default if None)."""
    guard = EgressResolver(policy, what, resolver)
    return aiohttp.TCPConnector(resolver=guard, socket_factory=guard.socket_factory)


def make_session(
    timeout_s: float, egress: EgressPolicy | None = None, what: str = "destination"
) -> aiohttp.ClientSession:
    """A session with an explicit total timeout (aiohttp's default is 5 minutes); with
    ``egress``, one that connects only where the policy allows (user-chosen hosts)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        # Providers are called with explicit headers only; no cookies carried over.
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=egress_connector(egress, what) if egress is not None else None,
    )


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    what: str,
    echo_body: bool = True,
) -> dict[str, Any]:
    """POST ``body`` (JSON bytes); return the JSON object answered, or raise DeliveryError.

    ``echo_body=False`` for hosts a user chose: an error answer's body stays out of
    the reason (see the module doc).
    """
    all_headers = {"Content-Type": "application/json", **headers}
    try:
        # No redirects: a POST must not silently turn into a GET or go to another host.
        async with session.post(url, data=body, headers=all_headers, allow_redirects=False) as resp:
            raw = await _read_capped(resp)
            text = raw.decode("utf-8", "replace")
            err = error_for_status(resp.status, resp.headers, text, what, echo_body=echo_body)
            if err is not None:
                raise err
    except DeliveryError:
        raise
    except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
        raise RetriableDeliveryError(f"timeout: {what} did not answer in time") from None
    except aiohttp.ClientConnectionError as exc:
        denied = denial_in(exc)  # the egress policy refused every address
        if denied is not None:
            raise EgressDenied(denied.what, denied.label) from None
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

    def __init__(self, timeout_s: float, egress: EgressPolicy | None = None) -> None:
        self._timeout_s = timeout_s
        #: Set for providers whose destination a user chose (see notifyd.egress).
        self._egress = egress
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = make_session(self._timeout_s, self._egress, self.channel)

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
