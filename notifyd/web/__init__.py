"""The web view: mounted on Faust's aiohttp application when the worker starts."""

from __future__ import annotations

from ..app import app
from .routes import setup

setup(app)
