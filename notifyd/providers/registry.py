"""Builds the provider of each channel from settings.

Each channel agent owns its provider: started before its stream, stopped after.  A
channel's providers are configured as an ordered list (:mod:`.spec`); several are
wrapped in a failover chain (:mod:`.chain`).  The in-app channel has no configurable
provider: its inbox is a table of the streaming core
(``notifyd.stream.handlers.inapp.InboxProvider``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from notifyd.config import Settings
from notifyd.providers.base import Provider
from notifyd.providers.spec import BUILTINS, ProviderSpec

if TYPE_CHECKING:
    from notifyd.providers.apprise import AppriseProvider


def build_builtin(channel: str, settings: Settings) -> Provider:
    """The built-in provider of ``channel`` (imports only what is used)."""
    if channel == "email":
        from notifyd.providers.smtp import SmtpProvider

        return SmtpProvider(settings)
    if channel == "sms":
        from notifyd.providers.httpapi import SmsProvider

        return SmsProvider(settings)
    if channel == "push":
        # Device tokens to the push API, Apprise URLs through Apprise (see .apprise).
        from notifyd.providers.apprise import PushRouter

        return PushRouter.from_settings(settings)
    if channel == "webhook":
        from notifyd.providers.webhook import WebhookProvider

        return WebhookProvider(settings)
    raise ValueError(f"no provider for channel {channel!r}")


def build_one(
    channel: str, spec: ProviderSpec, settings: Settings,
    user_urls: AppriseProvider | None = None,
) -> Provider:
    """One configured provider: a built-in, or an Apprise service URL (.service).

    On the push channel each one is wrapped with the delivery of users' own Apprise
    URLs (:class:`~.apprise.PushRouter`, egress policy included), so a push reaches a
    user's devices through the configured service *and* the URLs the user chose.
    ``user_urls`` is the :class:`~.apprise.AppriseProvider` the entries of one chain
    share: it remembers the URLs that already accepted a notification, so failing over
    to the next provider for the devices does not send to those URLs twice.
    """
    provider: Provider
    if spec.url is not None:
        from notifyd.providers.service import ServiceProvider

        provider = ServiceProvider(
            channel, spec.url, name=spec.name, timeout_s=settings.apprise_timeout_s
        )
        if channel == "push":
            from notifyd.providers.apprise import AppriseProvider, PushRouter

            provider = PushRouter(provider, user_urls or AppriseProvider.from_settings(settings))
    elif channel == "push" and user_urls is not None:
        from notifyd.providers.apprise import PushRouter
        from notifyd.providers.httpapi import PushProvider

        provider = PushRouter(PushProvider(settings), user_urls)
    else:
        provider = build_builtin(channel, settings)
    provider.name = spec.name
    return provider


def build_provider(channel: str, settings: Settings) -> Provider:
    """The provider of ``channel`` as configured (``NOTIFYD_<CHANNEL>_PROVIDERS``).

    One entry (the default: the built-in one) gives that provider itself, exactly as
    before failover existed; several give a :class:`~.chain.FailoverProvider`.
    """
    if channel not in BUILTINS:
        raise ValueError(f"no provider for channel {channel!r}")
    specs = settings.provider_specs(channel)
    if len(specs) == 1:
        return build_one(channel, specs[0], settings)
    from notifyd.providers.chain import FailoverProvider

    shared: AppriseProvider | None = None
    if channel == "push":
        from notifyd.providers.apprise import AppriseProvider

        shared = AppriseProvider.from_settings(settings)
    return FailoverProvider(
        channel,
        [(spec.name, build_one(channel, spec, settings, shared)) for spec in specs],
        failures=settings.circuit_failures,
        cooldown_s=settings.circuit_cooldown_s,
    )
