"""Channel fallback chains (a small workflow) and the per-event routing extras.

A chain, per event (``fallback``) or per category in the user's preferences
(``fallback: {category | "*": chain}``; the event's own wins)::

    [{"channel": "inapp"},
     {"channel": "push", "after_s": 300, "unless": "read"},
     {"channel": "email", "after_s": 3600, "unless": "read"}]

The first step is sent like any event restricted to that channel.  Every later step
is a durable schedule: a row of the ``scheduled`` table under the key its delivery
would have (``<notification_id>:<channel>``), due ``after_s`` after the event was
accepted, carrying the event, so it survives crashes and rebalances like a deferred
delivery (rebuilt by the scheduler from the table).  When it is due the scheduler
hands it to the control topic keyed by the user, and the step runs on the user's
partition, where the facts live: ``unless: "read"`` looks at the in-app item (the
``inbox`` table), ``unless: "delivered"`` at the previous steps' ledger entries and the
inbox.  If the condition holds the step is ``skipped``; else it is processed as the
event restricted to its channel (preferences, quiet hours, throttle, locale apply).

Cancelled as soon as the condition is met: marking the in-app item read deletes the
pending steps that wait on ``read`` or ``delivered`` and shows them ``skipped``; a
step's channel ending ``failed`` or ``dead`` (or ``suppressed``) makes the next step
due at once.  The status document shows the chain (``fallback``) and each step's
channel as ``pending`` (with ``deliver_at``), ``skipped`` or its delivery states.

Here is the durable part (scheduling, hurrying, cancelling the steps; a due step is
dispatched by the control handler).  The chain's shape is :mod:`notifyd.model.fallback`;
the plan made before the rules run is :mod:`notifyd.domain.fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from notifyd.clock import now as clock_now
from notifyd.config import CHANNELS
from notifyd.domain.fallback import STEP_KEY, Plan, step_key
from notifyd.domain.rules import DEFER, SEND
from notifyd.model.fallback import CONDITIONS
from notifyd.model.limits import SCHEMA_VERSION
from notifyd.model.records import Event, dumps, parse_event
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.status import status_update
from notifyd.stream.scheduler import scheduler
from notifyd.stream.tables import inbox, ledger, scheduled
from notifyd.stream.topics import control_topic

log = structlog.stdlib.get_logger("notifyd.stream.fallback")


async def after_decisions(
    plan: Plan, event: Any, decisions: list[Any], partition: int, now: float,
    updates: list[dict[str, Any]],
) -> None:
    """Schedule the later steps (first run) or hurry the next one; adjusts ``updates``.

    The rules see the event restricted to the current step's channel, so they call
    every other channel ``not_requested``: not so for the chain's later steps (they
    are pending), nor, when a step runs, for any channel (stated by the first run)."""
    if not plan.steps:
        return
    chain = {s["channel"] for s in plan.steps}
    updates[:] = [
        u for u in updates
        if not (
            u["status"] == "suppressed"
            and str(u.get("reason", "")).startswith("not_requested")
            and (plan.step > 0 or u["channel"] in chain)
        )
    ]
    updates += await _after_decisions(plan, event, decisions, partition, now)


async def _after_decisions(
    plan: Plan, event: Any, decisions: list[Any], partition: int, now: float
) -> list[dict[str, Any]]:
    nid = event.notification_id
    current = plan.steps[plan.step]
    d = next((d for d in decisions if d.channel == current["channel"]), None)
    suppressed = d is not None and d.action not in (SEND, DEFER)
    if plan.step > 0:
        return await hurry_next(event.user_id, nid, partition, now, "suppressed") if (
            suppressed
        ) else []
    inapp_sent = d is not None and d.action == SEND and current["channel"] == "inapp"
    updates: list[dict[str, Any]] = []
    accepted = now
    event_doc = {k: v for k, v in event.to_dict().items() if k != STEP_KEY}
    for i, step in enumerate(plan.steps[1:], start=1):
        ch = step["channel"]
        if step.get("unless") == "delivered" and inapp_sent:
            updates.append(skipped(ch, "delivered", now))
            continue
        due = accepted + float(step["after_s"])
        if suppressed and i == 1:
            due = now  # nothing to wait for
        _schedule_step(event_doc, plan.steps, i, nid, event.user_id, due, accepted, partition)
        updates.append(_pending(ch, due, now, step))
    return updates


def _pending(ch: str, due: float, now: float, step: dict[str, Any]) -> dict[str, Any]:
    reason = f"fallback: unless {step['unless']}" if step.get("unless") else "fallback"
    return status_update(ch, "pending", now, deliver_at=due, reason=reason)


def skipped(ch: str, condition: str, now: float) -> dict[str, Any]:
    return status_update(ch, "skipped", now, reason=f"fallback: {condition}")


def _schedule_step(
    event_doc: dict[str, Any], steps: list[dict[str, Any]], i: int, nid: str, user_id: str,
    due: float, accepted: float, partition: int,
) -> None:
    key = step_key(nid, steps[i]["channel"])
    scheduled[key] = {
        "due": due,
        "p": partition,
        "reason": "fallback",
        "schema_version": SCHEMA_VERSION,
        "fallback": {
            "step": i, "steps": steps, "event": event_doc, "user_id": user_id, "nid": nid,
            "accepted_at": accepted,
        },
    }
    scheduler.push(due, key, partition)


def _pending_steps(nid: str) -> list[tuple[str, dict[str, Any]]]:
    """This notification's scheduled steps (the caller is in the user's partition)."""
    out = []
    for ch in CHANNELS:
        key = step_key(nid, ch)
        entry = scheduled.get(key)
        if entry is not None and "fallback" in entry:
            out.append((key, entry))
    return sorted(out, key=lambda kv: int(kv[1]["fallback"]["step"]))


async def hurry_next(
    user_id: str, nid: str, partition: int, now: float, why: str
) -> list[dict[str, Any]]:
    """A step's channel failed, died or was suppressed: the next step is due now."""
    pending = _pending_steps(nid)
    if not pending:
        return []
    key, entry = pending[0]
    if entry["due"] <= now:
        return []
    scheduled[key] = {**entry, "due": now}
    scheduler.push(now, key, partition)
    fb = entry["fallback"]
    step = fb["steps"][fb["step"]]
    log.info("fallback.hurried", notification_id=nid, channel=step["channel"], why=why)
    update = _pending(step["channel"], now, now, step)
    update["reason"] = f"fallback: previous step {why}"
    return [update]


async def on_delivery_failed(delivery: Any, partition: int, state: str) -> None:
    """Hook of the channel agent: ``failed``/``dead`` makes the next step due at once."""
    updates = await hurry_next(
        delivery.user_id, delivery.notification_id, partition, clock_now(), state
    )
    if updates:
        await statuses.publish_status(
            delivery.notification_id, updates, user_id=delivery.user_id
        )


async def on_read(user_id: str, nids: list[str]) -> None:
    """Hook of the inbox edits: read items cancel the steps waiting on read/delivered."""
    now = clock_now()
    for nid in nids:
        updates = []
        for key, entry in _pending_steps(nid):
            step = entry["fallback"]["steps"][entry["fallback"]["step"]]
            if step.get("unless") in CONDITIONS:
                del scheduled[key]
                updates.append(skipped(step["channel"], "read", now))
        if updates:
            await statuses.publish_status(nid, updates, user_id=user_id)
            log.info("fallback.cancelled", notification_id=nid, steps=len(updates))


async def release_step(key: str, entry: dict[str, Any]) -> None:
    """Scheduler: a step is due; it runs on its user's partition (control topic)."""
    user_id = entry["fallback"]["user_id"]
    await control_topic.send(
        key=user_id.encode(),
        value=dumps({"op": "fallback_step", "id": key, "due": entry["due"]}),
    )


def condition_met(condition: str, nid: str, user_id: str, steps: list[dict[str, Any]],
                   upto: int) -> bool:
    item = next(
        (it for it in (inbox.get(user_id) or {}).get("items", ()) if it.get("id") == nid), None
    )
    if condition == "read":
        return bool(item is not None and item.get("read"))
    if item is not None:
        return True  # the in-app item was delivered
    for step in steps[:upto]:
        done = ledger.get(step_key(nid, step["channel"]))
        if done is not None and done.get("s") == "sent":
            return True
    return False


@dataclass
class DueStep:
    """A due step to send: its event, restricted to the step's channel, and the time."""

    event: Event
    now: float


async def due_step(msg: dict[str, Any]) -> DueStep | None:
    """Control message ``fallback_step``: check the condition, skip the step or return
    the event it sends (the control handler dispatches it: dispatching runs this
    module's :func:`after_decisions`, so this module does not dispatch)."""
    entry = scheduled.get(msg["id"])
    if entry is None or entry.get("due") != msg["due"] or "fallback" not in entry:
        return None  # already run, cancelled or rescheduled
    del scheduled[msg["id"]]
    fb = entry["fallback"]
    i = int(fb["step"])
    step = fb["steps"][i]
    user_id = fb["user_id"]
    nid = fb["nid"]
    now = clock_now()
    condition = step.get("unless")
    if condition and condition_met(condition, nid, user_id, fb["steps"], i):
        await statuses.publish_status(
            nid, [skipped(step["channel"], condition, now)], user_id=user_id
        )
        log.info("fallback.skipped", notification_id=nid, channel=step["channel"])
        return None
    raw = {**fb["event"], "channels": None, "fallback": None,
           STEP_KEY: {"step": i, "steps": fb["steps"], "accepted_at": fb["accepted_at"]}}
    event = parse_event(dumps(raw))
    if event.notification_id != nid:  # an id of the legacy scheme: keep the one it had
        event.legacy_ids = True
    log.info("fallback.step", notification_id=nid, channel=step["channel"], step=i)
    return DueStep(event, now)
