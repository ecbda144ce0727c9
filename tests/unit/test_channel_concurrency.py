"""Channel agents keep several deliveries in flight, in order per user."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from notifyd.model.records import Delivery
from notifyd.providers.base import SendReceipt
from notifyd.stream.tables import ledger
from tests.support.app import app_agent, build_app, provider
from tests.support.memory_provider import MemoryProvider
from tests.support.statuses import capture_statuses
from tests.support.waiting import until


class SlowProvider(MemoryProvider):
    """Sends take ``delay[user]`` seconds; records overlap and order."""

    def __init__(self, delay: dict[str, float]) -> None:
        super().__init__("webhook")
        self.delay = delay
        self.active: dict[str, int] = {}
        self.max_active = 0
        self.max_active_per_user: dict[str, int] = {}
        self.done: list[str] = []

    async def send(self, delivery: Delivery) -> SendReceipt:
        u = delivery.user_id
        self.active[u] = self.active.get(u, 0) + 1
        self.max_active = max(self.max_active, sum(self.active.values()))
        self.max_active_per_user[u] = max(self.max_active_per_user.get(u, 0), self.active[u])
        try:
            await asyncio.sleep(self.delay.get(u, 0.0))
            if delivery.title == "boom":
                raise RuntimeError("provider bug")
            return await super().send(delivery)
        finally:
            self.active[u] -= 1
            self.done.append(delivery.notification_id)


def delivery(user: str, nid: str, title: str = "t") -> Delivery:
    return Delivery(
        notification_id=nid,
        event_id=f"ev-{nid}",
        user_id=user,
        channel="webhook",
        title=title,
        body="b",
        address="https://example.com/hook",
    )


@pytest.mark.parametrize("limit", [1, 8])
async def test_deliveries_in_flight_in_order_per_user(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    tag = uuid.uuid4().hex[:6]
    slow, fast = f"slow-{tag}", f"fast-{tag}"
    slow_provider = SlowProvider({slow: 0.05})
    rt = build_app(build_provider=provider(slow_provider), delivery_concurrency=limit)
    published = capture_statuses(monkeypatch)
    plan = [
        delivery(slow, f"{tag}-s1"),
        delivery(slow, f"{tag}-s2"),
        delivery(fast, f"{tag}-f1"),
        delivery(slow, f"{tag}-s3", title="boom"),  # a provider crash: retried, not fatal
        delivery(fast, f"{tag}-f2"),
    ]
    async with app_agent("agent.webhook", rt).test_context() as webhook:
        for d in plan:
            await webhook.put(d.dumps(), key=d.user_id.encode(), partition=1)
        await until(lambda: len(published) == len(plan))
    assert slow_provider.max_active_per_user[slow] == 1  # one user's sends never overlap
    slow_order = [n for n in slow_provider.done if n.startswith(f"{tag}-s")]
    assert slow_order == [f"{tag}-s1", f"{tag}-s2", f"{tag}-s3"]
    for d in plan[:3] + plan[4:]:
        entry = ledger.get(d.idempotency_key)
        assert entry is not None and entry["s"] == "sent" and entry["p"] == 1
    statuses = {nid: u[0]["status"] for nid, u in published}
    assert statuses[f"{tag}-s3"] == "retrying"
    if limit == 1:
        assert slow_provider.max_active == 1
        assert slow_provider.done.index(f"{tag}-f1") > slow_provider.done.index(f"{tag}-s2")
    else:
        # The fast user's deliveries do not wait behind the slow user's.
        assert slow_provider.max_active >= 2
        assert slow_provider.done.index(f"{tag}-f2") < slow_provider.done.index(f"{tag}-s2")
