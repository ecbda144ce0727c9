"""Preferences (``notifyd.preferences``): the owner of a user's partition writes the
user's document, so no write is lost to a read-modify-write elsewhere."""

from __future__ import annotations

from typing import Any

import structlog
from faust.types import EventT

from notifyd import clock
from notifyd.model.records import (
    InvalidPreferences,
    add_opt_out,
    loads,
    merge_preferences,
    validate_preferences,
)
from notifyd.stream.handlers.deadletter import dead_letter
from notifyd.stream.tables import preferences
from notifyd.stream.topics import partition_for
from notifyd.stream.waiters import waiters

log = structlog.stdlib.get_logger("notifyd.stream.handlers.preferences")


async def handle_preferences(ev: EventT[Any]) -> None:
    """``{"op": "put"|"patch"|"delete", "user_id", "fields", "request_id"?}``, or
    ``{"op": "opt_out", "user_id", "category", "channel"}`` (an unsubscribe link): adds
    that one opt-out to the current document here, on the owner, so no other write is
    lost to a read-modify-write elsewhere."""
    raw: bytes | None = ev.value
    try:
        msg = loads(raw or b"")
        if not isinstance(msg, dict) or not isinstance(msg.get("user_id"), str):
            raise InvalidPreferences("message must be an object with a string user_id")
        user_id: str = msg["user_id"]
        op = msg.get("op", "put")
        if op not in ("put", "patch", "delete", "opt_out"):
            raise InvalidPreferences(f"unknown op {str(op)[:20]!r}")
        if partition_for(user_id) != ev.message.partition:
            raise InvalidPreferences("message key must be the user_id")
        write = op
        if op == "opt_out":
            added = add_opt_out(preferences.get(user_id), msg.get("category"), msg.get("channel"))
            write = "patch" if added is not None else "none"
            fields = {} if added is None else {"opt_out": added}
        else:
            fields = (
                {}
                if op == "delete"
                else validate_preferences(user_id, msg.get("fields"), partial=(op == "patch"))
            )
    except (InvalidPreferences, ValueError) as exc:
        await dead_letter(ev, raw, f"invalid_preferences: {exc}")
        return
    if write == "none":  # already opted out: answer the current document, write nothing
        doc = preferences.get(user_id)
    elif write == "delete":
        if preferences.get(user_id) is not None:
            del preferences[user_id]
        doc = None
    else:
        base = None if write == "put" else preferences.get(user_id)
        doc = merge_preferences(base, user_id, fields, clock.now())
        preferences[user_id] = doc
    if msg.get("request_id"):
        waiters.resolve(str(msg["request_id"]), doc)
    log.info("preferences.updated", user_id=user_id, op=op)
