"""What every web module answers with: JSON responses, the caller, a confirmed command.

A leaf of :mod:`notifyd.web` (it imports no other view), so the API, console,
realtime, audience and unsubscribe views share these without importing each other.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from faust.types import TopicT

from notifyd.errors import ServiceUnavailable, Unauthorized
from notifyd.model.records import dumps
from notifyd.stream.waiters import waiters
from notifyd.web.auth.users import CurrentUser
from notifyd.web.openapi import Call

log = structlog.stdlib.get_logger("notifyd.web.api")

#: How long a write waits for the agent to apply it (read-your-writes).
WRITE_TIMEOUT_S = 10.0


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(data), status=status, content_type="application/json", headers=headers
    )


def caller(call: Call) -> CurrentUser:
    """The authenticated user of ``call`` (401 if none: public routes never ask)."""
    if call.user is None:
        raise Unauthorized("authentication required", code="not_authenticated")
    user: CurrentUser = call.user
    return user


async def command(topic: TopicT, user_id: str, msg: dict[str, Any], what: str) -> Any:
    """Produce a command keyed by ``user_id`` and wait until the local agent applied it."""
    request_id, fut = waiters.create()
    try:
        await topic.send(key=user_id.encode(), value=dumps({**msg, "request_id": request_id}))
    except BaseException:
        waiters.discard(request_id)
        raise
    try:
        return await waiters.wait(request_id, fut, WRITE_TIMEOUT_S)
    except TimeoutError:
        log.warning("api.write_timeout", what=what, user_id=user_id)
        raise ServiceUnavailable(
            f"the {what} was not confirmed within {WRITE_TIMEOUT_S:g} s; retry",
            code="write_timeout",
        ) from None
