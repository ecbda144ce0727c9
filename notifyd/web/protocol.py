"""Answers aiohttp gives below the application: the same JSON ``{code, detail}`` errors.

A request the HTTP parser refuses (an over-long request line or header, a malformed
request) never reaches a route or a middleware: aiohttp's connection handler answers
it with a ``text/plain`` body of its own, as it does a handler timeout (504) or an
error that escaped the middlewares (500).  :class:`JsonErrorRunner` serves the web
app with a connection handler whose :meth:`~JsonErrorRequestHandler.handle_error`
answers those in the API's one error shape, so every response of the API is documented.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from notifyd.web.auth.users import error_response

#: Longest request line (method, path and query) read, in bytes (headers keep aiohttp's limit).
#: aiohttp's default (8190) is below what the documented query parameters allow once
#: percent-encoded (an OIDC callback's code, state and error description; see the
#: OpenAPI document); longer lines get a JSON 400.
MAX_LINE_BYTES = 32 * 1024

_CODES = {400: "bad_request", 500: "internal_error", 504: "gateway_timeout"}


def _detail(status: int, exc: BaseException | None, message: str | None) -> str:
    """What the client is told: the parser's reason without the bytes it quotes."""
    if isinstance(exc, LineTooLong):
        return f"request line or header field longer than {exc.args[1]} bytes"
    if isinstance(exc, HttpProcessingError) and exc.message:
        # "Invalid method encountered:\n\n  b'...'" and the like: the first line only.
        return str(exc.message).splitlines()[0].strip()[:200] or "malformed HTTP request"
    if status == 500:
        return "internal server error"  # internals are logged, never sent
    if status == 504:
        return "the request took too long"
    return (message or "malformed HTTP request").splitlines()[0][:200]


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors as JSON."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The stock handler logs the error and refuses once a response has started.
        super().handle_error(request, status, exc, message)
        resp = error_response(status, _CODES.get(status, f"http_{status}"),
                              _detail(status, exc, message))
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections answer parser errors as JSON."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_LINE_BYTES)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same server (handler, request factory, settings), one method overridden:
        # aiohttp offers no parameter for the connection handler's class.
        server.__class__ = _JsonErrorServer
        return server


def install(faust_web: Any) -> None:
    """Serve Faust's web app (``app.web``) through a :class:`JsonErrorRunner`; call it
    before the web server starts."""
    faust_web._runner = JsonErrorRunner(faust_web.web_app, access_log=None)


__all__ = ["MAX_LINE_BYTES", "JsonErrorRequestHandler", "JsonErrorRunner", "install"]
