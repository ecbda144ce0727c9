"""Apprise: any of the services the Apprise library speaks as a user's push target.

How it fits (the channel list is fixed, see ``config.CHANNELS``): Apprise is a second
back end of the **push** channel.  A user's ``apprise_urls`` (preferences) travel
with their ``push_tokens`` in ``Delivery.tokens`` (see ``rules._address``); an entry
of the form ``scheme://...`` is an Apprise URL, anything else a device token (FCM and
APNs tokens never contain ``://``).  :class:`PushRouter`, the push channel's
provider, sends the device tokens to the push API (:class:`~.httpapi.PushProvider`)
and the URLs through :class:`AppriseProvider`, concurrently, so one notification
reaches both.  So push keeps one ledger entry, one status and the user's push
opt-outs, quiet hours and throttle apply to Apprise targets too.

Outcome of a push delivery with several targets:

* any retriable failure (a target that did not accept the message, a timeout, the
  push API's 5xx) → :class:`~notifyd.errors.RetriableDeliveryError`; a retry does
  not resend to Apprise targets that already accepted it (remembered per
  idempotency key in this process; the push API dedupes on ``Idempotency-Key``);
* every target refused permanently (invalid URL, scheme not allowed, Apprise
  disabled, push API 4xx) → :class:`~notifyd.errors.PermanentDeliveryError`;
* otherwise delivered; refused targets are listed in the receipt.

Apprise is synchronous underneath: each target runs in a thread (the provider's own
pool under the egress policy, see below; else Apprise's, ``plugin.async_notify``)
under ``apprise_timeout_s``.  Apprise reports only
success or failure, so a failed target is retried (bounded by
``NOTIFYD_RETRY_MAX_ATTEMPTS``) rather than guessed permanent.  URLs carry
credentials: only a URL's scheme and host appear in reasons and logs.
HTTP-based targets (``json://``, ``form://``, ``xml://``) get the
``Idempotency-Key`` header like every other notifyd provider call.

``NOTIFYD_APPRISE_SCHEMES`` (comma-separated) limits which Apprise services users
may name; like ``webhook_url``, an Apprise URL makes the worker call a host the user
chose, so restrict it where that matters.

Egress policy (:mod:`notifyd.egress`, ``NOTIFYD_EGRESS_ALLOW``): a URL whose host is
a denied literal address or ``localhost`` is refused before Apprise is called; then
the notify call runs in a thread of the provider's own pool under
:func:`~notifyd.egress.guard_sockets`, which checks the address of every
``socket.connect`` Apprise (``requests``, ``smtplib``, its plugins) makes in that call,
so a host name resolving to a denied address, and any redirect hop, is refused at
connect time; HTTP redirects are also switched off.  A target refused so is
``egress_denied`` (permanent).  Limits, stated honestly: connections made by threads a
plugin starts itself, or by native code not using Python's ``socket`` module, are not
seen (no bundled HTTP/e-mail plugin does either); behind an HTTP proxy (``HTTPS_PROXY``
in the worker's environment) only the proxy's address is checked, the proxy must
enforce the rest.  ``AppriseProvider`` built without ``egress`` (tests, tools) is
unrestricted; :meth:`AppriseProvider.from_settings` always sets it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from notifyd.config import Settings
from notifyd.egress import EgressDenied, EgressPolicy, guard_sockets, url_host
from notifyd.errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError
from notifyd.model.records import Delivery
from notifyd.providers.base import Provider, SendReceipt

log = structlog.stdlib.get_logger("notifyd.providers.apprise")

#: (idempotency key, URL) pairs remembered as delivered, so retries skip them.
SENT_MEMORY = 10_000
_HTTP_SCHEMES = frozenset({"json", "jsons", "form", "forms", "xml", "xmls"})
#: Threads of the guarded notify calls (a timed-out call keeps its thread until done).
_POOL_THREADS = 32


def is_apprise_url(token: str) -> bool:
    """An Apprise URL (``scheme://...``) rather than a push device token."""
    return "://" in token


def split_targets(tokens: list[str]) -> tuple[list[str], list[str]]:
    """``(device tokens, Apprise URLs)`` of a push delivery, in order, blanks dropped."""
    devices = [t for t in tokens if t and not is_apprise_url(t)]
    urls = [t for t in tokens if t and is_apprise_url(t)]
    return devices, urls


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0].strip().lower()


def _masked(url: str, plugin: Any = None) -> str:
    """``scheme://host/…`` of a URL, for reasons and logs.

    Not Apprise's privacy rendering: it masks passwords but keeps custom header values
    (``?+X-Api-Key=…``) and payload parameters, which can be secrets too.
    """
    del plugin  # kept for callers; nothing of the plugin's own rendering is shown
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    return f"{url_scheme(url)[:20]}://{host[:100]}/…" if host else f"{url_scheme(url)[:20]}://…"


def _notify_type(priority: str) -> str:
    return "warning" if priority in ("high", "critical") else "info"


@dataclasses.dataclass(slots=True)
class _Outcome:
    sent: list[str] = dataclasses.field(default_factory=list)
    retriable: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)


class AppriseProvider(Provider):
    """Sends a delivery to the Apprise URLs in its tokens (see the module doc)."""

    channel = "push"

    def __init__(
        self,
        *,
        enabled: bool = True,
        timeout_s: float = 10.0,
        schemes: frozenset[str] | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.enabled = enabled
        self.timeout_s = timeout_s
        #: Allowed Apprise schemes; None allows every service Apprise supports.
        self.schemes = schemes
        #: Where targets may connect (see the module doc); None: unrestricted.
        self.egress = egress
        self._sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AppriseProvider:
        schemes = frozenset(
            s.strip().lower() for s in settings.apprise_schemes.split(",") if s.strip()
        )
        return cls(
            enabled=settings.apprise_enabled,
            timeout_s=settings.apprise_timeout_s,
            schemes=schemes or None,
            egress=EgressPolicy.from_settings(settings),
        )

    async def start(self) -> None:
        if self.enabled:
            # Apprise loads its plugins on import (a few hundred ms): not on a first send.
            import importlib

            await asyncio.to_thread(importlib.import_module, "apprise")

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Running calls cannot be interrupted; they end under their own timeouts.
            pool.shutdown(wait=False, cancel_futures=True)

    # --- targets ----------------------------------------------------------------------

    def instantiate(self, url: str) -> Any:
        """The Apprise plugin for ``url``; PermanentDeliveryError if it can never work."""
        if not self.enabled:
            raise PermanentDeliveryError(
                "apprise_disabled: Apprise targets are turned off (NOTIFYD_APPRISE_ENABLED)"
            )
        scheme = url_scheme(url)
        if self.schemes is not None and scheme not in self.schemes:
            raise PermanentDeliveryError(
                f"invalid_address: Apprise service {scheme[:20]!r} is not allowed here"
            )
        import apprise

        try:
            plugin = apprise.Apprise.instantiate(url)
        except Exception:
            plugin = None
        if plugin is None:
            raise PermanentDeliveryError(
                f"invalid_address: {_masked(url)} is not a valid or supported Apprise URL"
            )
        if self.egress is not None:
            # A literal denied host is refused before any call; names at connect time.
            self.egress.check_host(_target_host(url, plugin), "apprise")
        return plugin

    def check(self, delivery: Delivery) -> None:
        _, urls = split_targets(delivery.tokens)
        if not urls:
            raise PermanentDeliveryError("invalid_address: no Apprise URL")
        if not (delivery.title or delivery.body):
            raise PermanentDeliveryError("empty_body: Apprise needs a title or a body")
        errors: list[PermanentDeliveryError] = []
        for url in urls:
            try:
                self.instantiate(url)
            except PermanentDeliveryError as exc:
                errors.append(exc)
        if len(errors) == len(urls):
            raise errors[0]

    # --- sending ----------------------------------------------------------------------

    def _remember(self, key: str, url: str) -> None:
        self._sent[(key, url)] = None
        self._sent.move_to_end((key, url))
        while len(self._sent) > SENT_MEMORY:
            self._sent.popitem(last=False)

    async def _send_one(self, delivery: Delivery, url: str, plugin: Any) -> bool:
        headers = getattr(plugin, "headers", None)
        if url_scheme(url) in _HTTP_SCHEMES and isinstance(headers, dict):
            headers.setdefault("Idempotency-Key", delivery.idempotency_key)
        kwargs = {
            "body": delivery.body or delivery.title,
            "title": delivery.title if delivery.body else "",
            "notify_type": _notify_type(delivery.priority),
        }
        if self.egress is not None:
            if hasattr(plugin, "redirects"):
                plugin.redirects = False  # as for webhooks: no hop to another host
            loop = asyncio.get_running_loop()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_POOL_THREADS, "notifyd-apprise")
            host = _target_host(url, plugin)
            guarded = loop.run_in_executor(
                self._pool, _notify_guarded, self.egress, host, plugin, kwargs
            )
            return await asyncio.wait_for(guarded, self.timeout_s)
        notify_async = getattr(plugin, "async_notify", None)
        call = (
            notify_async(**kwargs)
            if notify_async is not None
            else asyncio.to_thread(plugin.notify, **kwargs)
        )
        return bool(await asyncio.wait_for(call, self.timeout_s))

    async def deliver(self, delivery: Delivery, urls: list[str]) -> _Outcome:
        """Send to each URL (concurrently); never raises, sorts targets by outcome."""
        out = _Outcome()
        key = delivery.idempotency_key
        pending: list[tuple[str, Any]] = []
        for url in urls:
            if (key, url) in self._sent:
                out.sent.append(url)
                continue
            try:
                pending.append((url, self.instantiate(url)))
            except PermanentDeliveryError as exc:
                log.warning("apprise.target_refused", reason=exc.reason)
                out.refused.append(exc.reason)
        results = await asyncio.gather(
            *(self._send_one(delivery, url, plugin) for url, plugin in pending),
            return_exceptions=True,
        )
        for (url, plugin), result in zip(pending, results, strict=True):
            where = _masked(url, plugin)
            if result is True:
                self._remember(key, url)
                out.sent.append(url)
            elif isinstance(result, EgressDenied):
                log.warning("apprise.egress_denied", target=where, reason=result.reason)
                out.refused.append(result.reason)
            elif isinstance(result, TimeoutError):
                out.retriable.append(f"timeout: {where} did not answer in {self.timeout_s:g}s")
            elif isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                out.retriable.append(
                    f"apprise_error: {where}: {type(result).__name__}: {result!s:.120}"
                )
            else:
                out.retriable.append(f"apprise_failed: {where} did not accept the notification")
        return out

    async def send(self, delivery: Delivery) -> SendReceipt:
        self.check(delivery)
        _, urls = split_targets(delivery.tokens)
        out = await self.deliver(delivery, urls)
        raise_for(out)
        return SendReceipt(
            provider_id=None,
            detail={"apprise_sent": len(out.sent), "apprise_refused": out.refused},
        )


def _target_host(url: str, plugin: Any) -> str:
    host = getattr(plugin, "host", None)
    return host if isinstance(host, str) and host else (url_host(url) or "")


def _notify_guarded(
    policy: EgressPolicy, host: str, plugin: Any, kwargs: dict[str, Any]
) -> bool:
    """One Apprise call in a pool thread, every socket it connects checked by ``policy``.

    Raises the :class:`EgressDenied` that made it fail, if one did (Apprise itself only
    reports False); a call that got through on another address counts as sent.
    """
    with guard_sockets(policy, "apprise", [host] if host else []) as guard:
        try:
            ok = bool(plugin.notify(**kwargs))
        except Exception as exc:
            if guard.denials:
                raise guard.denials[0] from exc
            raise
    if not ok and guard.denials:
        raise guard.denials[0]
    return ok


def raise_for(out: _Outcome, other_sent: bool = False) -> None:
    """Raise the error an outcome stands for (see the module doc), if any."""
    if out.retriable:
        raise RetriableDeliveryError("; ".join(out.retriable)[:500])
    if out.refused and not out.sent and not other_sent:
        raise PermanentDeliveryError("; ".join(out.refused)[:500])


class PushRouter(Provider):
    """The push channel: device tokens to the push API, Apprise URLs through Apprise."""

    channel = "push"

    def __init__(self, push: Provider, apprise: AppriseProvider) -> None:
        self.push = push
        self.apprise = apprise

    @classmethod
    def from_settings(cls, settings: Settings) -> PushRouter:
        from notifyd.providers.httpapi import PushProvider

        return cls(PushProvider(settings), AppriseProvider.from_settings(settings))

    async def start(self) -> None:
        await self.push.start()
        await self.apprise.start()

    async def stop(self) -> None:
        try:
            await self.push.stop()
        finally:
            await self.apprise.stop()

    def check(self, delivery: Delivery) -> None:
        devices, urls = split_targets(delivery.tokens)
        if not devices and not urls:
            raise PermanentDeliveryError("invalid_address: no push device token or Apprise URL")
        if not (delivery.title or delivery.body):
            raise PermanentDeliveryError("empty_body: push needs a title or a body")
        if not devices:
            self.apprise.check(delivery)

    async def send(self, delivery: Delivery) -> SendReceipt:
        self.check(delivery)
        devices, urls = split_targets(delivery.tokens)
        if not urls:
            return await self.push.send(delivery)
        if not devices:
            return await self.apprise.send(delivery)
        push_result, out = await asyncio.gather(
            _attempt(self.push.send(dataclasses.replace(delivery, tokens=devices))),
            self.apprise.deliver(delivery, urls),
        )
        push_ok = isinstance(push_result, SendReceipt)
        if isinstance(push_result, DeliveryError):
            if push_result.retriable:
                out.retriable.insert(0, push_result.reason)
            else:
                out.refused.insert(0, push_result.reason)
        raise_for(out, other_sent=push_ok)
        receipt = push_result if isinstance(push_result, SendReceipt) else SendReceipt()
        detail = {**receipt.detail, "apprise_sent": len(out.sent), "apprise_refused": out.refused}
        return SendReceipt(provider_id=receipt.provider_id, detail=detail)


async def _attempt(coro: Any) -> SendReceipt | DeliveryError:
    try:
        result: SendReceipt = await coro
        return result
    except DeliveryError as exc:
        return exc
