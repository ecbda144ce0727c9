"""Faust's livelock check, chunked: every partition is still checked, with one event-loop
turn per hundred, and the check stops when the consumer does."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer

from notifyd.config import Settings
from notifyd.stream import livelock
from notifyd.stream.app import faust_app
from notifyd.stream.livelock import verify_all_partitions_active


class FakeConsumer:
    def __init__(self, n: int) -> None:
        self.tps = [SimpleNamespace(topic="t", partition=p) for p in range(n)]
        self.checked: list[int] = []
        self.should_stop = False

    def assignment(self) -> list[Any]:
        return self.tps

    def verify_event_path(self, now: float, tp: Any) -> None:
        self.checked.append(tp.partition)


async def test_every_partition_is_checked_with_a_turn_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    turns = 0
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *a: Any) -> None:
        nonlocal turns
        turns += 1
        await real_sleep(delay, *a)

    monkeypatch.setattr(livelock.asyncio, "sleep", counting_sleep)
    c = FakeConsumer(570)
    await verify_all_partitions_active(c)
    assert c.checked == list(range(570))
    assert turns == 5  # Faust's own: 570


async def test_the_check_stops_with_the_consumer() -> None:
    c = FakeConsumer(10)
    c.should_stop = True
    await verify_all_partitions_active(c)
    assert c.checked == []


def test_installed_for_every_app_and_faust_still_checks_per_partition() -> None:
    faust_app(Settings())
    assert Consumer.verify_all_partitions_active is verify_all_partitions_active
    # What it replaces (faust-streaming is pinned): a yield and a check per partition.
    src = inspect.getsource(livelock.faust_original)
    assert "for tp in self.assignment():" in src
    assert "await self.sleep(0)" in src and "self.verify_event_path(now, tp)" in src
