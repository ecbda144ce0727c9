"""Delivery callbacks as decisions: which transitions are called back, with what payload.

The status fold (``notifyd.stream.handlers.status``) asks :func:`jobs_for` which
channels reached a callback state; ``notifyd.stream.callbacks`` POSTs the jobs.  An
event's ``callback_url`` is checked here (:func:`check_callback_url`), by the API
and by the stream alike.
"""

from __future__ import annotations

from typing import Any

from notifyd.errors import InvalidEvent
from notifyd.model.limits import MAX_URL_LEN

CALLBACK_STATES = frozenset({"sent", "failed", "dead", "suppressed", "cancelled"})


def check_callback_url(value: Any) -> str | None:
    """An event's ``callback_url``: None, or an http(s) URL (the egress policy judges
    the host when the worker connects)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(
            f"wrong_type: callback_url must be a string, got {type(value).__name__}"
        )
    if len(value) > MAX_URL_LEN or not value.startswith(("http://", "https://")):
        raise InvalidEvent(
            "invalid_callback_url: must be an http(s) URL of at most 2000 characters"
        )
    return value


def channel_states(doc: dict[str, Any] | None) -> dict[str, str]:
    """Snapshot of a status document's channel states, taken before a fold."""
    if not doc:
        return {}
    return {ch: e.get("status", "") for ch, e in doc.get("channels", {}).items()}


def jobs_for(
    before: dict[str, str], doc: dict[str, Any], default_url: str
) -> list[dict[str, Any]]:
    """Callback jobs for the channels that reached a callback state in this fold."""
    url = doc.get("callback_url") or default_url
    if not url:
        return []
    jobs = []
    for ch, entry in doc.get("channels", {}).items():
        state = entry.get("status")
        if state not in CALLBACK_STATES or before.get(ch) == state:
            continue
        if state == "suppressed" and str(entry.get("reason", "")).startswith("not_requested"):
            continue  # a channel the event did not ask for is no outcome to report
        nid = doc["notification_id"]
        payload = {
            "notification_id": nid,
            "event_id": doc.get("event_id"),
            "user_id": doc.get("user_id"),
            "channel": ch,
            "status": state,
            "reason": entry.get("reason"),
            "attempts": entry.get("attempts"),
            "ts": entry.get("ts"),
            "idempotency_key": f"{nid}:{ch}:{state}",
        }
        if doc.get("topic"):
            payload["topic"] = doc["topic"]
        jobs.append({"url": url, "payload": payload})
    return jobs


def fold_callbacks(doc: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Outcomes of callbacks into the status document (``callbacks``: key -> outcome)."""
    done: dict[str, Any] = doc.setdefault("callbacks", {})
    for rec in records:
        done[rec["key"]] = {k: v for k, v in rec.items() if k != "key"}
