"""The one endpoint registry of the web view: every ``/api/v1`` and console route is
declared on it (:class:`notifyd.web.openapi.Registry`), which feeds aiohttp and the
OpenAPI document.  Its own module, so views declare routes without importing each other."""

from __future__ import annotations

from notifyd.web.openapi import Registry

registry = Registry()
