"""Cold partitions out of busy fetches.

aiokafka's fetcher puts every assigned partition in every fetch request and the broker
answers for each of them: on 2 cores about 7 µs of Python per partition per fetch,
building the request and decoding the response (``Fetcher._get_actions_per_node``,
``FetchRequest``/``FetchResponse``), with no fetch sessions (KIP-227) to send only
what changed.  While busy, notifyd fetches every few milliseconds (``FetchPacer``), and
a worker is assigned ~100 partitions, a third of them of topics that carry a few records
a minute (preferences, control, subscriptions, callbacks).

While the pacer says busy, the partitions of those cold topics go into one fetch every
``NOTIFYD_FETCH_COLD_INTERVAL_MS`` (50 ms; 0: off) instead of every fetch: up to that
much later for a preference write or an API command under load, against a third less
work per fetch.  While quiet, every fetch has them all (a long poll must wake for any
partition).  Changelog topics are never cold: table recovery reads them through these
fetches.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest


class _Without:
    """An aiokafka ``Assignment`` seen through a subset of its partitions: what
    ``Fetcher._get_actions_per_node`` reads (``tps``, ``state_value``) and nothing else
    differs."""

    __slots__ = ("_assignment", "tps")

    def __init__(self, assignment: Any, tps: frozenset[Any]) -> None:
        self._assignment = assignment
        self.tps = tps

    def state_value(self, tp: Any) -> Any:
        return self._assignment.state_value(tp)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._assignment, name)


def set_cold(fetcher: Any, topics: frozenset[str] | None, interval_s: float = 0.05) -> None:
    """Leave ``topics`` out of all but one fetch per ``interval_s`` (None: none); read by
    the fetcher's thread when it builds its next request."""
    fetcher._notifyd_cold_interval_s = interval_s
    fetcher._notifyd_cold_topics = topics


_original: Callable[..., Any] = Fetcher._get_actions_per_node


def _actions(self: Any, assignment: Any) -> Any:
    """``Fetcher._get_actions_per_node`` with the same result, for less: the consumer
    thread plans a fetch over every assigned partition (~200 on a worker) before each
    request, and under load that walk held the GIL ~8 % of a busy worker's time.

    Without KIP-392 (no client rack, so no preferred read replica is ever cached) a
    partition's node is its leader: one look-up instead of ``_select_read_replica``'s
    three, remembered with each partition's state object per assignment and metadata
    (read directly: ``_position``, ``_paused``); the per-partition ``log.debug`` calls
    are gone; and in fetch sessions the partitions are not shuffled here (the request's
    full list only maps the answer: :class:`SessionFetchRequest` shuffles what goes on
    the wire).  Anything else goes to aiokafka's own."""
    if self._client_rack or self._preferred_read_replica:
        return _original(self, assignment)
    fetchable: dict[int, list[Any]] = {}
    awaiting_reset: defaultdict[int, list[Any]] = defaultdict(list)
    backoff_by_nodes: dict[int, list[float]] = {}
    resume_futures: list[Any] = []
    invalid_metadata = False
    records, in_flight = self._records, self._in_flight
    cluster = self._client.cluster
    leader_for = cluster.leader_for_partition
    tps = assignment.tps
    # Per assignment and metadata (aiokafka replaces ``_partitions`` on every metadata
    # update): each partition's state object and leader, and the set of leaders.
    partitions = cluster._partitions
    cached = getattr(self, "_notifyd_plan", None)
    if cached is None or cached[0] is not tps or cached[1] is not partitions:
        entries = tuple((tp, assignment.state_value(tp), leader_for(tp)) for tp in tps)
        cached = (tps, partitions, entries, frozenset(e[2] for e in entries))
        self._notifyd_plan = cached
    entries, leaders = cached[2], cached[3]
    if in_flight and leaders and leaders <= in_flight:
        # Every partition's node has a fetch in flight, so every partition but the
        # buffered ones would be skipped: the wake-ups between a request and its
        # answer (records consumed) no longer walk them all.
        for tp, buffered in records.items():
            if tp in tps and (backoff := buffered.calculate_backoff()):
                backoff_by_nodes.setdefault(leader_for(tp), []).append(backoff)
        backoff = (min(map(max, backoff_by_nodes.values())) if backoff_by_nodes
                   else self._fetcher_timeout)
        return [], awaiting_reset, backoff, False, []
    for tp, tp_state, node_id in entries:
        if tp in records:
            backoff = records[tp].calculate_backoff()
            if backoff:
                backoff_by_nodes.setdefault(node_id, []).append(backoff)
        elif node_id in in_flight:
            continue
        elif node_id is None or node_id == -1:
            invalid_metadata = True
        elif (position := tp_state._position) is None:  # not has_valid_position
            awaiting_reset[node_id].append(tp)
        elif tp_state._paused:
            resume_futures.append(tp_state._resume_fut)
        else:
            fetchable.setdefault(node_id, []).append((tp, position))
    in_sessions = getattr(self, "_notifyd_sessions", None) is not None
    max_bytes = self._max_partition_fetch_bytes
    fetch_requests = []
    for node_id, partition_data in fetchable.items():
        if node_id in backoff_by_nodes or node_id in awaiting_reset:
            continue
        if not in_sessions:
            random.shuffle(partition_data)  # as aiokafka: fairer use of fetch_max_bytes
        by_topics: dict[str, list[tuple[int, int, int]]] = {}
        for tp, position in partition_data:
            by_topics.setdefault(tp.topic, []).append((tp.partition, position, max_bytes))
        fetch_requests.append((node_id, FetchRequest(
            self._fetch_max_wait_ms, self._fetch_min_bytes, self._fetch_max_bytes,
            self._isolation_level, list(by_topics.items()), rack_id=self._client_rack or "",
        )))
    if backoff_by_nodes:
        backoff = min(map(max, backoff_by_nodes.values()))
    else:
        backoff = self._fetcher_timeout
    return fetch_requests, awaiting_reset, backoff, invalid_metadata, resume_futures


def _get_actions_per_node_notifyd(self: Any, assignment: Any) -> Any:
    """aiokafka's request builder (:func:`_actions`), without cold partitions when not
    due and with its requests in fetch sessions when the fetcher uses them."""
    cold: frozenset[str] | None = getattr(self, "_notifyd_cold_topics", None)
    if cold:
        now = time.monotonic()
        if now - getattr(self, "_notifyd_cold_at", 0.0) < self._notifyd_cold_interval_s:
            cache = getattr(self, "_notifyd_hot", None)
            if cache is None or cache[0] is not assignment or cache[1] is not cold:
                hot = frozenset(tp for tp in assignment.tps if tp.topic not in cold)
                cache = (assignment, cold, hot)
                self._notifyd_hot = cache
            return _in_sessions(self, _actions(self, _Without(assignment, cache[2])))
        self._notifyd_cold_at = now
    return _in_sessions(self, _actions(self, assignment))


def install() -> None:
    """Patch aiokafka's fetcher and client (once per process; a fetcher behaves as
    before unless given ``set_cold`` or ``use_sessions``)."""
    if Fetcher._get_actions_per_node is not _get_actions_per_node_notifyd:
        Fetcher._get_actions_per_node = _get_actions_per_node_notifyd  # type: ignore[method-assign]
    if AIOKafkaClient.send is not _send_minding_sessions:
        AIOKafkaClient.send = _send_minding_sessions  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------
# Incremental fetch sessions (KIP-227)
# --------------------------------------------------------------------------------------

#: A key in a fetch session: (topic, partition) -> (fetch offset, max bytes).
_Key = tuple[str, int]
_MAX_EPOCH = 2**31 - 1


@dataclass
class FetchSession:
    """One broker's incremental fetch session (KIP-227), as one fetcher holds it.

    aiokafka sends every fetchable partition in every fetch (no session) and the broker
    answers for each; in a session a request lists only the partitions whose fetch
    offset changed since the last one (added) and the ones left out now (forgotten),
    and the response only the partitions with records or news.  So a fetch costs what
    moved, not what is assigned: on a worker ~100 partitions, of which a handful carry
    records at any moment.  Java's consumer does the same (``FetchSessionHandler``):
    a partition not fetchable this time (records still buffered, paused) is forgotten
    and added again with its new position.

    ``id`` 0 is no session: the next request is a full one that asks the broker for a
    session (epoch 0); a broker that answers with session 0 keeps none (full fetches,
    as without this).  Any error or lost response ends the session: the next request
    is full again (the broker drops the orphan after its idle timeout)."""

    id: int = 0
    epoch: int = 0
    #: What the broker holds for this session: the last successful request's partitions.
    sent: dict[_Key, tuple[int, int]] = field(default_factory=dict)
    #: Requests and the sessions they opened (for /metrics and tests).
    fetches: int = 0
    full_fetches: int = 0
    resets: int = 0

    def plan(
        self, full: dict[_Key, tuple[int, int]]
    ) -> tuple[int, int, list[_Key], list[_Key]]:
        """(session id, epoch, partitions to send, partitions to forget) for ``full``."""
        self.fetches += 1
        if self.id == 0:
            self.full_fetches += 1
            return 0, 0, list(full), []
        sent = self.sent
        changed = [k for k, v in full.items() if sent.get(k) != v]
        forgotten = [k for k in sent if k not in full]
        return self.id, self.epoch, changed, forgotten

    def on_response(self, sent_as: tuple[int, int], full: dict[_Key, tuple[int, int]],
                    error_code: int, session_id: int) -> None:
        if error_code != 0 or session_id == 0:
            self.reset()
            return
        if sent_as[0] == 0:
            self.id, self.epoch = session_id, 1
        elif session_id == self.id:
            self.epoch = self.epoch + 1 if self.epoch < _MAX_EPOCH else 1
        else:
            self.reset()
            return
        self.sent = full

    def reset(self) -> None:
        if self.id != 0:
            self.resets += 1
        self.id, self.epoch, self.sent = 0, 0, {}


class SessionFetchRequest(FetchRequest):
    """aiokafka's ``FetchRequest`` sent in a :class:`FetchSession`.

    ``topics`` stays the full list (aiokafka's fetcher maps the response's partitions
    to their fetch offsets through it); only what goes on the wire (``build``) is the
    session's increment."""

    def __init__(self, request: FetchRequest, session: FetchSession) -> None:
        super().__init__(request._max_wait_ms, request._min_bytes, request._max_bytes,
                         request._isolation_level, request._topics, request._rack_id)
        self.session = session
        self.full = {(t, p): (off, mb) for t, parts in request._topics for p, off, mb in parts}
        self.sent_as: tuple[int, int] | None = None

    def build(self, request_struct_class: Any) -> Any:
        version = request_struct_class.API_VERSION
        if version < 7:  # no sessions before v7: as aiokafka
            return super().build(request_struct_class)
        sid, epoch, send, forget = self.session.plan(self.full)
        random.shuffle(send)  # as aiokafka does with every request's partitions
        self.sent_as = (sid, epoch)
        leader_epoch = version >= 9
        by_topic: dict[str, list[tuple[int, ...]]] = {}
        for t, p in send:
            off, mb = self.full[(t, p)]
            by_topic.setdefault(t, []).append(
                (p, -1, off, -1, mb) if leader_epoch else (p, off, -1, mb)
            )
        forgotten: dict[str, list[int]] = {}
        for t, p in forget:
            forgotten.setdefault(t, []).append(p)
        args: list[object] = [-1, self._max_wait_ms, self._min_bytes, self._max_bytes,
                              self._isolation_level, sid, epoch, list(by_topic.items()),
                              list(forgotten.items())]
        if version >= 11:
            args.append(self._rack_id)
        return request_struct_class(*args)


def use_sessions(fetcher: Any, on: bool = True) -> None:
    """Send ``fetcher``'s fetches in sessions (read by its thread at its next fetch)."""
    if on and getattr(fetcher, "_notifyd_sessions", None) is None:
        fetcher._notifyd_sessions = {}
    elif not on:
        fetcher._notifyd_sessions = None


def _in_sessions(fetcher: Any, actions: Any) -> Any:
    sessions: dict[int, FetchSession] | None = getattr(fetcher, "_notifyd_sessions", None)
    if sessions is None or not actions[0]:
        return actions
    requests = [
        (node_id, SessionFetchRequest(req, sessions.setdefault(node_id, FetchSession())))
        for node_id, req in actions[0]
    ]
    return (requests, *actions[1:])


_original_send: Callable[..., Any] = AIOKafkaClient.send


async def _send_minding_sessions(self: Any, node_id: int, request: Any, **kwargs: Any) -> Any:
    """``AIOKafkaClient.send`` that tells a fetch session how its request went."""
    if type(request) is not SessionFetchRequest:
        return await _original_send(self, node_id, request, **kwargs)
    try:
        response = await _original_send(self, node_id, request, **kwargs)
    except BaseException:
        request.session.reset()  # the broker may or may not have applied it
        raise
    if request.sent_as is not None:
        request.session.on_response(
            request.sent_as, request.full,
            getattr(response, "error_code", 0), getattr(response, "session_id", 0),
        )
    return response
