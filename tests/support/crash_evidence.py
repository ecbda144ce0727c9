"""What became of notifications the crash test is missing: a trail through every topic.

For each missing ``<notification_id>:<channel>`` the report says where its event record
is on the events topic, whether the worker logs mention it, whether ``seen`` recorded
it, which status records / status rows / delivery records / ledger rows exist, and the
consumer group's committed offsets for the partitions involved at each SIGKILL and now.
Built for the failure message of ``test_crash_sigkill_loses_nothing_and_sends_nothing_twice``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from notifyd.model.records import idempotency_scope


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def where(self) -> str:
        return f"{self.partition}/{self.offset}"


@dataclass
class Snapshot:
    """Committed offsets (group) and end offsets of some topics at one moment."""

    label: str
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    end: dict[tuple[str, int], int] = field(default_factory=dict)

    def at(self, topic: str, partition: int) -> str:
        c = self.committed.get((topic, partition))
        e = self.end.get((topic, partition))
        return f"{self.label}: committed {c}, end {e}"


async def snapshot(bootstrap: str, group: str, topics: Iterable[str], label: str) -> Snapshot:
    snap = Snapshot(label)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        wanted = set(topics)
        for tp, om in offsets.items():
            if tp.topic in wanted:
                snap.committed[(tp.topic, tp.partition)] = om.offset
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(cluster.partitions_for_topic(t) or ())]
        if tps:
            consumer.assign(tps)  # closing an unassigned consumer raises CancelledError
            for tp, end in (await consumer.end_offsets(tps)).items():
                snap.end[(tp.topic, tp.partition)] = end
    finally:
        await consumer.stop()
    return snap


async def read_all(bootstrap: str, topic: str) -> list[Rec]:
    """Every record of ``topic`` up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Rec] = []
    try:
        cluster = await consumer._client.fetch_all_metadata()
        parts = sorted(cluster.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in tps:
            if (await consumer.position(tp)) >= ends[tp]:
                pending.discard(tp)
        idle = 0
        while pending and idle < 20:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            idle = 0 if batch else idle + 1
            for tp, recs in batch.items():
                out.extend(Rec(topic, r.partition, r.offset, r.key, r.value) for r in recs)
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def _short(value: bytes | None, limit: int = 300) -> str:
    text = (value or b"").decode(errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _log_lines(paths: Iterable[Path], needles: list[str], limit: int = 12) -> list[str]:
    hits: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if any(n in line for n in needles):
                hits.append(f"{path.parent.name}: {line[:400]}")
                if len(hits) >= limit:
                    return hits
    return hits


def consumer_warnings(paths: Iterable[Path], limit: int = 40) -> list[str]:
    """Offset-bookkeeping warnings (notifyd.stream.faust_fixes) and Faust's commit/seek lines."""
    return _log_lines(paths, ['"consumer.', "Discarded commit", "Seek stream partitions"],
                      limit)


async def explain_missing(
    bootstrap: str,
    app_id: str,
    prefix: str,
    missing: list[str],
    events: dict[str, dict[str, Any]],
    snapshots: list[Snapshot],
    logs: list[Path],
    limit: int = 5,
) -> str:
    """A multi-line report on the first ``limit`` missing keys (``nid:channel``)."""
    keys = missing[:limit]
    if not keys:
        return ""
    names = await list_topics(bootstrap)
    changelog = {t: next((n for n in names if n.startswith(app_id) and
                          n.endswith(f"-{t}-changelog")), None)
                 for t in ("seen", "status", "ledger")}
    topics = {
        "events": f"{prefix}.events",
        "rekeyed": f"{prefix}.events.rekeyed",
        "events_dlq": f"{prefix}.events.dlq",
        "deliveries_dlq": f"{prefix}.deliveries.dlq",
        "status": f"{prefix}.status",
        **{f"deliver.{k.rsplit(':', 1)[1]}": f"{prefix}.deliver.{k.rsplit(':', 1)[1]}"
           for k in keys},
        **{f"{t}_changelog": n for t, n in changelog.items() if n},
    }
    data = {name: await read_all(bootstrap, topic) for name, topic in topics.items()}
    final = await snapshot(bootstrap, app_id, [t for t in topics.values()], "now")
    lines = [f"EVIDENCE for {len(keys)} of {len(missing)} missing "
             f"(topics read: { {n: len(r) for n, r in data.items()} }):"]
    def found(name: str, needle: bytes, by_key: bool = False) -> list[Rec]:
        return [r for r in data.get(name, [])
                if (r.key == needle if by_key else needle in (r.value or b""))]

    for key in keys:
        nid, channel = key.rsplit(":", 1)
        ev = events.get(nid, {})
        eid, uid = ev.get("event_id", "?"), ev.get("user_id", "?")
        scope = idempotency_scope(uid, eid).encode()
        lines.append(f"- {key} (user {uid}, event {eid})")

        def offsets_at(topic: str, part: int) -> str:
            return "; ".join(s.at(topic, part) for s in [*snapshots, final])

        evs = found("events", eid.encode())
        for r in evs:
            lines.append(f"  events record {r.where()}; group offsets: "
                         f"{offsets_at(topics['events'], r.partition)}")
        if not evs:
            lines.append("  events record: NOT FOUND on the events topic")
        for name in ("rekeyed", "events_dlq", "deliveries_dlq"):
            for r in found(name, eid.encode()) + found(name, nid.encode()):
                lines.append(f"  {name} record {r.where()}: {_short(r.value, 150)}")
        seen = found("seen_changelog", scope, by_key=True)
        lines.append("  seen rows: " + (", ".join(f"{r.where()} {_short(r.value, 120)}"
                                                  for r in seen) or "none"))
        st = found("status", nid.encode(), by_key=True)
        lines.append("  status records: " + (", ".join(
            f"{r.where()} {[u.get('status') for u in json.loads(r.value or b'{}').get('updates', [])]}"
            for r in st) or "none"))
        rows = found("status_changelog", nid.encode(), by_key=True)
        if rows:
            last = json.loads(rows[-1].value or b"null") or {}
            ch = (last.get("channels") or {}).get(channel, {})
            lines.append(f"  status row: {len(rows)} changelog records, last {rows[-1].where()}: "
                         f"{channel} {ch.get('status')} (history "
                         f"{[h.get('status') for h in ch.get('history', [])]})")
        else:
            lines.append("  status row: none")
        dl = found(f"deliver.{channel}", nid.encode())
        for r in dl:
            lines.append(f"  deliver.{channel} record {r.where()}; group offsets: "
                         f"{offsets_at(topics[f'deliver.{channel}'], r.partition)}")
        if not dl:
            lines.append(f"  deliver.{channel} record: none")
        led = found("ledger_changelog", key.encode(), by_key=True)
        lines.append("  ledger rows: " + (", ".join(f"{r.where()} {_short(r.value, 80)}"
                                                    for r in led) or "none"))
        mentions = _log_lines(logs, [nid, eid], limit=6)
        lines.append("  worker log lines: " + ("\n    ".join(["", *mentions]) if mentions
                                                else "none"))
    warn = consumer_warnings(logs)
    if warn:
        lines.append("offset bookkeeping lines from the worker logs:\n    "
                     + "\n    ".join(warn))
    return "\n".join(lines)


def requeued_keys(logs: Iterable[Path]) -> dict[str, float]:
    """Keys the reconciler re-queued (``reconcile.requeued*`` lines), with the time
    (epoch seconds) of the first re-queue of each."""
    first: dict[str, float] = {}
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"reconcile.requeued' not in line:
                continue
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            except (ValueError, KeyError):
                continue
            for key in entry.get("keys", []):
                first[key] = min(first.get(key, at.timestamp()), at.timestamp())
    return first


def rescued_by_reconciler(requeued: dict[str, float], receipts: list[dict[str, Any]]) -> list[str]:
    """Re-queued keys whose first accepted provider call came after their first re-queue:
    deliveries nothing would have made without the safety net (a record was lost)."""
    first_sent: dict[str, float] = {}
    for r in receipts:
        if r.get("status") == 201 and not r.get("duplicate"):
            key = r["idempotency_key"]
            first_sent[key] = min(first_sent.get(key, r["received_at"]), r["received_at"])
    return sorted(k for k, at in requeued.items() if first_sent.get(k, float("inf")) > at)
