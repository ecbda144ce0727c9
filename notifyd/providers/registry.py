"""Builds the provider of each channel from settings.

Each channel agent owns its provider: started before its stream, stopped after.
"""

from __future__ import annotations

from ..config import Settings
from ..records import Delivery
from .base import Provider, SendReceipt


class InboxProvider(Provider):
    """In-app: writes the user's inbox table (runs inside the inapp agent's event)."""

    channel = "inapp"

    async def send(self, delivery: Delivery) -> SendReceipt:
        from ..pipeline import deliver_inapp

        return SendReceipt(provider_id=deliver_inapp(delivery))


def build_provider(channel: str, settings: Settings) -> Provider:
    """The provider configured for ``channel`` (imports only what is used)."""
    if channel == "email":
        from .smtp import SmtpProvider

        return SmtpProvider(settings)
    if channel == "sms":
        from .httpapi import SmsProvider

        return SmsProvider(settings)
    if channel == "push":
        # Device tokens to the push API, Apprise URLs through Apprise (see .apprise).
        from .apprise import PushRouter

        return PushRouter.from_settings(settings)
    if channel == "webhook":
        from .webhook import WebhookProvider

        return WebhookProvider(settings)
    if channel == "inapp":
        return InboxProvider()
    raise ValueError(f"no provider for channel {channel!r}")
