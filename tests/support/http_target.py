"""A tiny HTTP/1.1 server that counts TCP connections, for the egress-policy tests.

A refused destination must never be connected to, so the tests assert on accepted
connections, not only on requests: a connection that is opened and then abandoned
would already be the SSRF.  It runs in the current event loop, on any local address
(127.0.0.2 and ::1 too) and answers every request with ``status``/``body``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass
class HttpTarget:
    host: str = "127.0.0.1"
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, path: str = "hook", scheme: str = "http") -> str:
        return f"{scheme}://{self.netloc}/{path}"

    async def start(self) -> HttpTarget:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            first, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = first.split(" ", 2)
            headers = {}
            for line in lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length") or 0)
            body = await reader.readexactly(size) if size else b""
            self.requests.append(
                {"method": method, "path": path, "headers": headers, "body": body}
            )
            reason = HTTPStatus(self.status).phrase
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            writer.write(
                f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(self.body)}\r\n"
                f"Content-Type: application/json\r\nConnection: close\r\n{extra}\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
