"""Topics: one event to many users (subscriptions and fan-out).

Layout (why it looks like this):

* ``subscribers`` holds a topic's subscribers for the fan-out.  A fan-out reads all
  of them, so they live where the topic-addressed event is processed: the topic's own
  partition (``partition_for(topic)``; producers key such events by topic name).  One
  row per topic would grow without bound (100,000 subscribers = a few MB rewritten to
  the changelog on every (un)subscribe, and Kafka refuses records over 1 MB), one row
  per subscription would force a scan of the whole table per fan-out.  So a topic's
  set is sharded in :data:`BUCKETS` rows ``"<topic>#<bucket>"`` (bucket = CRC-32 of the
  user id): a change rewrites one ~1/256 share, a fan-out reads 256 rows in order, and
  a page of the operator listing is a position ``(bucket, user_id)`` in that order.
  The rows are written while a record keyed by the topic is processed, so all buckets
  are in the topic's partition whatever their own key hashes to.
* ``subscriptions`` is the user's own list (``user_id -> {topic: since}``), in the
  user's partition, for ``GET /api/v1/subscriptions``.

A change is one command on ``notifyd.subscriptions`` applied in two phases: keyed by
the topic, it updates the buckets, then it is forwarded keyed by the user (a bulk
command: one record per partition of its users, keyed by one of them) and updates the
users' lists.  The API routes the request to the user's partition owner and waits
for the second phase there, so when it answers both sides are applied (read your
writes on both lists).  Both phases are idempotent (set semantics), so re-processing
after a crash changes nothing.

Fan-out: an event with ``topic`` and no ``user_id`` is checked and deduplicated by the
ingest agent in the topic's partition (``seen`` under ``#topic:`` + the scope of
``(topic, event_id)``), which hands it to ``notifyd.fanout`` keyed by the topic.  The
fan-out agent reads :data:`FANOUT_CHUNK` recipients' worth of buckets, produces one
event per recipient to ``notifyd.events`` keyed by that user (``user_id`` set, the same
``event_id``, so the recipient's notification id is ``notification_id_for(user,
event_id)``), and then a continuation record for the next bucket.  Each recipient is
processed on their own partition with their own preferences, quiet hours, throttle and
locale.  A crash re-processes at most the chunk in hand (the continuation is the
progress record); a recipient's second copy is dropped by ``seen``: at-least-once on
the wire, exactly one notification per subscriber.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import structlog
from faust.types import EventT

from notifyd import clock
from notifyd.domain.fallback import check_extras
from notifyd.errors import InvalidEvent
from notifyd.model.limits import TOPIC_PATTERN
from notifyd.model.records import MAX_ID_LEN, dumps, idempotency_scope, loads, parse_event
from notifyd.stream.handlers.deadletter import dead_letter, dlq_for
from notifyd.stream.tables import subscribers, subscriptions
from notifyd.stream.topics import events_topic, fanout_topic, partition_for, subscriptions_topic
from notifyd.stream.waiters import waiters

log = structlog.stdlib.get_logger("notifyd.stream.audience")

#: Topic names: what ``notifyd.events`` producers and the API may use.
TOPIC_NAME_RE = re.compile(TOPIC_PATTERN)
TOPIC_NAME_PATTERN = TOPIC_NAME_RE.pattern
#: Rows per topic in ``subscribers``.  Part of the stored layout: never change it on a
#: deployment with data (a subscriber would be looked for in another bucket).
BUCKETS = 256
#: Recipients produced per fan-out record (one continuation record per chunk).
FANOUT_CHUNK = 2000
#: Largest page of ``GET /api/v1/topics/{topic}/subscribers``.
MAX_PAGE = 1000
#: Users per subscription command (bulk commands: operators' tools, the bench).
MAX_BULK = 5000


class InvalidSubscription(ValueError):
    """A subscription command that cannot be applied; the message says why."""


def check_topic_name(topic: Any) -> str:
    if not isinstance(topic, str) or not TOPIC_NAME_RE.match(topic):
        raise InvalidSubscription(
            "topic must be 1-100 characters of letters, digits and _ . : -"
        )
    return topic


def bucket_of(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % BUCKETS


def bucket_key(topic: str, bucket: int) -> str:
    return f"{topic}#{bucket:03d}"


def fanout_seen_key(topic: str, event_id: str) -> str:
    """``seen`` key of a topic-addressed event (``#`` never starts a scoped key)."""
    return "#topic:" + idempotency_scope(topic, event_id)


# --------------------------------------------------------------------------------------
# Reading (web view, fan-out)
# --------------------------------------------------------------------------------------


def subscriber_count(topic: str) -> int:
    return sum(len(subscribers.get(bucket_key(topic, b)) or {}) for b in range(BUCKETS))


#: What a cursor starts with: its bucket, 0 to BUCKETS - 1 (255) in decimal, and ":"
#: (in the OpenAPI document too).
CURSOR_PATTERN = "^(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]):"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def parse_cursor(cursor: str | None) -> tuple[int, str]:
    """``"<bucket>:<user_id>"``: the page starts after that user in that bucket."""
    if not cursor:
        return 0, ""
    if not _CURSOR_RE.match(cursor):
        raise InvalidSubscription("cursor is not one this API returned")
    b, _, user = cursor.partition(":")
    return int(b), user


def page(topic: str, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a topic's subscribers, in (bucket, user_id) order, and the next cursor."""
    start, after = parse_cursor(cursor)
    out: list[dict[str, Any]] = []
    for b in range(start, BUCKETS):
        row: dict[str, float] = subscribers.get(bucket_key(topic, b)) or {}
        for user in sorted(row):
            if b == start and after and user <= after:
                continue
            out.append({"user_id": user, "subscribed_at": row[user]})
            if len(out) == limit:
                return out, f"{b}:{user}"
    return out, None


# --------------------------------------------------------------------------------------
# Subscription commands: notifyd.subscriptions
# --------------------------------------------------------------------------------------


def command(op: str, topic: str, user_ids: list[str]) -> dict[str, Any]:
    """A subscription command, phase ``topic`` (produce it keyed by ``topic``)."""
    return {"op": op, "phase": "topic", "topic": topic, "user_ids": user_ids}


def _check_command(msg: Any) -> tuple[str, str, str, list[str]]:
    if not isinstance(msg, dict):
        raise InvalidSubscription("message must be a JSON object")
    op, phase = msg.get("op"), msg.get("phase", "topic")
    if op not in ("subscribe", "unsubscribe"):
        raise InvalidSubscription(f"unknown op {str(op)[:20]!r}")
    if phase not in ("topic", "user"):
        raise InvalidSubscription(f"unknown phase {str(phase)[:20]!r}")
    topic = check_topic_name(msg.get("topic"))
    users = msg.get("user_ids")
    if (
        not isinstance(users, list)
        or not users
        or len(users) > MAX_BULK
        or not all(isinstance(u, str) and u.strip() and len(u) <= MAX_ID_LEN for u in users)
    ):
        raise InvalidSubscription(
            f"user_ids must be 1-{MAX_BULK} non-empty strings of at most {MAX_ID_LEN} characters"
        )
    return op, phase, topic, users


async def handle_subscription(ev: EventT[Any]) -> None:
    """Apply one phase of a subscription command (see the module doc)."""
    raw: bytes | None = ev.value
    try:
        msg = loads(raw or b"")
        op, phase, topic, users = _check_command(msg)
        owners = [topic] if phase == "topic" else users
        if any(partition_for(o) != ev.message.partition for o in owners):
            raise InvalidSubscription(f"message key must be the {phase} ({phase} phase)")
    except (InvalidSubscription, ValueError) as exc:
        await dead_letter(ev, raw, f"invalid_subscription: {exc}", dlq_for(ev.message.topic))
        return
    now = clock.now()
    if phase == "topic":
        by_bucket: dict[int, list[str]] = {}
        for user in dict.fromkeys(users):
            by_bucket.setdefault(bucket_of(user), []).append(user)
        for b, members in by_bucket.items():
            key = bucket_key(topic, b)
            row: dict[str, float] = subscribers.get(key) or {}
            changed = False
            for user in members:
                if op == "subscribe" and user not in row:
                    row[user] = now
                    changed = True
                elif op == "unsubscribe" and user in row:
                    del row[user]
                    changed = True
            if changed:  # a table write is a changelog record: only when it changed
                if row:
                    subscribers[key] = row
                else:
                    del subscribers[key]
        # Phase two: one record per partition of the users (a bulk command of 5,000
        # users is a few records, not 5,000), keyed by one of them.
        by_partition: dict[int, list[str]] = {}
        for user in dict.fromkeys(users):
            by_partition.setdefault(partition_for(user), []).append(user)
        for members in by_partition.values():
            forward: dict[str, Any] = {
                "op": op, "phase": "user", "topic": topic, "user_ids": members,
            }
            if msg.get("request_id") and len(users) == 1:
                forward["request_id"] = msg["request_id"]
            if op == "subscribe":
                forward["since"] = {
                    u: (subscribers.get(bucket_key(topic, bucket_of(u))) or {}).get(u, now)
                    for u in members
                }
            await subscriptions_topic.send(key=members[0].encode(), value=dumps(forward))
        log.info("subscriptions.topic_applied", topic=topic, op=op, users=len(users))
        return
    since_of = msg.get("since") if isinstance(msg.get("since"), dict) else {}
    mine: dict[str, float] = {}
    for user in users:
        stored = subscriptions.get(user) or {}
        mine = dict(stored)
        if op == "subscribe":
            since = since_of.get(user)
            mine[topic] = since if isinstance(since, int | float) else mine.get(topic, now)
        else:
            mine.pop(topic, None)
        if mine != stored:
            if mine:
                subscriptions[user] = mine
            else:
                del subscriptions[user]
    if msg.get("request_id"):
        waiters.resolve(str(msg["request_id"]), mine)


# --------------------------------------------------------------------------------------
# Fan-out
# --------------------------------------------------------------------------------------


def topic_event(raw: bytes | None) -> dict[str, Any] | None:
    """The decoded event if ``raw`` is addressed to a topic (``topic``, no ``user_id``).

    Cheap for every other event: only values containing ``"topic"`` are decoded here.
    """
    if raw is None or b'"topic"' not in raw:
        return None
    try:
        obj = loads(raw)
    except ValueError:
        return None  # parse_event reports it
    if not isinstance(obj, dict) or "topic" not in obj or obj.get("user_id") is not None:
        return None
    return obj


def check_topic_event(obj: dict[str, Any], max_bytes: int) -> str:
    """Validate a topic-addressed event once, before any copy is made; its topic name.

    The per-recipient copies are the same event with ``user_id`` set, so the event is
    checked as such a copy (an invalid one would otherwise be dead-lettered once per
    subscriber)."""
    topic = obj.get("topic")
    if not isinstance(topic, str) or not TOPIC_NAME_RE.match(topic):
        raise InvalidEvent("invalid_topic: use 1-100 letters, digits and _ . : -")
    check_extras(parse_event(dumps({**obj, "user_id": "#" + topic}), max_bytes))
    return topic


async def handle_fanout(ev: EventT[Any]) -> None:
    """One chunk of a fan-out: recipients of the next buckets, then the continuation."""
    raw: bytes = ev.value
    msg = loads(raw)
    topic = check_topic_name(msg["topic"])
    if partition_for(topic) != ev.message.partition:
        await dead_letter(
            ev, raw, "invalid_fanout: message key must be the topic", dlq_for(ev.message.topic)
        )
        return
    event: dict[str, Any] = msg["event"]
    b = int(msg["bucket"])
    produced = 0
    while b < BUCKETS and produced < FANOUT_CHUNK:
        row: dict[str, float] = subscribers.get(bucket_key(topic, b)) or {}
        for user in sorted(row):
            copy = {**event, "user_id": user, "topic": topic}
            await events_topic.send(key=user.encode(), value=dumps(copy))
        produced += len(row)
        b += 1
    done = int(msg.get("done", 0)) + produced
    if b < BUCKETS:
        await fanout_topic.send(
            key=topic.encode(), value=dumps({**msg, "bucket": b, "done": done})
        )
        return
    took = clock.now() - float(msg.get("started_at") or clock.now())
    log.info("fanout.done", topic_name=topic, event_id=event.get("event_id"),
             recipients=done, took_s=round(took, 3))

