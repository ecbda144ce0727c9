"""Control messages (``notifyd.control``): partition-local housekeeping sent by this
or another worker: unschedule, expiry, fallback steps and inbox edits."""

from __future__ import annotations

from typing import Any

import structlog
from faust.types import EventT

from notifyd.model.records import loads
from notifyd.stream import fallback
from notifyd.stream.handlers.dispatch import process_event
from notifyd.stream.tables import cancels, inbox, ledger, scheduled, seen, status
from notifyd.stream.waiters import waiters

log = structlog.stdlib.get_logger("notifyd.stream.handlers.control")


async def handle_control(ev: EventT[Any]) -> None:
    msg = loads(ev.value)
    op = msg.get("op")
    if op == "unschedule":
        entry = scheduled.get(msg["id"])
        if entry is not None and entry["due"] == msg["due"]:
            del scheduled[msg["id"]]
    elif op == "expire":
        table = {"seen": seen, "ledger": ledger, "status": status, "cancels": cancels}[
            msg["table"]
        ]
        for key in msg["keys"]:
            if table.get(key) is not None:
                del table[key]
    elif op == "fallback_step":
        step = await fallback.due_step(msg)
        if step is not None:
            await process_event(step.event, ev.message.partition, step.now)
    elif op == "inbox":
        box = apply_inbox_op(msg)
        if box is not None and msg.get("action") == "read":  # cancels fallback steps
            ids = [it["id"] for it in box["items"]] if msg.get("all") else msg.get("ids") or []
            await fallback.on_read(msg["user_id"], list(ids))
        if msg.get("request_id"):
            waiters.resolve(str(msg["request_id"]), box)
    else:
        log.warning("control.unknown_op", op=str(op)[:50])


def apply_inbox_op(msg: dict[str, Any]) -> dict[str, Any] | None:
    """Mark read/unread, archive/unarchive or delete inbox items of one user."""
    user_id: str = msg["user_id"]
    box = inbox.get(user_id)
    if box is None:
        return None
    ids = set(msg.get("ids") or ())
    action = msg.get("action")
    items: list[dict[str, Any]] = box["items"]
    if action == "delete":
        items[:] = [it for it in items if it["id"] not in ids]
    else:
        field, value = {
            "read": ("read", True),
            "unread": ("read", False),
            "archive": ("archived", True),
            "unarchive": ("archived", False),
        }[str(action)]
        for it in items:
            if it["id"] in ids or msg.get("all"):
                it[field] = value
    box["unread"] = sum(1 for it in items if not it["read"] and not it["archived"])
    inbox[user_id] = box
    return box
