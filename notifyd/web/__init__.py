"""The web view: mounted on Faust's aiohttp application when the worker starts."""

from __future__ import annotations

from notifyd.stream.app import app
from notifyd.web.api.state import setup

setup(app)
