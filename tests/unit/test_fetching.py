"""Cold partitions out of busy fetches (notifyd.stream.fetching), through aiokafka's own
``Fetcher._get_actions_per_node`` (pinned aiokafka: this is what builds the requests)."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import Assignment
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from notifyd.stream import fetching

INTERVAL = 0.05


def _fetcher() -> Any:
    f = object.__new__(Fetcher)
    f._records = {}
    f._in_flight = set()
    f._preferred_read_replica = {}
    f._client = SimpleNamespace(cluster=SimpleNamespace(
        leader_for_partition=lambda tp: 1, broker_metadata=lambda node: object(),
        _partitions={}))
    f._max_partition_fetch_bytes = 1 << 20
    f._fetch_max_wait_ms, f._fetch_min_bytes, f._fetch_max_bytes = 5, 1, 50 << 20
    f._isolation_level = 0
    f._client_rack = None
    f._fetcher_timeout = 0.2
    return f


def _requested(f: Any, assignment: Assignment) -> set[tuple[str, int]]:
    requests = f._get_actions_per_node(assignment)[0]
    return {(topic, p[0]) for _, req in requests for topic, parts in req.topics for p in parts}


def _assignment(tps: list[TopicPartition], at: int) -> Assignment:
    a = Assignment(tps)  # within a running loop (its futures)
    for tp in tps:
        a.state_value(tp).seek(at)
    return a


async def test_cold_topics_join_one_fetch_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    fetching.install()
    assignment = _assignment([TopicPartition(t, p) for t in ("hot", "cold") for p in range(2)], 0)
    f = _fetcher()
    everything = {("hot", 0), ("hot", 1), ("cold", 0), ("cold", 1)}
    assert _requested(f, assignment) == everything  # not set: as aiokafka does
    now = [1000.0]
    monkeypatch.setattr(fetching.time, "monotonic", lambda: now[0])
    fetching.set_cold(f, frozenset({"cold"}), INTERVAL)
    assert _requested(f, assignment) == everything  # the first: cold ones due
    now[0] += INTERVAL / 2
    assert _requested(f, assignment) == {("hot", 0), ("hot", 1)}
    assert _requested(f, assignment) == {("hot", 0), ("hot", 1)}
    now[0] += INTERVAL
    assert _requested(f, assignment) == everything
    fetching.set_cold(f, None)  # quiet: every fetch has every partition
    assert _requested(f, assignment) == everything
    # A new assignment (a rebalance) is not read through the last one's partitions.
    fetching.set_cold(f, frozenset({"cold"}), INTERVAL)
    now[0] += INTERVAL / 2
    other = _assignment([TopicPartition("hot", 5), TopicPartition("cold", 5)], 7)
    assert _requested(f, other) == {("hot", 5)}


def test_the_fetcher_reads_only_what_the_view_keeps() -> None:
    """Guard (aiokafka 0.14): the request builder reads the assignment's ``tps`` and
    ``state_value`` only, which ``_Without`` narrows; re-check on an upgrade."""
    src = inspect.getsource(fetching._original)
    assert "for tp in assignment.tps:" in src
    import re

    assert set(re.findall(r"assignment\.(\w+)", src)) == {"tps", "state_value"}


def test_a_session_sends_what_moved_and_forgets_what_left() -> None:
    """KIP-227 as Java's FetchSessionHandler does it: full request to open (epoch 0),
    then the increments with epochs 1, 2, ...; any error or a broker keeping no session
    (id 0) goes back to a full request."""
    from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11

    s = fetching.FetchSession()
    a = {("t", 0): (5, 100), ("t", 1): (9, 100), ("u", 0): (1, 100)}
    assert s.plan(a) == (0, 0, list(a), [])
    s.on_response((0, 0), a, 0, 77)
    assert (s.id, s.epoch) == (77, 1)
    b = {("t", 0): (8, 100), ("t", 1): (9, 100), ("v", 3): (0, 100)}  # u/0 buffered
    assert s.plan(b) == (77, 1, [("t", 0), ("v", 3)], [("u", 0)])
    s.on_response((77, 1), b, 0, 77)
    assert s.epoch == 2 and s.sent == b
    assert s.plan(b) == (77, 2, [], [])  # nothing moved: an empty increment
    s.on_response((77, 2), b, 71, 0)  # INVALID_FETCH_SESSION_EPOCH
    assert (s.id, s.resets) == (0, 1) and s.plan(b)[:2] == (0, 0)
    s.on_response((0, 0), b, 0, 0)  # the broker keeps none: full fetches go on
    assert s.id == 0 and s.plan(b)[2] == list(b)

    # On the wire: the increment; for aiokafka's response handling: every partition.
    s = fetching.FetchSession(id=77, epoch=3, sent=dict(a))
    req = fetching.SessionFetchRequest(
        FetchRequest(5, 1, 1 << 20, 0, [("t", [(0, 6, 100), (1, 9, 100)])]), s)
    built = req.build(FetchRequest_v11)
    assert (built.session_id, built.session_epoch) == (77, 3)
    assert built.topics == [("t", [(0, -1, 6, -1, 100)])]
    assert built.forgotten_topics_data == [("u", [0])]
    assert req.topics == [("t", [(0, 6, 100), (1, 9, 100)])] and req.sent_as == (77, 3)


# -- the cheaper planner gives aiokafka's answer -------------------------------------------


class _Buffered:
    """A partition's fetched records not consumed yet (``Fetcher._records``)."""

    def __init__(self, backoff: float) -> None:
        self.backoff = backoff

    def calculate_backoff(self) -> float:
        return self.backoff


def _normal(actions: Any) -> Any:
    """A plan with its requests' partition order (shuffled by aiokafka) set aside."""
    requests, awaiting_reset, backoff, invalid, resume = actions
    reqs = sorted(
        (node, sorted((t, p) for t, parts in req.topics for p in parts),
         (req._max_wait_ms, req._min_bytes, req._max_bytes, req._isolation_level))
        for node, req in requests
    )
    return (reqs, {n: sorted(tps) for n, tps in awaiting_reset.items()}, backoff, invalid,
            sorted(map(id, resume)))


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_the_planner_gives_aiokafkas_plan(data: st.DataObject) -> None:
    async def check() -> None:
        tps = [TopicPartition(t, p) for t in ("a", "b", "c") for p in range(4)]
        assignment = Assignment(tps)
        leaders: dict[TopicPartition, int | None] = {}
        f = _fetcher()
        nodes = sorted(data.draw(st.sets(st.sampled_from([1, 2, None, -1]), min_size=1)),
                       key=str)
        for tp in tps:
            leaders[tp] = data.draw(st.sampled_from(nodes))
            state = data.draw(st.sampled_from(["position", "reset", "paused", "buffered"]))
            if state != "reset":
                assignment.state_value(tp).seek(data.draw(st.integers(0, 50)))
            if state == "paused":
                assignment.state_value(tp).pause()
            if state == "buffered":
                f._records[tp] = _Buffered(data.draw(st.sampled_from([0, 0.05, 0.2])))
        f._in_flight = set(data.draw(st.sets(st.sampled_from([1, 2]))))
        f._client = SimpleNamespace(cluster=SimpleNamespace(
            leader_for_partition=leaders.get, broker_metadata=lambda node: object(),
            _partitions={}))
        assert _normal(fetching._actions(f, assignment)) == _normal(
            fetching._original(f, assignment))
        fetching.use_sessions(f)  # not shuffled there: the same partitions all the same
        assert _normal(fetching._actions(f, assignment)) == _normal(
            fetching._original(f, assignment))

    asyncio.run(check())


def test_the_planner_leaves_kip_392_to_aiokafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a client rack (preferred read replicas) aiokafka's own planner runs."""
    calls: list[Any] = []
    monkeypatch.setattr(fetching, "_original", lambda f, a: calls.append(a) or "aiokafka")
    f = _fetcher()
    f._client_rack = "rack-1"
    assert fetching._actions(f, "assignment") == "aiokafka"
    f._client_rack, f._preferred_read_replica = None, {TopicPartition("a", 0): (2, 0.0)}
    assert fetching._actions(f, "assignment") == "aiokafka" and len(calls) == 2


def test_the_planner_reads_what_aiokafkas_reads() -> None:
    """Guard (aiokafka 0.14): the planner re-states ``_get_actions_per_node``; the
    fetcher attributes it reads are the same, re-check on an upgrade."""
    import re

    src = inspect.getsource(fetching._original)
    read = set(re.findall(r"self\.(_\w+)", src))
    assert read == {"_select_read_replica", "_records", "_in_flight", "_client",
                    "_max_partition_fetch_bytes", "_fetch_max_wait_ms", "_fetch_min_bytes",
                    "_fetch_max_bytes", "_isolation_level", "_client_rack",
                    "_fetcher_timeout"}
    # Its leaders are remembered per metadata: aiokafka replaces the partitions' map on
    # every update, never changes it in place.
    from aiokafka.cluster import ClusterMetadata

    update = inspect.getsource(ClusterMetadata.update_metadata)
    assert "self._partitions = _new_partitions" in update
    assert "self._partitions[" not in inspect.getsource(ClusterMetadata).replace(
        "self._partitions[partition.topic]", "").replace("self._partitions[topic]", "")
    # Partition states are read directly, and kept per assignment.
    from aiokafka.consumer.subscription_state import TopicPartitionState

    assert "return self._position is not None" in inspect.getsource(
        TopicPartitionState.has_valid_position.fget)  # type: ignore[attr-defined]
    assert "return self._paused" in inspect.getsource(
        TopicPartitionState.paused.fget)  # type: ignore[attr-defined]
    assert "return self._resume_fut" in inspect.getsource(
        TopicPartitionState.resume_fut.fget)  # type: ignore[attr-defined]
    assert "return self._tp_state.get(tp)" in inspect.getsource(Assignment.state_value)
    assert inspect.getsource(Assignment).count("self._tp_state[tp] =") == 1  # __init__
    replica = inspect.getsource(Fetcher._select_read_replica)
    assert "self._preferred_read_replica.get(tp)" in replica
    assert "return self._client.cluster.leader_for_partition(tp)" in replica
