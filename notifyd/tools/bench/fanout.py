"""Bench phase: one topic-addressed event fanned out to N subscribers (issue #17).

For one worker and then two (each run a fresh app id and topic prefix on the bench's
broker), N users are subscribed to one topic with bulk commands on
``notifyd.subscriptions`` (5,000 users each, as an operator's tool would), then one
event with ``"topic"`` and ``"channels": ["inapp"]`` is produced keyed by the topic.
Reported per run:

* ``fanout_s``: produce → the last per-recipient event is on ``notifyd.events`` (the
  fan-out agent's own work), and ``fanout_per_s`` (recipients produced per second);
* ``delivered_s``: produce → every recipient's in-app ``sent`` is in the status changelog
  (each recipient processed on their own partition: dedupe, preferences, rules,
  inbox write), and ``recipients_per_s`` = N / ``delivered_s``.

Counts are exact (distinct recipients seen on the topics); the run fails loudly if
not every subscriber got exactly one notification within the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from notifyd.stream.audience import MAX_BULK, command
from notifyd.tools.bench.load import TopicTap, status_changelog, status_row, wait_group_drained

RUN_TIMEOUT_S = 1800.0


class _FanoutCounter:
    """Distinct recipients of one event on ``notifyd.events`` and their in-app ``sent`` in the
    status changelog."""

    def __init__(self, event_id: str, nids: dict[str, str]) -> None:
        self.event_id = event_id.encode()
        self.nids = nids  # notification id -> user
        self.produced: set[str] = set()
        self.copies = 0
        self.delivered: set[str] = set()
        self.last_produced_at = 0.0
        self.last_delivered_at = 0.0
        self.all_delivered = asyncio.Event()

    def on_event(self, value: bytes | None, now: float) -> None:
        if value is None or self.event_id not in value or b'"user_id"' not in value:
            return
        user = orjson.loads(value).get("user_id")
        if isinstance(user, str):
            self.copies += 1
            self.produced.add(user)
            self.last_produced_at = now

    def on_status(self, value: bytes | None, now: float) -> None:
        doc = status_row(value)
        user = self.nids.get(doc["notification_id"]) if doc is not None else None
        if doc is None or user is None or user in self.delivered:
            return
        inapp = (doc.get("channels") or {}).get("inapp") or {}
        if inapp.get("status") == "sent":
            self.delivered.add(user)
            self.last_delivered_at = now
            if len(self.delivered) == len(self.nids):
                self.all_delivered.set()


async def _subscribe_all(bench: Any, topic_name: str, names: Any, users: list[str]) -> float:
    """Bulk subscription commands; seconds until the worker group applied them all."""

    t0 = time.monotonic()
    futs = []
    for i in range(0, len(users), MAX_BULK):
        cmd = command("subscribe", topic_name, users[i : i + MAX_BULK])
        futs.append(
            await bench.producer.send(names.subscriptions, orjson.dumps(cmd),
                                      key=topic_name.encode())
        )
    await asyncio.gather(*futs)
    # Phase one's offsets are committed only after its phase-two records were produced,
    # so "drained" means both phases were applied.
    ok = await wait_group_drained(
        bench.bootstrap, bench._fanout_group, [names.subscriptions], RUN_TIMEOUT_S
    )
    if not ok:
        raise TimeoutError("subscriptions were not applied in time")
    return time.monotonic() - t0


async def _wait_balanced(workers: list[Any], partitions: int, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned: list[list[int]] = []
        for w in workers:
            try:
                with await asyncio.to_thread(
                    urllib.request.urlopen, f"{w.url}/readyz", timeout=2
                ) as resp:
                    owned.append(orjson.loads(resp.read())["partitions"])
            except OSError:
                break
        else:
            every = sorted(p for parts in owned for p in parts)
            if every == list(range(partitions)) and all(owned):  # each worker owns some
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("workers did not settle on an assignment")


async def run_fanout(bench: Any, subscribers: int, workers: int) -> dict[str, Any]:
    """One measured fan-out with ``workers`` workers (see the module doc)."""
    from notifyd.config import Settings
    from notifyd.model.records import notification_id_for
    from notifyd.stream.topology import TopicNames, ensure_topics

    o = bench.opts
    app_id = f"notifyd-bench-fanout{workers}-{bench.tag}"
    prefix = f"bench-fanout{workers}-{bench.tag}"
    names = TopicNames(prefix)
    bench._fanout_group = app_id
    await ensure_topics(Settings(broker_url=f"kafka://{bench.bootstrap}", app_id=app_id,
                                 topic_prefix=prefix, topic_partitions=o.partitions))
    procs = [
        bench.new_worker(f"worker-fanout{workers}-{i}", app_id, prefix, "memory://")
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    out: dict[str, Any] = {"workers": workers, "subscribers": subscribers}
    try:
        for p in procs:
            await p.wait_ready_async()
        if workers > 1:
            await _wait_balanced(procs, o.partitions)
        topic_name = "release-notes"
        users = [f"fan-{i}" for i in range(subscribers)]
        bench.progress.note(f"fan-out ({workers} worker(s)): subscribing {subscribers} users ...")
        out["subscribe_s"] = round(await _subscribe_all(bench, topic_name, names, users), 2)
        event_id = f"fanout-{bench.tag}-{workers}"
        counter = _FanoutCounter(
            event_id, {notification_id_for(u, event_id): u for u in users}
        )
        taps = [
            await TopicTap(bench.bootstrap, names.events, counter.on_event).start(),
            await TopicTap(bench.bootstrap, status_changelog(app_id), counter.on_status).start(),
        ]
        try:
            event = {"event_id": event_id, "topic": topic_name, "title": "Release notes",
                     "body": "What's new", "channels": ["inapp"], "category": "releases"}
            bench.progress.note(f"fan-out ({workers} worker(s)): one event → {subscribers} ...")
            t0 = time.time()
            await (await bench.producer.send(names.events, orjson.dumps(event),
                                             key=topic_name.encode()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(counter.all_delivered.wait(), RUN_TIMEOUT_S)
        finally:
            for tap in taps:
                await tap.stop()
        if len(counter.delivered) < subscribers:
            raise TimeoutError(
                f"fan-out: {len(counter.delivered)} of {subscribers} delivered in time"
            )
        fan_s = counter.last_produced_at - t0
        deliv_s = counter.last_delivered_at - t0
        out.update(
            fanout_s=round(fan_s, 3),
            fanout_per_s=round(subscribers / fan_s, 1) if fan_s > 0 else None,
            delivered_s=round(deliv_s, 3),
            recipients_per_s=round(subscribers / deliv_s, 1) if deliv_s > 0 else None,
            copies_produced=counter.copies,
            distinct_recipients=len(counter.produced),
            delivered=len(counter.delivered),
        )
        return out
    finally:
        for p in procs:
            await asyncio.to_thread(p.stop)


async def fanout_phase(bench: Any, subscribers: int) -> dict[str, Any]:
    """The 1-worker and 2-worker fan-out runs."""
    runs = [await run_fanout(bench, subscribers, w) for w in (1, 2)]
    return {"subscribers": subscribers, "runs": runs}


def format_fanout(result: dict[str, Any]) -> str:
    if not result or result.get("skipped"):
        return ""
    lines = [f"\nfan-out of one topic event to {result['subscribers']:,} subscribers (in-app):",
             f"  {'workers':>7}  {'fan-out s':>9}  {'produced/s':>10}  {'delivered s':>11}"
             f"  {'recipients/s':>12}"]
    for r in result["runs"]:
        lines.append(
            f"  {r['workers']:>7}  {r['fanout_s']:>9.2f}  {r['fanout_per_s'] or 0:>10,.0f}"
            f"  {r['delivered_s']:>11.2f}  {r['recipients_per_s'] or 0:>12,.0f}"
        )
    return "\n".join(lines)
