"""Test-wide: each test gets a freshly built app; no asyncio task may outlive its test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from notifyd.stream.runtime import Runtime, scoped
from tests.support.app import build_app, close_built


@pytest.fixture(autouse=True)
async def runtime() -> AsyncIterator[Runtime]:
    """The app of this test (environment settings); a test may build another.  Built
    in the test's event loop: Faust binds the loop it finds."""
    with scoped():
        try:
            yield build_app()
        finally:
            close_built()


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before
        if not t.done() and t is not asyncio.current_task()
    ]
    if leaked:
        for t in leaked:
            t.cancel()
        pytest.fail(f"test leaked asyncio tasks: {leaked!r}")
