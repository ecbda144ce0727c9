"""Channel fallback chains, the decisions before the rules run: which chain an event
follows, which step it is, and the routing extras (``callback_url``, ``topic``) it carries.

The durable part (scheduling the later steps, cancelling them, running a due step)
is ``notifyd.stream.fallback``; the chain's shape is ``notifyd.model.fallback``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from notifyd.domain.callbacks import check_callback_url
from notifyd.errors import InvalidEvent
from notifyd.model.fallback import InvalidChain, parse_chain

#: ``Event.extra`` key of a step being run (set on the event the step re-processes).
STEP_KEY = "_fallback_step"


@dataclass
class Plan:
    """What :func:`prepare` decided for one event before the rules run."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    #: Index of the step this event runs (0: the event itself; >0: a due step).
    step: int = 0
    #: Extra fields of the status document's content.
    content: dict[str, Any] = field(default_factory=dict)


def prepare(event: Any, prefs: dict[str, Any] | None) -> Plan:
    """Check the event's routing extras and restrict it to the current step's channel.

    Raises :class:`InvalidEvent` (dead letter) for a bad ``callback_url`` or chain."""
    check_extras(event)
    extra: dict[str, Any] = event.extra
    plan = Plan()
    url = check_callback_url(extra.get("callback_url"))
    if url is not None:
        plan.content["callback_url"] = url
    if isinstance(extra.get("topic"), str):
        plan.content["topic"] = extra["topic"]
    step_info = extra.get(STEP_KEY)
    if step_info is not None:  # a due step re-processing its event: already checked
        plan.steps = step_info["steps"]
        plan.step = int(step_info["step"])
        plan.content["accepted_at"] = step_info["accepted_at"]
    elif extra.get("fallback") is not None:
        plan.steps = parse_chain(extra["fallback"])  # checked above
    else:
        chains = (prefs or {}).get("fallback") or {}
        chain = chains.get(event.category) or chains.get("*")
        if chain and event.channels is None:
            plan.steps = chain
    if plan.steps:
        event.channels = (plan.steps[plan.step]["channel"],)
        plan.content["fallback"] = plan.steps
    return plan


def check_extras(event: Any) -> None:
    """Check ``callback_url`` and ``fallback`` of an event (also the API's 400s)."""
    extra: dict[str, Any] = event.extra
    check_callback_url(extra.get("callback_url"))
    if extra.get("fallback") is not None and STEP_KEY not in extra:
        if event.channels is not None:
            raise InvalidEvent("invalid_fallback: give channels or fallback, not both",
                               rule=True)
        try:
            parse_chain(extra["fallback"])
        except InvalidChain as exc:
            raise InvalidEvent(f"invalid_fallback: {exc}", rule=True) from None


def step_key(nid: str, channel: str) -> str:
    """Key of a step's row in ``scheduled`` and of its delivery in the ledger."""
    return f"{nid}:{channel}"
