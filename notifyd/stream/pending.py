"""The reconciler's index: notifications with a channel still waiting for an outcome.

The reconciler (``handlers.queueing.requeue_overdue``) re-queues a delivery whose
outcome is overdue.  Finding those by reading the whole ``status`` table every ten
seconds cost an idle worker more than its polling (about 1 % of a core per 20,000
notifications) and, on a RocksDB table of millions of rows, held the event loop for
seconds at a time.  This index keeps, per notification, when its earliest pending
channel became due; the status fold (the only writer of ``status`` rows) keeps it up to
date, and a pass over the table rebuilds it when the partitions or the table change,
as the scheduler's index is rebuilt.  It is only an index: the reconciler re-reads each
row it names, so a stale entry costs a look-up, never a wrong re-queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

#: Channel states that wait for an outcome, with the delivery they wait on.
PENDING = frozenset({"queued", "retrying", "deferred"})
#: Rows read between yields to the event loop while rebuilding.
REBUILD_CHUNK = 5000


def pending_due(doc: Mapping[str, Any] | None) -> float | None:
    """When the earliest pending channel of a status row was due (None: none pends)."""
    if not doc:
        return None
    due: float | None = None
    for entry in doc.get("channels", {}).values():
        if entry.get("status") in PENDING and entry.get("delivery"):
            at = max(entry.get("ts") or 0, entry.get("deliver_at") or 0)
            if due is None or at < due:
                due = at
    return due


class PendingIndex:
    """``notification id -> (due, partition)`` of the rows with a pending channel."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, int]] = {}
        self.active: frozenset[int] | None = None
        #: The table the entries were read from (a new runtime, a new table: rebuilt).
        self.source: int | None = None
        #: While :meth:`rebuild` runs: rows folded meanwhile (None: no longer pending).
        self._changes: dict[str, tuple[float, int] | None] | None = None

    def note(self, nid: str, doc: Mapping[str, Any] | None) -> None:
        """A status row was written (``doc``) or deleted (None)."""
        due = pending_due(doc)
        entry = None if due is None or doc is None else (due, int(doc.get("p") or 0))
        if entry is None:
            self.entries.pop(nid, None)
        else:
            self.entries[nid] = entry
        if self._changes is not None:
            self._changes[nid] = entry

    def current(self, table_data: Any, active: frozenset[int]) -> bool:
        return self.source == id(table_data) and self.active == active

    async def rebuild(self, table_data: Any, active: frozenset[int]) -> None:
        """One pass over ``table_data`` (the status table's store), yielding every
        ``REBUILD_CHUNK`` rows; rows folded meanwhile win over what the pass read."""
        self._changes = {}
        entries: dict[str, tuple[float, int]] = {}
        try:
            rows = list(table_data.items()) if isinstance(table_data, dict) else table_data.items()
            for i, (nid, doc) in enumerate(rows):
                if doc and doc.get("p") in active:
                    due = pending_due(doc)
                    if due is not None:
                        entries[nid] = (due, int(doc["p"]))
                if i % REBUILD_CHUNK == REBUILD_CHUNK - 1:
                    await asyncio.sleep(0)
            for nid, entry in self._changes.items():
                if entry is None:
                    entries.pop(nid, None)
                else:
                    entries[nid] = entry
        finally:
            self._changes = None
        self.entries = entries
        self.active = active
        self.source = id(table_data)

    def overdue(self, active: frozenset[int], before: float) -> list[str]:
        """Notifications of ``active`` partitions with a channel due before ``before``."""
        return [nid for nid, (due, p) in self.entries.items() if due <= before and p in active]


#: This worker's index (the status fold notes rows; the reconciler reads it).
pending = PendingIndex()
