"""Deduplication is scoped to (user_id, event_id), and rows written before the scope
existed (``seen`` keyed by the bare event id, notification id ``uuid5(event_id)``) keep
working: the ingest agent in Faust's ``test_context()`` with tables in memory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from notifyd.model.records import (
    idempotency_scope,
    legacy_notification_id_for,
    notification_id_for,
)
from notifyd.stream.handlers import status as statuses
from notifyd.stream.handlers.ingest import ORIGIN_HEADER
from notifyd.stream.tables import inbox, seen, status
from notifyd.stream.topics import partition_for
from tests.support.app import app_agent
from tests.support.waiting import until


class Ingest:
    """Feeds raw events to the real ingest agent; keeps the status it publishes."""

    def __init__(self, agent: Any, published: list[tuple[str, dict[str, Any] | None]]) -> None:
        self.agent = agent
        self.published = published

    async def send(self, user: str, event_id: str, origin: str | None = None) -> None:
        event = {"event_id": event_id, "user_id": user, "title": "t", "channels": ["inapp"]}
        headers = [(ORIGIN_HEADER, origin.encode())] if origin else None
        await self.agent.put(  # the test agent numbers the offsets
            orjson.dumps(event), key=user.encode(), partition=partition_for(user),
            headers=headers,
        )

    async def flush(self) -> None:
        """Every record put before has been handled (one at a time, in order)."""
        marker = f"flush-{uuid.uuid4().hex[:8]}"
        n = len(self.published)
        await self.send(marker, marker)
        await until(lambda: any(c and c["user_id"] == marker for _, c in self.published[n:]))

    def nids(self) -> list[str]:
        return [nid for nid, c in self.published if c and not c["user_id"].startswith("flush-")]


@pytest.fixture
async def ingest(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ingest]:
    agent_def = app_agent("ingest")

    published: list[tuple[str, dict[str, Any] | None]] = []

    async def record(
        nid: str, updates: list[dict[str, Any]], content: Any = None, **kw: Any
    ) -> None:
        published.append((nid, content))

    monkeypatch.setattr(statuses, "publish_status", record)
    async with agent_def.test_context() as agent:
        yield Ingest(agent, published)


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def legacy_rows(user: str, event_id: str, *, status_doc: bool = True,
                origin: str = "an-older-topic/0/5") -> str:
    """The rows an older worker left for ``event_id`` sent to ``user`` (as restored from
    their changelogs); returns its legacy notification id."""
    nid = legacy_notification_id_for(event_id)
    seen.data[event_id] = [1.0, partition_for(user), origin]
    if status_doc:
        status.data[nid] = {"notification_id": nid, "user_id": user, "event_id": event_id,
                            "channels": {}, "p": 0}
    return nid


async def test_same_event_id_for_two_users_is_two_notifications(ingest: Ingest) -> None:
    buyer, seller, eid = fresh("buyer"), fresh("seller"), fresh("order-shipped")
    await ingest.send(buyer, eid)
    await ingest.send(seller, eid)
    await ingest.send(buyer, eid)  # a re-send: dropped
    await ingest.flush()
    assert ingest.nids() == [notification_id_for(buyer, eid), notification_id_for(seller, eid)]
    assert seen.get(idempotency_scope(buyer, eid))[3] == buyer
    assert seen.get(eid) is None  # no row under the bare event id any more


async def test_legacy_row_of_the_same_user_still_deduplicates(ingest: Ingest) -> None:
    user, eid = fresh("u"), fresh("e")
    legacy_rows(user, eid)
    await ingest.send(user, eid)
    await ingest.flush()
    assert ingest.nids() == []


async def test_legacy_row_of_another_user_does_not_drop_this_users_event(ingest: Ingest) -> None:
    owner, other, eid = fresh("owner"), fresh("other"), fresh("e")
    legacy_rows(owner, eid)
    await ingest.send(other, eid)
    await ingest.flush()
    assert ingest.nids() == [notification_id_for(other, eid)]


async def test_legacy_row_with_the_inbox_as_evidence(ingest: Ingest) -> None:
    # The status document lives on another worker: the user's inbox (partition-local)
    # holding the legacy id proves the first event was this user's.
    user, other, eid = fresh("u"), fresh("o"), fresh("e")
    nid = legacy_rows(user, eid, status_doc=False)
    inbox.data[user] = {"items": [{"id": nid, "read": False, "archived": False}], "unread": 1}
    await ingest.send(user, eid)
    await ingest.send(other, eid)  # no evidence for this one: delivered (at-least-once)
    await ingest.flush()
    assert ingest.nids() == [notification_id_for(other, eid)]


async def test_replayed_pre_upgrade_record_keeps_its_legacy_id(ingest: Ingest) -> None:
    # The record an older worker processed (same origin) replayed after a crash: its
    # outputs must carry the same notification id as the first time, or the ledger
    # would not recognise them.
    user, eid = fresh("u"), fresh("e")
    nid = legacy_rows(user, eid, origin="notifyd.events/2/41")
    await ingest.send(user, eid, origin="notifyd.events/2/41")
    await ingest.flush()
    assert ingest.nids() == [nid]
    assert inbox.get(user)["items"][0]["id"] == nid
    assert seen.get(idempotency_scope(user, eid)) is None  # the legacy row stays the mark
