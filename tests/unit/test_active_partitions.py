"""``active_partitions`` reads Faust's client assignment directly (the scheduler asks
twice a second; ``assigned_actives()`` builds a set of every assigned partition)."""

from __future__ import annotations

from faust.assignor.client_assignment import ClientAssignment

from notifyd.stream.runtime import Runtime
from notifyd.stream.topics import active_partitions


def test_same_answer_as_faust_and_empty_before_an_assignment(runtime: Runtime) -> None:
    names = runtime.topics.names
    assignor = runtime.app.assignor
    assert active_partitions() == frozenset()  # no assignment yet
    assignor._assignment = ClientAssignment(  # type: ignore[attr-defined]
        actives={names.events: [0, 3, 5], names.status: [1], "other": [2]},
        standbys={names.events: [7]},
    )
    faust = assignor.assigned_actives()
    assert active_partitions() == frozenset({0, 3, 5}) == frozenset(
        tp.partition for tp in faust if tp.topic == names.events)
    assert active_partitions(names.status) == frozenset({1})
    assert active_partitions("nowhere") == frozenset()
