"""The bench's HTTP sink: receives the webhook and push deliveries and time-stamps them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from notifyd.tools.bench.load import (
    Collector,
)

#: ``POST /hook/<name>`` of these names is counted under its own collector kind, so an
#: event delivered on both HTTP channels counts once on each (phases sink, http, quix);
#: any other name counts under ``"sink"``.
CHANNEL_KINDS: dict[str, str] = {"webhook": "sink.webhook", "push": "sink.push"}


class Sink:
    """A minimal webhook receiver: records receipt time and ``data`` of each POST."""

    def __init__(self, collector: Collector, latency_s: float = 0.0) -> None:
        self.collector = collector
        #: Answer each POST after this long (a provider's own latency).
        self.latency_s = latency_s
        self.requests = 0
        self._runner: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        from aiohttp import web

        from notifyd.tools.broker.base import free_port

        async def hook(request: web.Request) -> web.Response:
            raw = await request.read()
            now = time.time()
            self.requests += 1
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return web.Response(status=400)
            kind = CHANNEL_KINDS.get(request.match_info["name"], "sink")
            self.collector.record(kind, doc.get("data"), now)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            return web.Response(
                body=b'{"id":"' + str(self.requests).encode() + b'"}',
                content_type="application/json",
            )

        app = web.Application()
        app.router.add_post("/hook/{name}", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
