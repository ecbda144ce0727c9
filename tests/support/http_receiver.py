"""An aiohttp receiver on 127.0.0.1 for tests that point real Apprise services
(``json://``, ``form://``, ``ntfy://`` …) at localhost and check what they posted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Receiver:
    """Records every POST (path, query, headers, JSON or form body); answers ``status``
    (per path, 200 otherwise) with ``{}``, after ``delay_s``."""

    server: TestServer
    received: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        """What was posted to ``path`` (with its leading ``/``, as in ``status``)."""
        return [r for r in self.received if r["path"] == path]


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A started :class:`Receiver`, closed on exit."""
    rec: Receiver

    async def handle(request: web.Request) -> web.Response:
        if rec.delay_s:
            await asyncio.sleep(rec.delay_s)
        if request.content_type == "application/json":
            body: Any = await request.json()
        else:
            body = dict(await request.post())
        rec.received.append({"path": request.path, "query": dict(request.query),
                             "headers": dict(request.headers), "body": body})
        return web.Response(status=rec.status.get(request.path, 200), text="{}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec = Receiver(server)
    try:
        yield rec
    finally:
        await server.close()
