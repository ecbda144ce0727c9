"""The worker's collector policy (``notifyd.stream.heap``): a larger young generation,
and the heap frozen once the tables are recovered."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from notifyd.config import Settings
from notifyd.stream import heap
from tests.support.app import build_app


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the test process's collector as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_young_threshold_is_applied_and_zero_keeps_pythons(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    heap.configure(Settings(gc_young_threshold=0))
    assert gc.get_threshold() == (700, 10, 10)
    heap.configure(Settings(gc_young_threshold=12_345))
    assert gc.get_threshold() == (12_345, 10, 10)
    assert Settings().gc_young_threshold == 50_000


async def test_recovery_freezes_the_heap(collector: None) -> None:
    rt = build_app(gc_freeze_after_recovery=True)
    heap.install(rt.app, rt.settings)
    assert gc.get_freeze_count() == 0
    await rt.app.on_rebalance_complete.send()
    assert gc.get_freeze_count() > 1000  # the modules, the app: everything alive


async def test_no_freeze_when_turned_off(collector: None) -> None:
    rt = build_app(gc_freeze_after_recovery=False)
    heap.install(rt.app, rt.settings)
    await rt.app.on_rebalance_complete.send()
    assert gc.get_freeze_count() == 0


class Row(dict[str, object]):
    """A table row (a JSON object) that can be watched with a weak reference."""


def test_a_frozen_row_is_still_freed_when_replaced(collector: None) -> None:
    table: dict[str, Row] = {"u1": Row(channels=["email"])}
    watch = weakref.ref(table["u1"])
    heap.freeze()
    table["u1"] = Row(channels=["sms"])  # the row is replaced, as a table write does
    assert watch() is None  # freed by reference counting: freezing keeps nothing alive


def test_freeze_collects_garbage_first(collector: None) -> None:
    a, b = Row(), Row()
    a["peer"], b["peer"] = b, a  # a cycle: only the collector can free it
    watch = weakref.ref(a)
    del a, b
    heap.freeze()
    assert watch() is None  # collected, not frozen
