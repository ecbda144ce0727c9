"""Errors aiohttp answers below the application (notifyd.web.protocol): JSON too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from notifyd.tools.broker.base import free_port
from notifyd.web.protocol import MAX_LINE_BYTES, JsonErrorRunner


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"q": request.query["q"]})

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = JsonErrorRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head, _, body = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")
    finally:
        writer.close()
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_an_over_long_request_line_is_a_json_400(port: int) -> None:
    target = "/hello?q=" + "7" * (MAX_LINE_BYTES + 10)
    status, headers, body = await raw_request(
        port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    err = orjson.loads(body)
    assert err["code"] == "bad_request" and str(MAX_LINE_BYTES) in err["detail"]
    assert "777" not in err["detail"]  # the request is not echoed


async def test_a_malformed_request_is_a_json_400(port: int) -> None:
    status, headers, body = await raw_request(port, b"G\x00T / HTTP/1.1\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert set(orjson.loads(body)) == {"code", "detail"}


async def test_long_documented_queries_fit(port: int) -> None:
    """aiohttp's default limit (8190 bytes) is below what the documented parameters
    allow once percent-encoded; the runner reads longer lines."""
    target = "/hello?q=" + "%7E" * 6000  # 18 000 bytes
    status, _, body = await raw_request(
        port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 200, body
    assert orjson.loads(body) == {"q": "~" * 6000}
